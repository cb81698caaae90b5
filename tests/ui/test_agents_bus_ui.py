"""The console's panes fed by the real broker: a signed event from the real AgentBus updates
the Servers and Agents rows with no poll. The cloud is the recorded fake (its one server is
on host ``vm``); the agent's inventory is constructed (no libvirt)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from agentbus_kit import BusKit, bus_vhost, make_kit
from console_helpers import frozen_clock, settle
from fake_agents import SERVER_ID
from fake_source import FakeCloudSource

from novaconsole.agentbus import (
    CommandReply,
    CommandRequest,
    Domain,
    DomainEvent,
    Heartbeat,
    HostFacts,
    Inventory,
    Message,
)
from novaconsole.agentbus.bus import AgentBus
from novaconsole.agents.feed import open_agent_feed
from novaconsole.ui.app import make_app
from novaconsole.ui.settings import ConsoleSettings

pytestmark = pytest.mark.asyncio
SIZE = (140, 36)


def refuse(message: Message, request: CommandRequest) -> CommandReply:
    return CommandReply(correlation_id="", ok=False, error="no commands in this test")


@pytest.fixture
def kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BusKit]:
    with bus_vhost() as vhost:
        kit = make_kit(tmp_path / "bus", vhost, ["vm"])
        for name, value in kit.env().items():
            monkeypatch.setenv(name, value)
        yield kit


async def test_a_real_event_updates_the_panes_without_a_poll(kit: BusKit) -> None:
    agent = AgentBus(kit.agent_settings("vm"), "vm", refuse)
    agent.start()
    assert agent.connected.wait(10), "agent bus did not connect"
    feed = open_agent_feed()
    source = FakeCloudSource()
    app = make_app(
        connect=lambda name: source,
        cloud="novaconsole-lab",
        settings=ConsoleSettings(refresh=0),
        clock=frozen_clock,
        remember_theme=False,
        agent_feed=feed,
    )
    try:
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("5")
            await settle(pilot)
            servers = app.pane("servers")
            column = [c.key for c in servers.columns].index("hypervisor")

            def cell() -> str:
                return str(servers.table.data.texts[0][column])

            agent.publish_heartbeat(Heartbeat("ui-1", 0.0, 10.0, True, "test:///default", 1))
            agent.publish_inventory(
                Inventory(
                    host=HostFacts(hostname="vm", nova_host="vm"),
                    domains=[Domain(SERVER_ID, "instance-00000001", "running", "booted")],
                )
            )
            for _ in range(400):  # readiness waits with a deadline, not timing assertions
                await pilot.pause(0.05)
                if cell() == "running":
                    break
            assert cell() == "running"
            polls = source.count("raw_servers")
            agent.publish_event(
                DomainEvent(
                    SERVER_ID, "instance-00000001", "lifecycle", "stopped", "destroyed", 0.0,
                    "shut off destroyed",
                )
            )  # fmt: skip
            for _ in range(400):
                await pilot.pause(0.05)
                if cell() == "shutoff":
                    break
            assert cell() == "shutoff"
            assert source.count("raw_servers") == polls  # no poll was needed
            await pilot.press("6")
            await settle(pilot)
            (row,) = [r for r in app.pane("agents").table.data.rows if r.state.host == "vm"]
            assert (row.state.version, row.state.events, row.drift) == ("ui-1", 1, 1)
    finally:
        feed.stop()
        agent.stop()
