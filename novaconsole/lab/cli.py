"""``novaconsole lab up | down | status``."""

from __future__ import annotations

from typing import Any


def add_lab_command(sub: Any) -> None:
    """Register ``lab`` on the top-level sub-parsers."""
    p = sub.add_parser("lab", help="a real all-in-one Nova lab on 127.0.0.1")
    p.add_subparsers(dest="lab_command", metavar="ACTION", required=True)
