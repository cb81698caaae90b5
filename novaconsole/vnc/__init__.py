"""VNC console pieces of the core (no Textual): the noVNC console probe and, later, the bridge."""

from __future__ import annotations
