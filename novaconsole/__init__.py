"""novaconsole: the ops console for OpenStack Nova operators."""

from __future__ import annotations

__version__ = "0.1.0"
