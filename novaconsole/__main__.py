"""Allow ``python -m novaconsole``."""

from __future__ import annotations

from novaconsole.cli import run

raise SystemExit(run())
