"""Shared helpers of the console tests and benchmarks: the frozen clock and ``settle``.

(Not in conftest.py: the module name ``conftest`` is taken by ``tests/conftest.py``.)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from fake_source import load_recording
from textual.pilot import Pilot
from textual.worker import WorkerCancelled

from novaconsole.sources.parse import parse_time
from novaconsole.ui.app import NovaConsoleApp

RECORDING = load_recording()
_recorded_at = parse_time(RECORDING["recorded_at"])
assert _recorded_at is not None
#: The console's clock in tests: 30 s after the recording was made.
FROZEN_NOW: datetime = _recorded_at + timedelta(seconds=30)


#: What the ``fake_app`` fixture returns: builds a console over the recorded fake.
AppFactory = Callable[..., NovaConsoleApp]


def frozen_clock() -> datetime:
    return FROZEN_NOW


async def wait_until(
    pilot: Pilot[Any], ready: Callable[[], object], what: str, seconds: float = 30.0
) -> None:
    """Let the app run until ``ready()`` is true, for at most ``seconds`` of wall time.

    A readiness wait with a deadline, not a timing assertion: the reader threads of the
    console tests run at the machine's pace (a loaded CI box with a lab beside it), so the
    wait counts seconds, not event-loop turns.
    """
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds:g} s: {what}")
        await pilot.pause(0.02)


async def settle(pilot: Pilot[Any]) -> None:
    """Wait until every worker (connect, then each pane's load) has finished."""
    app = pilot.app
    for _ in range(200):
        await pilot.pause()
        # A finished load that an exclusive new one "cancels" is not an error here.
        with contextlib.suppress(WorkerCancelled):
            await app.workers.wait_for_complete()
        await pilot.pause()
        panes = list(getattr(app, "panes", []))
        busy = any(p.is_loading for p in panes) or any(
            not w.is_finished for w in app.workers._workers
        )
        if (not busy and getattr(app, "source", None) is not None) or getattr(
            app, "connect_error", None
        ):
            await pilot.pause()
            return
    raise AssertionError("the console did not settle")
