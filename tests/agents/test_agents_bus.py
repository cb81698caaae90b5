"""The console side against the real broker, with real signed messages from the real AgentBus.

No libvirt: the inventories are constructed. ``novaconsole agents -f json`` runs in a
subprocess of this checkout; the console's feed (``open_agent_feed``) runs in-process and
must fold a real event, and never a forged one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from agentbus_kit import BusKit, bus_vhost, make_kit, wait_for
from labtools import run_novaconsole

from novaconsole.agentbus import (
    CommandReply,
    CommandRequest,
    Domain,
    DomainEvent,
    Heartbeat,
    HostFacts,
    Inventory,
    Message,
    ServiceStatus,
    SigningKey,
    generate_key_files,
    seal,
)
from novaconsole.agentbus.bus import EXCHANGE_AGENTS, AgentBus, ConsoleBus
from novaconsole.agents.feed import open_agent_feed

HOST = "vm"
RUNNING = "11111111-1111-4111-8111-111111111111"
OTHER = "22222222-2222-4222-8222-222222222222"


def refuse(message: Message, request: CommandRequest) -> CommandReply:
    return CommandReply(correlation_id="", ok=False, error="no commands in this test")


def heartbeat() -> Heartbeat:
    return Heartbeat(
        agent_version="test-1", started=0.0, interval=10.0, libvirt_connected=True,
        libvirt_uri="test:///default", domains=2,
        services=[ServiceStatus("nova-compute", True, 1, 0.0)],
    )  # fmt: skip


def inventory() -> Inventory:
    return Inventory(
        host=HostFacts(hostname="vm.test", nova_host=HOST),
        domains=[
            Domain(RUNNING, "instance-00000011", "running", "booted"),
            Domain(OTHER, "instance-00000012", "shut off", "shutdown"),
        ],
        services=[ServiceStatus("nova-compute", True, 1, 0.0)],
        cause="start",
    )


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[BusKit]:
    with bus_vhost() as vhost:
        yield make_kit(tmp_path / "bus", vhost, [HOST])


@pytest.fixture
def agent(kit: BusKit) -> Iterator[AgentBus]:
    bus = AgentBus(kit.agent_settings(HOST), HOST, refuse)
    bus.start()
    assert bus.connected.wait(10), "agent bus did not connect"
    yield bus
    bus.stop()


def _published(kit: BusKit) -> bool:
    """Readiness: the broker holds the agent's heartbeat and inventory."""
    with ConsoleBus(kit.console_settings()) as bus:
        bus.start(wait=10)
        latest = bus.latest(timeout=10).get(HOST)
    return latest is not None and latest.inventory is not None and latest.heartbeat is not None


def test_agents_json_in_a_subprocess(kit: BusKit, agent: AgentBus) -> None:
    agent.publish_heartbeat(heartbeat())
    agent.publish_inventory(inventory())
    wait_for("the agent's heartbeat and inventory on the broker", lambda: _published(kit))
    proc = run_novaconsole("agents", "-f", "json", env=kit.env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["stale"] == []
    (state,) = data["agents"]
    assert (state["host"], state["nova_host"], state["version"]) == (HOST, HOST, "test-1")
    assert (state["libvirt"], state["nova_compute"], state["stale"]) == (
        "connected",
        "running",
        False,
    )
    assert {(d["uuid"], d["state"]) for d in state["domains"]} == {
        (RUNNING, "running"),
        (OTHER, "shutoff"),
    }
    # An enrolled agent that never reported is stale: exit 1, and the table says so.
    kit.enrol("cmp2")
    proc = run_novaconsole("agents", env=kit.env(), timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.rstrip().endswith("2 agents, 1 stale: cmp2")
    assert "guest" not in proc.stdout + proc.stderr  # the broker password never shows


def test_agents_broker_unreachable_is_one_line(kit: BusKit, tmp_path: Path) -> None:
    text = kit.console_config.read_text().replace("127.0.0.1:5672", "127.0.0.1:1")
    bad = tmp_path / "bad-agents.toml"
    bad.write_text(text)
    proc = run_novaconsole(
        "agents", "--timeout", "2", env={**kit.env(), "NOVACONSOLE_AGENTS_CONFIG": str(bad)}
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("novaconsole: error: agent bus amqp://127.0.0.1:1 vhost ")


def test_feed_folds_a_real_event_and_never_a_forged_one(
    kit: BusKit, agent: AgentBus, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in kit.env().items():
        monkeypatch.setenv(name, value)
    agent.publish_heartbeat(heartbeat())
    agent.publish_inventory(inventory())
    wakeups: list[int] = []
    feed = open_agent_feed()
    try:
        assert feed.error is None
        feed.directory.set_on_dirty(lambda: wakeups.append(1))

        def domain_state() -> str | None:
            state = feed.directory.get(HOST)
            found = state.domains_by_uuid.get(RUNNING) if state is not None else None
            return found.state if found is not None else None

        wait_for("the inventory in the console's directory", lambda: domain_state() == "running")
        # A forged event: signed with a key the console has not enrolled, for host vm.
        generate_key_files(tmp_path / "rogue", HOST)
        rogue = SigningKey.load(tmp_path / "rogue" / f"{HOST}.key")
        forged_event = DomainEvent(
            RUNNING, "instance-00000011", "lifecycle", "stopped", "", 0.0, "crashed"
        )
        data, _ = seal(rogue, "event", HOST, forged_event.to_dict(), seq=99, boot=uuid.uuid4().hex)
        params = pika.ConnectionParameters(
            "127.0.0.1", 5672, kit.vhost, pika.PlainCredentials("guest", "guest")
        )
        with pika.BlockingConnection(params) as conn:
            conn.channel().basic_publish(EXCHANGE_AGENTS, f"event.{HOST}", data)
        # Then the real one, from the agent's own bus: it must arrive, the forged one not.
        drained = len(wakeups)
        feed.directory.drain_changes()
        agent.publish_event(
            DomainEvent(
                RUNNING,
                "instance-00000011",
                "lifecycle",
                "stopped",
                "destroyed",
                0.0,
                "shut off destroyed",
            )
        )
        wait_for("the real event in the directory", lambda: domain_state() == "shutoff")
        assert len(wakeups) > drained  # the directory woke its reader
        state = feed.directory.get(HOST)
        assert state is not None
        assert domain_state() == "shutoff"  # never "crashed"
        assert state.restarts == 0
        assert state.missing == 0
    finally:
        feed.stop()


def test_agents_json_from_the_real_daemon(kit: BusKit) -> None:
    """The real agent process on libvirt's test:///default driver, read by `agents -f json`."""
    import os
    import signal
    import subprocess
    import sys

    daemon = subprocess.Popen(
        [sys.executable, "-m", "novaconsole", "--plugin", "compute-agent",
         "--config", str(kit.daemon_config(HOST))],
        env={**os.environ, **kit.env()}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_for("the daemon's inventory on the broker", lambda: _published(kit), timeout=60)
        proc = run_novaconsole("agents", "-f", "json", env=kit.env(), timeout=60)
        assert proc.returncode == 0, proc.stderr
        (state,) = json.loads(proc.stdout)["agents"]
        assert (state["host"], state["libvirt"], state["stale"]) == (HOST, "connected", False)
        assert state["version"]
        # test:///default always defines one running domain named "test".
        assert [(d["name"], d["state"]) for d in state["domains"]] == [("test", "running")]
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.communicate()
