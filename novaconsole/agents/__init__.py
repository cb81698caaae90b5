"""The console's view of the compute agents: a directory of their state and Nova-vs-libvirt drift.

Core code (no Textual): the bus thread folds verified messages into :class:`AgentDirectory`,
the UI and the headless commands read snapshots of it.
"""

from __future__ import annotations

from novaconsole.agents.model import AgentDirectory, AgentState, DomainView

__all__ = ["AgentDirectory", "AgentState", "DomainView"]
