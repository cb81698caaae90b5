"""The Agents and Drift panes and the Servers' hypervisor column: snapshots and Pilot.

Over the recorded fake cloud and the fake agent feed (``fake_agents.py``: real messages and
directory, no broker); the real-broker path is in ``tests/agents/test_agents_bus.py``.
Update snapshots with ``pytest tests/ui/test_agents_ui.py --snapshot-update``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from console_helpers import frozen_clock, settle
from fake_agents import (
    DELETED_ID,
    SERVER_ID,
    UNKNOWN_ID,
    domain_started,
    fake_agent_feed,
    source_with_deleted_server,
)
from fake_source import FakeCloudSource
from textual.pilot import Pilot

from novaconsole.agents.drift import ACTIVE_BUT_OFF, COUNT, DELETED_RUNNING, UNKNOWN
from novaconsole.agents.feed import AgentFeed, agents_config_path, not_configured
from novaconsole.ui.app import NovaConsoleApp, make_app
from novaconsole.ui.settings import ConsoleSettings

SIZE = (140, 36)
Snap = Callable[..., bool]


def agents_app(
    feed: AgentFeed | None = None, source: FakeCloudSource | None = None
) -> NovaConsoleApp:
    if feed is None:
        feed, _clock = fake_agent_feed()
    fake = source if source is not None else source_with_deleted_server()
    return make_app(
        connect=lambda name: fake,
        cloud="novaconsole-lab",
        settings=ConsoleSettings(refresh=0),
        clock=frozen_clock,
        cloud_names=lambda: ["novaconsole-lab"],
        remember_theme=False,
        agent_feed=feed,
    )


def _after(*keys: str) -> Callable[[Pilot[Any]], Any]:
    async def run(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        if keys:
            await pilot.press(*keys)
            await settle(pilot)

    return run


# -- snapshots ---------------------------------------------------------------------------


def test_agents_pane(snap_compare: Snap) -> None:
    assert snap_compare(agents_app(), run_before=_after("6"), terminal_size=SIZE)


def test_drift_pane(snap_compare: Snap) -> None:
    assert snap_compare(agents_app(), run_before=_after("7"), terminal_size=SIZE)


def test_servers_hypervisor_column(snap_compare: Snap) -> None:
    assert snap_compare(agents_app(), run_before=_after("5"), terminal_size=SIZE)


def test_agents_not_configured(snap_compare: Snap) -> None:
    feed = AgentFeed.failed(not_configured(Path("/home/op/.config/novaconsole/agents.toml")))
    assert snap_compare(agents_app(feed), run_before=_after("6"), terminal_size=SIZE)


# -- behaviour ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_panes_show_the_agents_and_every_drift_kind() -> None:
    app = agents_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        agents = {r.state.host: r for r in app.pane("agents").table.data.rows}
        assert set(agents) == {"vm", "cmp2"}
        assert agents["vm"].drift == 4
        assert not agents["vm"].state.stale
        assert agents["cmp2"].state.stale
        assert agents["cmp2"].state.missing == 2
        findings = {(f.kind, f.server_id) for f in app.pane("drift").table.data.rows}
        assert findings == {
            (ACTIVE_BUT_OFF, SERVER_ID),
            (UNKNOWN, UNKNOWN_ID),
            (DELETED_RUNNING, DELETED_ID),
            (COUNT, ""),
        }
        styles = app.pane("agents").table.data.styles
        assert "error" in styles  # the stale agent stands out


@pytest.mark.asyncio
async def test_an_event_updates_rows_without_a_poll() -> None:
    """A domain starting on the hypervisor shows in Servers and Drift, with no API call."""
    feed, _clock = fake_agent_feed()
    source = source_with_deleted_server()
    app = agents_app(feed, source)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("5")
        await settle(pilot)
        servers = app.pane("servers")
        column = [c.key for c in servers.columns].index("hypervisor")
        assert servers.table.data.texts[0][column] == "shutoff"
        calls = source.count("raw_servers")
        # The bus thread delivers the event (here: a plain thread, as the bus's would).
        bus = threading.Thread(target=feed.directory.apply, args=(domain_started(2),))
        bus.start()
        bus.join()
        for _ in range(200):  # a readiness wait with a deadline, not a timing assertion
            await pilot.pause(0.05)
            if servers.table.data.texts[0][column] == "running":
                break
        assert servers.table.data.texts[0][column] == "running"
        # The Drift pane was not visible: it catches up when shown, still without a poll.
        await pilot.press("7")
        await settle(pilot)
        kinds = {f.kind for f in app.pane("drift").table.data.rows}
        assert ACTIVE_BUT_OFF not in kinds
        assert source.count("raw_servers") == calls  # no poll was needed


@pytest.mark.asyncio
async def test_a_burst_of_events_coalesces() -> None:
    """Many messages before the app drains mean one wake-up, not one per message."""
    feed, _clock = fake_agent_feed()
    app = agents_app(feed)
    posted: list[int] = []
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        original = app._wake_agents

        def counting() -> None:
            posted.append(1)
            original()

        feed.directory.set_on_dirty(counting)
        # No drain during the burst, however slow the machine (no timing in the test).
        app.AGENTS_FLUSH_DELAY = 3600

        def burst() -> None:
            for seq in range(2, 502):
                feed.directory.apply(domain_started(seq))

        bus = threading.Thread(target=burst)
        bus.start()
        bus.join()
        await settle(pilot)
        assert len(posted) == 1
        assert app._agents_flush_pending  # one flush waits, for all 500 messages


@pytest.mark.asyncio
async def test_no_agents_config_fails_only_the_agent_panes() -> None:
    feed = AgentFeed.failed(not_configured(agents_config_path()))
    app = agents_app(feed)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        for name in ("agents", "drift"):
            error = app.pane(name).error
            assert error is not None
            assert error.startswith("no compute agents configured:")
        for name in ("services", "servers", "hypervisors"):
            assert app.pane(name).error is None
            assert app.pane(name).table.data.rows
