"""Helpers for the console benchmarks: the "Console" section of bench/RESULTS.md.

Each console benchmark owns one ``### name`` subsection under ``## Console``; writing one
replaces only that subsection, and other engineers' sections are left as they are.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Console"
HEADER = (
    "# Benchmark results\n\n"
    "Speed goals are measured by `python -m bench ...` on the lab, never asserted in tests.\n"
    "Each section gives its exact command, date and machine.\n"
)
REPO = Path(__file__).resolve().parent.parent


def tests_ui_on_path() -> None:
    """Make ``tests/ui`` importable (the recorded fake lives beside the tests)."""
    path = str(REPO / "tests" / "ui")
    if path not in sys.path:
        sys.path.insert(0, path)


def machine_line(argv: Sequence[str]) -> list[str]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"Command: `{shlex.join(argv)}`  ",
        f"Date: {now}; machine: {os.cpu_count()} CPUs, {platform.machine()}, "
        f"Python {platform.python_version()}.",
    ]


def write_subsection(name: str, text: str, path: Path = RESULTS) -> None:
    """Replace (or add) ``### name`` inside ``## Console``; the rest of the file stays."""
    current = path.read_text() if path.exists() else HEADER
    lines = current.splitlines(keepends=True)
    block = f"### {name}\n\n{text.rstrip()}\n\n"
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SECTION), None)
    if start is None:
        body = current if current.endswith("\n") else current + "\n"
        path.write_text(body + "\n" + SECTION + "\n\n" + block)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    section = lines[start + 1 : end]
    sub = next((i for i, line in enumerate(section) if line.rstrip() == f"### {name}"), None)
    if sub is None:
        while section and not section[-1].strip():
            section.pop()
        section += ["\n", block]
    else:
        sub_end = next(
            (i for i in range(sub + 1, len(section)) if section[i].startswith("### ")),
            len(section),
        )
        section[sub:sub_end] = [block]
    tail = lines[end:]
    joined = "".join(section)
    if tail and not joined.endswith("\n\n"):
        joined += "\n"
    path.write_text("".join(lines[: start + 1]) + joined + "".join(tail))
