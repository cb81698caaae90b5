"""A server booted through Nova reaches the console from the lab agent's own event.

Everything is real: the lab's Nova boots the server (``agentgaps-event-*``, no network),
the agent daemon ``lab up`` runs reads libvirt's event and publishes it, and the console's
feed (:func:`~novaconsole.agents.feed.open_agent_feed`, the lab's ``bus/agents.toml``)
folds it into the :class:`~novaconsole.agents.model.AgentDirectory` behind the Agents
and Servers panes of the real app (Pilot) on the lab's cloud.

"From the event" is checked where it happens: a tap on the feed's
:class:`~novaconsole.agentbus.bus.ConsoleBus` records, for every message the bus delivers,
its kind and the domains the directory holds after folding it; the first message after
which the server's domain is there must be a libvirt ``event`` for its UUID (not the
inventory the agent sends a second later, and not a poll: the test never polls Nova
while it waits). Then, with the server's row on the Servers pane, a pause through Nova
must turn its Hypervisor cell to ``paused`` with no further Nova poll.

The feed reads the lab's agents.toml with a console name of the test's own
(``console_name``), so it gets its own durable queue and takes no message from a console
someone else runs on the lab; that queue is deleted afterwards, and so is the server.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ui"))

from console_helpers import settle
from labtools import boot_lab_server
from textual.pilot import Pilot

import novaconsole.agents.feed as feed_module
from novaconsole.agentbus import Message
from novaconsole.agentbus.bus import ConsoleBus, console_queue
from novaconsole.agentbus.settings import CONFIG_ENV
from novaconsole.agents.feed import AgentFeed, open_agent_feed
from novaconsole.agents.model import AgentDirectory
from novaconsole.lab.config import LabConfig
from novaconsole.sources.openstack_source import OpenStackSource, open_cloud_source
from novaconsole.ui.app import NovaConsoleApp, make_app
from novaconsole.ui.settings import ConsoleSettings

pytestmark = [pytest.mark.lab, pytest.mark.asyncio]
SIZE = (200, 40)
#: The lab's small blank image and flavor: the quickest boot (SeaBIOS is a real guest).
IMAGE, FLAVOR = "novaconsole-test-raw", "nc.tiny"
#: Readiness deadline for what the agent and the console do (not a speed assertion).
DEADLINE = 60.0


@dataclass(frozen=True)
class Delivery:
    """One message the console's bus delivered, and what the directory held after it."""

    at: float
    kind: str
    event: str
    uuid: str
    #: The domain UUIDs the directory holds for the message's host once it is folded in.
    present: frozenset[str]


class Tap:
    """Records every delivery of the feed's ConsoleBus (wraps its ``on_message``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deliveries: list[Delivery] = []

    def wrap(self, on_message: Callable[[Message], None]) -> Callable[[Message], None]:
        directory = getattr(on_message, "__self__", None)
        assert isinstance(directory, AgentDirectory), "the feed no longer feeds a directory"

        def tapped(message: Message) -> None:
            on_message(message)
            state = directory.get(message.host)
            present = frozenset(d.uuid for d in (state.domains or ())) if state else frozenset()
            body = message.body
            with self.lock:
                self.deliveries.append(
                    Delivery(
                        time.monotonic(),
                        message.kind,
                        str(body.get("event", "")),
                        str(body.get("uuid", "")),
                        present,
                    )
                )

        return tapped

    def first_with(self, domain: str) -> Delivery | None:
        with self.lock:
            return next((d for d in self.deliveries if domain in d.present), None)

    def events_for(self, domain: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.kind == "event" and d.uuid == domain]


@pytest.fixture
def tap(lab_state: LabConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tap]:
    """The lab's agents.toml under a console name of the test's own, and the tapped bus."""
    lab_config = lab_state.state_dir / "bus" / "agents.toml"
    assert lab_config.exists(), f"{lab_config}: the lab has no agent bus (lab up writes it)"
    name = f"agentgaps-{uuid.uuid4().hex[:8]}"
    text = lab_config.read_text()
    assert "\n[bus]\n" in text
    config = tmp_path / "agents.toml"
    config.write_text(text.replace("\n[bus]\n", f'\n[bus]\nconsole_name = "{name}"\n', 1))
    monkeypatch.setenv(CONFIG_ENV, str(config))
    recorder = Tap()

    class TappedConsoleBus(ConsoleBus):
        def start(
            self, on_message: Callable[[Message], None] | None = None, *, wait: float | None = 10.0
        ) -> None:
            if on_message is not None:
                on_message = recorder.wrap(on_message)
            super().start(on_message, wait=wait)

    monkeypatch.setattr(feed_module, "ConsoleBus", TappedConsoleBus)
    try:
        yield recorder
    finally:
        subprocess.run(
            ["rabbitmqctl", "-q", "delete_queue", "-p", "/novaconsole", console_queue(name)],
            capture_output=True,
            timeout=60,
            check=False,
        )


@pytest.fixture
def source(lab_cloud: str) -> Iterator[OpenStackSource]:
    real = open_cloud_source(lab_cloud, timeout=30)
    yield real
    real.close()


class PollCounter:
    """Counts the source's server list calls (the Servers pane's and drift's Nova poll)."""

    def __init__(self, source: OpenStackSource) -> None:
        self.calls = 0
        inner = source.raw_servers

        def counted() -> list[dict[str, Any]]:
            self.calls += 1
            return inner()

        source.raw_servers = counted  # type: ignore[method-assign]


async def until(pilot: Pilot[Any], check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {DEADLINE:g} s")
        await pilot.pause(0.1)


def _agent_host(feed: AgentFeed, nova_host: str) -> str:
    state = feed.states_by_nova_host().get(nova_host)
    assert state is not None, f"no agent reports Nova host {nova_host!r}: {feed.states()}"
    return state.host


async def test_a_server_booted_through_nova_shows_from_the_agents_event(
    tap: Tap, lab_cloud: str, source: OpenStackSource
) -> None:
    polls = PollCounter(source)
    feed = open_agent_feed()
    app: NovaConsoleApp = make_app(
        connect=lambda name: source,
        cloud=source.name,
        settings=ConsoleSettings(refresh=0, timeout=30),
        remember_theme=False,
        agent_feed=feed,
    )
    boot = boot_lab_server(lab_cloud, "agentgaps-event", image=IMAGE, flavor=FLAVOR)
    booted = None
    try:
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            # The feed connected and read every agent's last inventory from the broker.
            await until(
                pilot,
                lambda: feed.error is None and any(s.domains is not None for s in feed.states()),
                "the lab's agent in the console's directory",
            )
            await pilot.press("6")  # Agents: its rows follow the directory live
            await settle(pilot)
            agents = app.pane("agents")
            domains_col = [c.key for c in agents.columns].index("domains")
            polls_before = polls.calls

            booted = await asyncio.to_thread(boot.__enter__)
            server = booted.server
            host = _agent_host(feed, server.compute_host)

            # In the directory: the first delivery that holds the domain is the agent's event.
            await until(pilot, lambda: tap.first_with(server.id) is not None, "the domain")
            first = tap.first_with(server.id)
            assert first is not None
            assert (first.kind, first.uuid) == ("event", server.id), first
            assert first.event == "lifecycle", first

            # In the Agents pane: the row's domains and its count, with no Nova poll.
            def agents_row() -> Any:
                rows = [r for r in agents.table.data.rows if r.state.host == host]
                return rows[0] if rows else None

            def row_has_domain() -> bool:
                row = agents_row()
                return row is not None and server.id in row.state.domains_by_uuid

            await until(pilot, row_has_domain, "the domain in the Agents pane's row")
            row = agents_row()
            index = agents.table.data.rows.index(row)
            assert str(agents.table.data.texts[index][domains_col]) == str(len(row.state.domains))
            assert row.state.domain_count == len(row.state.domains)
            assert polls.calls == polls_before  # the Agents pane did not poll Nova for it

            # The Servers pane: one poll brings the new row, the agent's state beside it.
            await pilot.press("5")
            await settle(pilot)
            await pilot.press("r")
            await settle(pilot)
            servers = app.pane("servers")
            column = [c.key for c in servers.columns].index("hypervisor")

            def hypervisor_cell() -> str:
                for i, r in enumerate(servers.table.data.rows):
                    if r.id == server.id:
                        return str(servers.table.data.texts[i][column])
                return "(no row)"

            await until(pilot, lambda: hypervisor_cell() == "running", "running in Servers")
            polls_after_refresh = polls.calls

            # A pause through Nova: the agent's event changes the cell, no poll needed.
            seen = len(tap.events_for(server.id))
            await asyncio.to_thread(booted.conn.compute.pause_server, server)
            await until(pilot, lambda: hypervisor_cell() == "paused", "paused in Servers")
            assert polls.calls == polls_after_refresh
            assert [d.event for d in tap.events_for(server.id)[seen:]][:1] == ["lifecycle"]
    finally:
        feed.stop()
        if booted is not None:
            await asyncio.to_thread(boot.__exit__, None, None, None)
