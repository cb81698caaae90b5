"""Fixtures for the console's tests: isolated config, a frozen clock, apps over the fake."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from console_helpers import AppFactory, frozen_clock
from fake_source import FakeCloudSource

from novaconsole.plugins import PluginManager
from novaconsole.ui.app import NovaConsoleApp, make_app
from novaconsole.ui.settings import ConsoleSettings


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never read or write the developer's ~/.config, ~/.local/state or lab."""
    config_home = tmp_path / "config"
    # A lab on this machine would otherwise lend the console its agents.toml.
    monkeypatch.setenv("NOVACONSOLE_LAB_DIR", str(tmp_path / "no-lab"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return config_home / "novaconsole" / "config.toml"


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
