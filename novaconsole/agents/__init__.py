"""The console's view of the compute agents: a directory of their state and Nova-vs-libvirt drift.

Core code (no Textual): the bus thread folds verified messages into
:class:`novaconsole.agents.model.AgentDirectory`, the UI and the headless commands read
snapshots of it. Nothing is imported here, so the CLI's parser stays quick to build.
"""
