"""Shared by the benchmarks: the peer commands, machine facts, and section-wise updates of
bench/RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
#: The lab venv's ``openstack`` client: the peer the benchmarks compare with.
LAB_OPENSTACK = Path.home() / ".local/share/novaconsole/lab/venvs/openstack/bin/openstack"
#: The guide's "Verify operation" commands (what verify and the console replace).
CLI_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("compute", "service", "list"),
    ("catalog", "list"),
    ("image", "list"),
    ("hypervisor", "list"),
)
HEADER = (
    "# Benchmark results\n\n"
    "Speed goals are measured by `python -m bench ...` on the lab, never asserted in tests.\n"
    "Each section gives its exact command, date and machine.\n"
)


def machine_facts() -> str:
    """Date, CPUs, architecture, Python and the current load average, on one line."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Date: {now}; machine: {os.cpu_count()} CPUs, {platform.machine()}, "
        f"Python {platform.python_version()}; load average {os.getloadavg()[0]:.1f}."
    )


def write_section(heading: str, text: str, path: Path = RESULTS) -> None:
    """Replace (or append) the ``## heading`` section; every other section stays as it is.

    ``text`` is the section's whole body including its ``## heading`` line.
    """
    marker = f"## {heading}"
    current = path.read_text() if path.exists() else HEADER
    lines = current.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == marker), None)
    text = text.rstrip() + "\n"
    if start is None:
        body = current if current.endswith("\n") else current + "\n"
        path.write_text(body + "\n" + text)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    path.write_text("".join(lines[:start]) + text + ("\n" + tail if tail else ""))
