"""Plain-text tables and JSON for headless commands."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO


def render_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A fixed-width table like the ``openstack`` CLI's, without the box drawing."""
    cells = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def emit_json(data: Any, stream: TextIO | None = None) -> None:
    """Write ``data`` as indented JSON and a newline."""
    stream = stream or sys.stdout
    json.dump(data, stream, indent=2, sort_keys=False, default=str)
    stream.write("\n")
