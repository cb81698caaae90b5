"""Live progress lines: nothing of a running step's name is left behind a log line."""

from __future__ import annotations

import io

from novaconsole.progress import LineReporter
from novaconsole.steps import Step


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Named:
    name = "controller.schema.api_db_sync"


def _screen(raw: str) -> list[str]:
    """What a terminal shows for ``raw``: CR returns to column 0, ESC[K clears to the end."""
    lines: list[str] = []
    line: list[str] = []
    col = 0
    i = 0
    while i < len(raw):
        if raw.startswith("\033[K", i):
            del line[col:]
            i += 3
            continue
        ch = raw[i]
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append("".join(line))
            line, col = [], 0
        else:
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
        i += 1
    if line:
        lines.append("".join(line))
    return lines


def test_log_line_clears_the_running_step_name_on_a_tty() -> None:
    stream = _Tty()
    reporter = LineReporter(stream)
    step: Step[object] = _Named()  # type: ignore[assignment]
    reporter.started(step)
    reporter.log("running nova-manage api_db sync")
    assert _screen(stream.getvalue()) == ["  running nova-manage api_db sync"]


def test_log_line_is_plain_when_not_a_tty() -> None:
    stream = io.StringIO()
    LineReporter(stream).log("running nova-manage db sync")
    assert stream.getvalue() == "  running nova-manage db sync\n"
