"""The built-in compute provisioning plugin: the install guide's compute node steps."""

from __future__ import annotations
