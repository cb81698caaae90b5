"""Allow ``python -m novaconsole``."""

from __future__ import annotations

from novaconsole.cli import main

raise SystemExit(main())
