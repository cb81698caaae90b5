"""AgentBus and ConsoleBus against the real RabbitMQ (a vhost of the session's own)."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from agenttools import (
    AgentKeys,
    add_rabbit_user,
    agent_bus_settings,
    console_settings,
    rabbitmqctl,
    wait_for,
)

from novaconsole.agentbus import (
    CommandReply,
    CommandRequest,
    DomainEvent,
    Heartbeat,
    HostFacts,
    Inventory,
    Message,
    SigningKey,
    seal,
)
from novaconsole.agentbus.bus import (
    EXCHANGE_AGENTS,
    EXCHANGE_COMMANDS,
    AgentBus,
    ConsoleBus,
    agent_permissions,
)
from novaconsole.agentbus.settings import BusSettings
from novaconsole.errors import ConnectionFailure


class Recorder:
    """Collects what a ConsoleBus delivers (called from its dispatcher thread)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.lock = threading.Lock()

    def __call__(self, message: Message) -> None:
        with self.lock:
            self.messages.append(message)

    def of(self, kind: str) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m.kind == kind]


class EchoHandler:
    def __init__(self) -> None:
        self.calls: list[CommandRequest] = []

    def __call__(self, message: Message, request: CommandRequest) -> CommandReply:
        self.calls.append(request)
        return CommandReply(correlation_id="", ok=True, result={"echo": request.args})


def heartbeat() -> Heartbeat:
    return Heartbeat("test", 0.0, 10.0, True, "test:///default", 0)


def inventory(cause: str = "start") -> Inventory:
    return Inventory(host=HostFacts(hostname="testhost", nova_host="testhost"), cause=cause)


@pytest.fixture
def settings(
    tmp_path: Path, bus_vhost: str, agent_keys: AgentKeys
) -> tuple[BusSettings, BusSettings]:
    return (
        agent_bus_settings(tmp_path, bus_vhost, agent_keys),
        console_settings(tmp_path, bus_vhost, agent_keys),
    )


@pytest.fixture
def agent(settings: tuple[BusSettings, BusSettings]) -> Iterator[tuple[AgentBus, EchoHandler]]:
    handler = EchoHandler()
    bus = AgentBus(settings[0], "testhost", handler)
    bus.start()
    assert bus.connected.wait(10), "agent bus did not connect"
    yield bus, handler
    bus.stop()


@pytest.fixture
def console(settings: tuple[BusSettings, BusSettings]) -> Iterator[tuple[ConsoleBus, Recorder]]:
    recorder = Recorder()
    bus = ConsoleBus(settings[1])
    bus.start(recorder)
    yield bus, recorder
    bus.stop()


def test_messages_reach_the_console_verified(
    agent: tuple[AgentBus, EchoHandler], console: tuple[ConsoleBus, Recorder]
) -> None:
    bus, _ = agent
    _, got = console
    bus.publish_inventory(inventory())
    bus.publish_event(DomainEvent(uuid="u", name="d", event="lifecycle", detail="stopped"))
    bus.publish_heartbeat(heartbeat())
    wait_for("inventory, event and heartbeat", lambda: got.of("event") and got.of("heartbeat"))
    inv, ev, hb = got.of("inventory")[0], got.of("event")[0], got.of("heartbeat")[0]
    assert (inv.host, inv.keyid, inv.seq) == ("testhost", "testhost", 1)
    assert (ev.seq, ev.body["detail"]) == (2, "stopped")
    # A heartbeat carries the last number of the event stream.
    assert hb.seq == 2
    assert inv.boot == ev.boot == hb.boot == bus.boot


def test_request_reply(
    agent: tuple[AgentBus, EchoHandler], console: tuple[ConsoleBus, Recorder]
) -> None:
    cbus, _ = console
    reply = cbus.request("testhost", "echo", {"x": 1})
    assert reply.ok
    assert reply.result == {"echo": {"x": 1}}
    assert reply.command == "echo"
    assert agent[1].calls[0].command == "echo"


def test_request_to_a_host_without_agent(console: tuple[ConsoleBus, Recorder]) -> None:
    cbus, _ = console
    with pytest.raises(ConnectionFailure, match="no agent queue for host 'nohost'"):
        cbus.request("nohost", "inventory", timeout=5)


def test_latest_without_waiting_for_a_heartbeat(
    agent: tuple[AgentBus, EchoHandler], settings: tuple[BusSettings, BusSettings]
) -> None:
    bus, _ = agent
    bus.publish_heartbeat(heartbeat())
    bus.publish_inventory(inventory("one"))
    bus.publish_inventory(inventory("two"))
    wait_for("publishes confirmed", lambda: bus.pending() == 0)
    headless = ConsoleBus(settings[1])
    headless.start()
    try:
        latest = headless.latest()
        again = headless.latest()  # reading leaves them in place
    finally:
        headless.stop()
    assert set(latest) == {"testhost"}
    entry = latest["testhost"]
    assert entry.heartbeat is not None
    assert entry.inventory is not None
    assert entry.inventory.body["cause"] == "two"
    assert again["testhost"].inventory is not None


def test_console_rejects_agent_messages_it_cannot_trust(
    console: tuple[ConsoleBus, Recorder],
    bus_vhost: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cbus, got = console
    stranger = SigningKey.generate("testhost")  # the right name, not the enrolled key
    forged, _ = seal(stranger, "event", "testhost", {"uuid": "u", "name": "d", "event": "x"})
    unsigned = b'{"payloadType": "x", "payload": "e30="}'
    # Capture from before the first publish: the console may reject both before the
    # wait starts (a race this test lost once under load).
    with caplog.at_level(logging.WARNING, logger="novaconsole.agentbus"):
        conn = pika.BlockingConnection(
            pika.ConnectionParameters("127.0.0.1", virtual_host=bus_vhost)
        )
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            for body in (forged, unsigned):
                ch.basic_publish(EXCHANGE_AGENTS, "event.testhost", body)
        finally:
            conn.close()
        wait_for("two rejections", lambda: cbus.rejected >= 2)
    assert got.of("event") == []
    lines = [r.getMessage() for r in caplog.records]
    assert any("bad-signature" in line for line in lines), lines
    assert any("unsigned" in line for line in lines), lines


def test_reconnect_replays_and_runs_commands_once(
    agent: tuple[AgentBus, EchoHandler],
    console: tuple[ConsoleBus, Recorder],
    bus_vhost: str,
) -> None:
    bus, handler = agent
    cbus, got = console
    assert cbus.request("testhost", "echo", {"n": 1}).ok
    rabbitmqctl("close_all_connections", "--vhost", bus_vhost, "test: drop the bus")
    # Published while the connection is being re-established: kept until confirmed.
    for i in range(20):
        bus.publish_event(DomainEvent(uuid=f"u{i}", name="d", event="lifecycle"))
    wait_for("agent reconnected", lambda: bus.connects >= 2 and bus.connected.is_set())
    wait_for("console reconnected", lambda: cbus.connected.is_set())
    wait_for("all 20 events", lambda: len({m.body["uuid"] for m in got.of("event")}) == 20)
    assert cbus.request("testhost", "echo", {"n": 2}).ok
    assert [c.args["n"] for c in handler.calls] == [1, 2]


def test_bad_broker_is_one_line(tmp_path: Path, agent_keys: AgentKeys) -> None:
    path = tmp_path / "agents.toml"
    path.write_text(
        '[bus]\nurls = ["amqp://127.0.0.1:1"]\n[keys]\n'
        f'signing_key = "{agent_keys.console_key}"\ntrusted = "{agent_keys.console_trusted}"\n'
    )
    bus = ConsoleBus(BusSettings.load(path))
    with pytest.raises(ConnectionFailure) as info:
        bus.start(wait=2.0)
    text = info.value.one_line()
    assert "amqp://127.0.0.1:1" in text
    assert str(path) in text
    assert "\n" not in text


def test_raw_publish_to_commands_needs_a_queue(bus_vhost: str) -> None:
    """The command exchange exists only once an endpoint declared it; a command to no
    queue is returned, which is what ``request`` reports as 'no agent queue'."""
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", virtual_host=bus_vhost))
    try:
        ch = conn.channel()
        ch.exchange_declare(EXCHANGE_COMMANDS, exchange_type="direct", durable=True)
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.UnroutableError):
            ch.basic_publish(EXCHANGE_COMMANDS, "nohost", b"{}", mandatory=True)
    finally:
        conn.close()


def test_agent_user_is_limited_to_its_own_queues_and_routing_keys(
    settings: tuple[BusSettings, BusSettings],
    console: tuple[ConsoleBus, Recorder],
    bus_vhost: str,
) -> None:
    """With agent_permissions(host), an agent works and cannot speak for another host."""
    user = f"agent-test-perm-{os.getpid()}"
    password = secrets.token_urlsafe(18)
    add_rabbit_user(user, password, bus_vhost)
    perms = agent_permissions("testhost")
    rabbitmqctl("set_permissions", "-p", bus_vhost, user, perms.configure, perms.write, perms.read)
    assert perms.topic_write is not None
    assert perms.topic_read is not None
    rabbitmqctl(
        "set_topic_permissions",
        "-p",
        bus_vhost,
        user,
        EXCHANGE_AGENTS,
        perms.topic_write,
        perms.topic_read,
    )
    cbus, got = console
    agent_settings = dataclasses.replace(settings[0], user=user, password=password)
    bus = AgentBus(agent_settings, "testhost", EchoHandler())
    bus.start()
    try:
        assert bus.connected.wait(10), bus._link.last_error
        bus.publish_heartbeat(heartbeat())
        wait_for("the restricted agent's heartbeat", lambda: got.of("heartbeat"))
        assert cbus.request("testhost", "echo").ok
    finally:
        bus.stop()
    creds = pika.PlainCredentials(user, password)
    params = pika.ConnectionParameters("127.0.0.1", virtual_host=bus_vhost, credentials=creds)
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="ACCESS_REFUSED"):
            ch.basic_publish(EXCHANGE_AGENTS, "heartbeat.otherhost", b"{}")
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="ACCESS_REFUSED"):
            ch.queue_declare("novaconsole.agent.otherhost.commands", durable=True)
        # Nor send commands (to itself or any agent).
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="ACCESS_REFUSED"):
            ch.basic_publish(EXCHANGE_COMMANDS, "testhost", b"{}")
    finally:
        conn.close()
        rabbitmqctl("delete_user", user)


def test_a_command_redelivered_after_a_drop_is_not_run_again(
    settings: tuple[BusSettings, BusSettings],
    console: tuple[ConsoleBus, Recorder],
    bus_vhost: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The connection drops while the command runs: its ack is void, the broker delivers it
    again (flagged redelivered), and the agent answers from its journal instead."""
    entered = threading.Event()
    release = threading.Event()
    calls: list[str] = []

    def slow(message: Message, request: CommandRequest) -> CommandReply:
        calls.append(message.id)
        entered.set()
        release.wait(30)
        return CommandReply(correlation_id="", ok=True, result={"ran": len(calls)})

    bus = AgentBus(settings[0], "testhost", slow)
    bus.start()
    cbus, _ = console
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            cbus.request("testhost", "slow", timeout=15)
        except BaseException as exc:
            errors.append(exc)

    asker = threading.Thread(target=ask)
    try:
        assert bus.connected.wait(10)
        with caplog.at_level(logging.INFO, logger="novaconsole.agentbus"):
            asker.start()
            assert entered.wait(15), "the command never reached the handler"
            rabbitmqctl("close_all_connections", "--vhost", bus_vhost, "test: drop mid-command")
            wait_for("agent reconnected", lambda: bus.connects >= 2 and bus.connected.is_set())
            release.set()
            wait_for(
                "the redelivery answered from the journal",
                lambda: any("not run again" in r.getMessage() for r in caplog.records),
            )
        assert len(calls) == 1
        assert bus.executed == 1
    finally:
        release.set()
        asker.join(30)
        bus.stop()
    # The first reply went to the reply queue of the console's old connection: the console
    # says so as a timeout, and the command still ran once.
    assert len(errors) == 1
    assert "no reply" in str(errors[0])


def test_an_older_classic_agent_queue_is_replaced_by_a_quorum_queue(
    settings: tuple[BusSettings, BusSettings],
    console: tuple[ConsoleBus, Recorder],
    bus_vhost: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An agent of before declared its queues classic; this one replaces them (406 on
    redeclare) with quorum queues and works."""
    host = "testhost"
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", virtual_host=bus_vhost))
    try:
        ch = conn.channel()
        for kind in ("commands", "heartbeat", "inventory"):
            # Left by earlier tests of the session: start from an agent of before.
            ch.queue_delete(
                f"novaconsole.agent.{host}.commands"
                if kind == "commands"
                else f"novaconsole.last.{host}.{kind}"
            )
        ch.queue_declare(
            f"novaconsole.agent.{host}.commands", durable=True, arguments={"x-message-ttl": 30000}
        )
        ch.queue_declare(
            f"novaconsole.last.{host}.heartbeat",
            durable=True,
            arguments={"x-max-length": 1, "x-overflow": "drop-head"},
        )
    finally:
        conn.close()
    bus = AgentBus(settings[0], host, EchoHandler())
    with caplog.at_level(logging.WARNING, logger="novaconsole.agentbus"):
        bus.start()
        try:
            assert bus.connected.wait(10), bus._link.last_error
            types = dict(
                line.split("\t")[:2]
                for line in rabbitmqctl("list_queues", "-p", bus_vhost, "name", "type").splitlines()
                if "\t" in line
            )
            assert types[f"novaconsole.agent.{host}.commands"] == "quorum"
            assert types[f"novaconsole.last.{host}.heartbeat"] == "quorum"
            assert types[f"novaconsole.last.{host}.inventory"] == "quorum"
            reply = console[0].request(host, "echo", {"x": 1})
        finally:
            bus.stop()
    assert reply.ok
    replaced = [r.getMessage() for r in caplog.records if "replacing it" in r.getMessage()]
    assert len(replaced) == 2
