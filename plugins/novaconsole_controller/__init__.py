"""The built-in controller provisioning plugin: the install guide's controller steps."""

from __future__ import annotations
