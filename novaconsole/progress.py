"""Live progress of a step run on a terminal (or plain lines when not a TTY)."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from novaconsole.steps import RunReport, Status, Step, StepResult

_MARK = {
    Status.OK: "ok",
    Status.CHANGED: "changed",
    Status.PLANNED: "plan",
    Status.FAILED: "FAILED",
    Status.SKIPPED: "skipped",
}


class LineReporter:
    """One line per finished step; the step name while it runs on a TTY."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self._tty = self.stream.isatty()

    def started(self, step: Step[Any]) -> None:
        if self._tty:
            self.stream.write(f"  ..      {step.name}\r")
            self.stream.flush()

    def finished(self, result: StepResult) -> None:
        mark = _MARK[result.status]
        line = f"  {mark:<8}{result.name}  ({result.seconds:.2f}s)"
        if self._tty:
            line += "\033[K"
        self.stream.write(line + "\n")
        if self.verbose and result.status in (Status.CHANGED, Status.PLANNED):
            for change in result.changes:
                self.stream.write(f"            - {change}\n")
        if result.error:
            self.stream.write(f"            error: {result.error}\n")
        self.stream.flush()

    def log(self, line: str) -> None:
        # On a TTY the running step's name is still on this line (``started`` ends it
        # with a carriage return): clear it, or its tail shows after a shorter line.
        clear = "\033[K" if self._tty else ""
        self.stream.write(f"  {line}{clear}\n")
        self.stream.flush()


def summary(report: RunReport) -> str:
    """``12 steps: 10 ok, 2 changed, 0 failed (3.2s)``."""
    counts = {s: 0 for s in Status}
    for r in report.results:
        counts[r.status] += 1
    total = sum(r.seconds for r in report.results)
    parts = [
        f"{counts[s]} {s.value}"
        for s in Status
        if counts[s] or s in (Status.OK, Status.CHANGED, Status.FAILED)
    ]
    return f"{len(report.results)} steps: {', '.join(parts)} ({total:.1f}s)"
