"""Placeholder (being written)."""

from __future__ import annotations

from typing import Any

from novaconsole.site import Site
from novaconsole.steps import Step


def identity_steps(site: Site) -> list[Step[Any]]:
    return []
