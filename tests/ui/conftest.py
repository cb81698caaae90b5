"""Fixtures for the console's tests: isolated config, a frozen clock, apps over the fake."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fake_source import FakeCloudSource, load_recording
from textual.pilot import Pilot
from textual.worker import WorkerCancelled

from novaconsole.plugins import PluginManager
from novaconsole.sources.parse import parse_time
from novaconsole.ui.app import NovaConsoleApp, make_app
from novaconsole.ui.settings import ConsoleSettings

RECORDING = load_recording()
_recorded_at = parse_time(RECORDING["recorded_at"])
assert _recorded_at is not None
#: The console's clock in tests: 30 s after the recording was made.
FROZEN_NOW: datetime = _recorded_at + timedelta(seconds=30)


def frozen_clock() -> datetime:
    return FROZEN_NOW


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never read or write the developer's ~/.config or ~/.local/state."""
    config_home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return config_home / "novaconsole" / "config.toml"


AppFactory = Callable[..., NovaConsoleApp]


@pytest.fixture
def fake_app() -> AppFactory:
    """Build a console over a :class:`FakeCloudSource` (pass ``source=`` to share one)."""

    def build(
        source: FakeCloudSource | None = None,
        *,
        settings: ConsoleSettings | None = None,
        plugin_manager: PluginManager | None = None,
        connect: Callable[[str | None], Any] | None = None,
        cloud_names: Callable[[], list[str]] = lambda: ["novaconsole-lab", "other-cloud"],
        remember_theme: bool = True,
    ) -> NovaConsoleApp:
        fake = source if source is not None else FakeCloudSource()
        return make_app(
            connect=connect or (lambda name: fake),
            cloud="novaconsole-lab",
            settings=settings or ConsoleSettings(refresh=0),
            plugin_manager=plugin_manager,
            clock=frozen_clock,
            cloud_names=cloud_names,
            remember_theme=remember_theme,
        )

    return build


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
