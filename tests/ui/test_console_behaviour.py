"""Behaviour tests: drive the console with Pilot over the recorded fake source."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from console_helpers import FROZEN_NOW, AppFactory, settle
from fake_rfb import FakeRfbOpener
from fake_source import FakeCloudSource

from novaconsole.errors import ConfigError, ConnectionFailure
from novaconsole.hookspecs import hookimpl
from novaconsole.plugins import PluginManager
from novaconsole.sources.console_api import ConsoleAction, ConsoleColumn, ConsolePane
from novaconsole.ui.app import NovaConsoleApp
from novaconsole.ui.confirm import ConfirmScreen
from novaconsole.ui.console_screen import ConsoleScreen
from novaconsole.ui.help_screen import HelpScreen
from novaconsole.ui.services_pane import ServicesPane
from novaconsole.ui.settings import ConsoleSettings, load_settings
from novaconsole.ui.text_screen import TextScreen

pytestmark = pytest.mark.asyncio
SIZE = (140, 36)


def _notes(app: NovaConsoleApp) -> list[str]:
    return [str(n.message) for n in app._notifications]


def _compute_row_index(app: NovaConsoleApp) -> int:
    rows = app.pane("services").table.shown_rows
    return next(i for i, r in enumerate(rows) if r.binary == "nova-compute")


async def test_all_panes_load_and_header_names_the_cloud(fake_app: AppFactory) -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        for pane in app.panes:
            assert pane.error is None, pane.pane_name
            assert pane.loaded_at == FROZEN_NOW
            assert pane.table.data.rows, pane.pane_name
        header = str(app.query_one("#header").render())
        assert "novaconsole-lab" in header
        assert "RegionOne" in header
        assert "compute 2.1" in header


async def test_command_mode_switches_panes_with_aliases_and_completion(
    fake_app: AppFactory,
) -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("colon", "h", "y", "tab", "enter")
        assert app.active_pane_name == "hypervisors"
        await pilot.press("colon", *"srv", "enter")
        assert app.active_pane_name == "servers"
        await pilot.press("colon", *"cat", "enter")
        assert app.active_pane_name == "catalog"
        await pilot.press("colon", *"nope", "enter")
        await pilot.pause()
        assert any("unknown command ':nope'" in n for n in _notes(app))
        assert app.active_pane_name == "catalog"
        await pilot.press("3")
        assert app.active_pane_name == "images"


async def test_filter_substring_regex_invert_and_it_survives_refresh(
    fake_app: AppFactory,
) -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        table = app.pane("services").table
        total = len(table.data.rows)
        await pilot.press("slash", *"sched")
        assert [r.binary for r in table.shown_rows] == ["nova-scheduler"]
        await pilot.press("enter")
        assert table.has_focus
        await pilot.press("r")
        await settle(pilot)
        assert app.pane("services").refresh_count == 2
        assert [r.binary for r in table.shown_rows] == ["nova-scheduler"]
        await pilot.press("slash", "ctrl+u", *"!sched", "enter")
        assert "nova-scheduler" not in [r.binary for r in table.shown_rows]
        assert len(table.shown_rows) == total - 1
        await pilot.press("slash", "ctrl+u", *"^nova-co(n|m)", "enter")
        assert {r.binary for r in table.shown_rows} <= {"nova-conductor", "nova-compute"}
        await pilot.press("escape")
        assert len(table.shown_rows) == total


async def test_escape_in_filter_prompt_restores_the_previous_filter(
    fake_app: AppFactory,
) -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        pane = app.pane("services")
        await pilot.press("slash", *"cond", "enter")
        await pilot.press("slash", *"xyz")
        assert pane.table.shown_rows == []
        await pilot.press("escape")
        assert pane.filter_text == "cond"
        assert len(pane.table.shown_rows) == 1


async def test_sort_by_column_and_reverse(fake_app: AppFactory) -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        table = app.pane("services").table
        await pilot.press("o")
        binaries = [r.binary for r in table.shown_rows]
        assert binaries == sorted(binaries)
        await pilot.press("O")
        assert [r.binary for r in table.shown_rows] == sorted(binaries, reverse=True)
        await pilot.press("o")
        hosts = [r.host for r in table.shown_rows]
        assert hosts == sorted(hosts)
        assert "sorted by Host" in str(app.query_one("#status-services").render())


async def test_enter_shows_the_raw_resource_as_yaml(fake_app: AppFactory) -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("5", "enter")
        screen = app.screen
        assert isinstance(screen, TextScreen)
        server = app.pane("servers").table.current_row
        assert f"id: {server.id}" in screen.body
        assert "OS-EXT-STS:power_state:" in screen.body
        await pilot.press("escape")
        assert not isinstance(app.screen, TextScreen)


async def test_disable_asks_for_reason_then_acts_logs_and_refreshes(
    fake_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    source = FakeCloudSource()
    app = fake_app(source)
    caplog.set_level(logging.INFO, logger="novaconsole.console")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        pane = app.pane("services")
        pane.table.cursor = _compute_row_index(app)
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press(*"kernel upgrade", "enter")
        await settle(pilot)
        row = pane.table.current_row
        assert ("disable_service", row.id, "kernel upgrade") in source.calls
        assert row.status == "disabled"
        assert row.disabled_reason == "kernel upgrade"
        assert any("done: disable nova-compute" in n for n in _notes(app))
        assert "done: disable nova-compute" in caplog.text
        await pilot.press("e", "y")
        await settle(pilot)
        assert pane.table.current_row.status == "enabled"


async def test_declined_confirmation_changes_nothing(fake_app: AppFactory) -> None:
    source = FakeCloudSource()
    app = fake_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.pane("services").table.cursor = _compute_row_index(app)
        await pilot.press("f")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await settle(pilot)
        assert not [c for c in source.calls if c[0] == "set_forced_down"]
        assert any("cancelled" in n for n in _notes(app))


async def test_force_down_and_unset(fake_app: AppFactory) -> None:
    source = FakeCloudSource()
    app = fake_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        pane = app.pane("services")
        pane.table.cursor = _compute_row_index(app)
        await pilot.press("f", "y")
        await settle(pilot)
        assert pane.table.current_row.forced_down is True
        assert pane.row_style(pane.table.current_row) == "error"
        await pilot.press("u", "y")
        await settle(pilot)
        assert pane.table.current_row.forced_down is False


async def test_readonly_hides_and_refuses_mutations(fake_app: AppFactory) -> None:
    source = FakeCloudSource()
    app = fake_app(source, settings=ConsoleSettings(refresh=0, readonly=True))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        pane = app.pane("services")
        pane.table.cursor = _compute_row_index(app)
        await pilot.press("d", "e", "f", "u")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        shown = {b.binding.description for b in app.active_bindings.values() if b.enabled}
        assert "Disable" not in shown
        assert "Refresh" in shown
        assert isinstance(pane, ServicesPane)
        pane.action_disable()  # e.g. from a plugin or the palette: refused with a message
        await pilot.pause()
        assert any("read-only mode: refused to disable" in n for n in _notes(app))
        await pilot.press("5", "x", "s", "b")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        mutations = {"enable_service", "disable_service", "set_forced_down", "server_action"}
        assert not [c for c in source.calls if c[0] in mutations]
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert all(not a.mutating for a in app.screen.pane_actions)


async def test_a_pane_whose_service_is_down_shows_error_and_others_work(
    fake_app: AppFactory,
) -> None:
    source = FakeCloudSource(
        fail={
            "raw_images": "image list on cloud 'novaconsole-lab': cannot connect to http://127.0.0.1:9292"
        }
    )
    app = fake_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        images = app.pane("images")
        assert images.error is not None
        assert "cannot connect to http://127.0.0.1:9292" in images.error
        assert images.error_at == FROZEN_NOW
        status = str(app.query_one("#status-images").render())
        assert "ERROR (seen " in status
        for name in ("services", "catalog", "hypervisors", "servers"):
            assert app.pane(name).error is None
            assert app.pane(name).table.data.rows
        # Glance comes back: the next refresh clears the error.
        source.fail.clear()
        await pilot.press("3", "r")
        await settle(pilot)
        assert images.error is None
        assert images.table.data.rows


async def test_refreshes_never_overlap(fake_app: AppFactory) -> None:
    # Each call takes 1 s, so every press lands while the first load is still running.
    source = FakeCloudSource(delay=1.0)
    app = fake_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.05)
        for _ in range(4):
            await pilot.press("r")
        await settle(pilot)
        # The first load plus one queued refresh, however many times r was pressed.
        assert source.count("raw_services") == 2
        assert source.max_in_flight("raw_services") == 1


async def test_only_the_visible_pane_polls(fake_app: AppFactory) -> None:
    source = FakeCloudSource()
    app = fake_app(source, settings=ConsoleSettings(refresh=0.1))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        for _ in range(100):  # until the visible pane has polled twice more (slow CI: 10 s)
            if app.pane("services").refresh_count >= 3:
                break
            await asyncio.sleep(0.1)
        await settle(pilot)
        assert app.pane("services").refresh_count >= 3
        for name in ("catalog", "images", "hypervisors", "servers"):
            assert app.pane(name).refresh_count == 1, name


async def test_polling_pauses_while_a_dialog_is_open(fake_app: AppFactory) -> None:
    source = FakeCloudSource()
    app = fake_app(source, settings=ConsoleSettings(refresh=0.1))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        before = source.count("raw_services")
        await asyncio.sleep(0.5)
        await pilot.pause()
        assert source.count("raw_services") == before


async def test_switch_cloud_in_session(fake_app: AppFactory) -> None:
    asked: list[str | None] = []

    def connect(name: str | None) -> FakeCloudSource:
        asked.append(name)
        return FakeCloudSource(name=name or "novaconsole-lab")

    app = fake_app(connect=connect)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("colon", *"cloud ot", "tab", "enter")
        await settle(pilot)
        assert asked == ["novaconsole-lab", "other-cloud"]
        assert app.source is not None
        assert app.source.name == "other-cloud"
        assert app.pane("services").source is app.source
        assert "other-cloud" in str(app.query_one("#header").render())


async def test_failed_cloud_switch_keeps_the_current_cloud(fake_app: AppFactory) -> None:
    def connect(name: str | None) -> FakeCloudSource:
        if name == "broken":
            raise ConnectionFailure("connecting to cloud 'broken': authentication refused")
        return FakeCloudSource()

    app = fake_app(connect=connect)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        first = app.source
        await pilot.press("colon", *"cloud broken", "enter")
        await settle(pilot)
        assert app.source is first
        assert any("authentication refused" in n for n in _notes(app))


async def test_connection_failure_at_start_is_shown_in_the_header(fake_app: AppFactory) -> None:
    def connect(name: str | None) -> FakeCloudSource:
        raise ConfigError("cannot load cloud 'nope' from clouds.yaml/environment: not found")

    app = fake_app(connect=connect)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert "cannot load cloud 'nope'" in str(app.query_one("#header").render())


async def test_theme_switch_is_remembered_in_the_config(
    fake_app: AppFactory, isolated_config: Path
) -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.theme == "novaconsole-dark"
        await pilot.press("colon", *"theme light", "enter")
        await pilot.pause()
        assert app.theme == "novaconsole-light"
    assert load_settings().theme == "novaconsole-light"
    assert isolated_config.exists()


async def test_palette_offers_each_theme(fake_app: AppFactory) -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        commands = {c.title: c for c in app.get_system_commands(app.screen)}
        assert {"Theme: dark", "Theme: light", "Theme: high-contrast"} <= set(commands)
        commands["Theme: high-contrast"].callback()
        await pilot.pause()
        assert app.theme == "novaconsole-high-contrast"
        assert load_settings().theme == "novaconsole-high-contrast"


async def test_unknown_theme_is_one_clear_line(fake_app: AppFactory) -> None:
    with pytest.raises(ConfigError, match=r"unknown theme 'neon'"):
        fake_app(settings=ConsoleSettings(theme="neon"))


async def test_server_actions_console_log_and_open_console(fake_app: AppFactory) -> None:
    source = FakeCloudSource()
    app = fake_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("5")
        pane = app.pane("servers")
        server = pane.table.current_row
        await pilot.press("x", "y")
        await settle(pilot)
        assert ("server_action", server.id, "stop") in source.calls
        assert pane.table.current_row.status == "SHUTOFF"
        await pilot.press("l")
        await settle(pilot)
        assert isinstance(app.screen, TextScreen)
        assert app.screen.body == source.data["console_output"][server.id].strip("\n") or (
            app.screen.body.strip() == source.data["console_output"][server.id].strip()
        )
        # c opens the in-terminal console (its own tests: test_console_screen.py).
        app.console_opener = FakeRfbOpener()
        await pilot.press("escape", "c")
        await settle(pilot)
        assert isinstance(app.screen, ConsoleScreen)
        assert ("remote_console_url", server.id, "vnc") in source.calls


async def test_images_visibility_filter_asks_glance(fake_app: AppFactory) -> None:
    source = FakeCloudSource()
    app = fake_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("3", "v")
        await settle(pilot)
        assert ("raw_images", "public") in source.calls
        assert all(r.visibility == "public" for r in app.pane("images").table.data.rows)
        assert "visibility public" in str(app.query_one("#status-images").render())


class _Plugin:
    """An inline plugin adding a pane, a column and actions, and opening consoles."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, str | None]] = []
        self.noted: list[str] = []

    @hookimpl
    def novaconsole_console_panes(self) -> list[ConsolePane]:
        return [
            ConsolePane(
                name="flavors",
                title="Flavors",
                aliases=("flv",),
                columns=[ConsoleColumn("name", "Name", lambda r: r["name"])],
                load=lambda source: [{"id": "1", "name": "lab.tiny"}, {"id": "2", "name": "m1"}],
            )
        ]

    @hookimpl
    def novaconsole_console_columns(self, pane: str) -> list[ConsoleColumn]:
        if pane == "servers":
            return [ConsoleColumn("short", "Short ID", lambda r: r.id[:8])]
        return []

    @hookimpl
    def novaconsole_console_actions(self, pane: str) -> list[ConsoleAction]:
        if pane != "services":
            return []

        def note(source: Any, row: Any) -> str:
            self.noted.append(row.host)
            return f"noted {row.host}"

        return [ConsoleAction("n", "Note host", note, mutating=True)]

    @hookimpl
    def novaconsole_open_console(self, server_id: str, cloud: str | None) -> str:
        self.opened.append((server_id, cloud))
        return f"http://127.0.0.1:6080/vnc.html?server={server_id}"


async def test_plugins_add_panes_columns_actions_and_open_consoles(
    fake_app: AppFactory,
) -> None:
    pm = PluginManager()
    plugin = _Plugin()
    pm.register(plugin, name="inline")
    app = fake_app(plugin_manager=pm)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("colon", *"flv", "enter")
        await settle(pilot)
        assert app.active_pane_name == "flavors"
        assert [r["name"] for r in app.pane("flavors").table.data.rows] == ["lab.tiny", "m1"]
        servers = app.pane("servers")
        assert servers.columns[-1].title == "Short ID"
        assert servers.table.data.texts[0][-1] == servers.table.data.rows[0].id[:8]
        await pilot.press("1", "n")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await settle(pilot)
        assert plugin.noted
        app.console_opener = FakeRfbOpener()
        await pilot.press("5", "c")
        await settle(pilot)
        assert isinstance(app.screen, ConsoleScreen), app.screen
        await pilot.press("ctrl+o")  # open in browser: the plugin's hook
        await settle(pilot)
        assert plugin.opened == [(servers.table.data.rows[0].id, "novaconsole-lab")]
        assert any("vnc.html?server=" in n for n in _notes(app))


async def test_plugin_mutating_action_is_hidden_in_readonly(fake_app: AppFactory) -> None:
    pm = PluginManager()
    plugin = _Plugin()
    pm.register(plugin, name="inline")
    app = fake_app(plugin_manager=pm, settings=ConsoleSettings(refresh=0, readonly=True))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("n")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        app.pane("services").action_plugin_action(0)
        await settle(pilot)
        assert plugin.noted == []


async def test_header_shows_the_refresh_time_after_a_manual_refresh(fake_app: AppFactory) -> None:
    """The header follows every load, not just the one that raced the cloud info."""
    from datetime import timedelta

    later = FROZEN_NOW + timedelta(minutes=5)
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        for pane in app.panes:
            pane.clock = lambda: later
        await pilot.press("r")
        await settle(pilot)
        header = str(app.query_one("#header").render())
        assert f"refreshed {later:%H:%M:%S}" in header
