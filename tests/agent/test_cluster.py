"""The bus over a real three-node RabbitMQ cluster: the agent's node stops, it carries on.

The cluster is the test's own (:mod:`rabbitcluster`: three ``rabbitmq-server`` nodes on
127.0.0.1 with their own ports, data and cookie); the machine's broker is not involved.
The agent lists the nodes A, B, C and the console C, A, B, so the agent is on A and the
console on C; then A stops. Two tests share one cluster (its start is the slow part): the
second starts A again first, which also shows a stopped node rejoining.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from agenttools import AgentKeys, make_keys, wait_for
from rabbitcluster import Node, RabbitCluster

from novaconsole.agentbus import (
    CommandReply,
    CommandRequest,
    DomainEvent,
    Heartbeat,
    HostFacts,
    Inventory,
    Message,
)
from novaconsole.agentbus.bus import AgentBus, ConsoleBus, command_queue, last_value_queue
from novaconsole.agentbus.settings import BusSettings
from novaconsole_agent.config import AgentConfig
from novaconsole_agent.daemon import Agent

pytestmark = pytest.mark.cluster

HOST = "clusterhost"
AGENT_CONNECTION = f"novaconsole agent {HOST}"
CONSOLE_CONNECTION = "novaconsole console cluster"


class Recorder:
    """What a ConsoleBus delivers (called from its dispatcher thread)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.lock = threading.Lock()

    def __call__(self, message: Message) -> None:
        with self.lock:
            self.messages.append(message)

    def of(self, kind: str) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m.kind == kind]

    def event_seqs(self) -> set[int]:
        return {m.seq for m in self.of("event") if m.seq is not None}


class EchoHandler:
    def __init__(self) -> None:
        self.calls: list[CommandRequest] = []
        self.lock = threading.Lock()

    def __call__(self, message: Message, request: CommandRequest) -> CommandReply:
        with self.lock:
            self.calls.append(request)
        return CommandReply(correlation_id="", ok=True, result={"echo": request.args})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    rabbit = RabbitCluster(tmp_path_factory.mktemp("rabbit"))
    try:
        rabbit.start()
        yield rabbit
    finally:
        rabbit.close()


@pytest.fixture
def whole_cluster(cluster: RabbitCluster) -> RabbitCluster:
    """The module's cluster with every node running (a test before may have stopped one)."""
    for node in cluster.nodes:
        if not node.running:
            cluster.start_node(node)
    return cluster


def bus_settings(
    cluster: RabbitCluster, tmp: Path, name: str, nodes: list[Node], key: Path, trusted: Path
) -> BusSettings:
    """A bus file as an operator writes it: the nodes' URLs, the vhost, a password file."""
    password = tmp / f"{name}.password"
    password.write_text(cluster.password)
    password.chmod(0o600)
    urls = ", ".join(f'"{n.url}"' for n in nodes)
    path = tmp / f"{name}.toml"
    path.write_text(
        "[bus]\n"
        f"urls = [{urls}]\n"
        f'vhost = "{cluster.vhost}"\n'
        f'user = "{cluster.user}"\n'
        f'password_file = "{password}"\n'
        "heartbeat = 5\n"
        'console_name = "cluster"\n'
        "[keys]\n"
        f'signing_key = "{key}"\n'
        f'trusted = "{trusted}"\n'
    )
    return BusSettings.load(path)


def event(i: int) -> DomainEvent:
    return DomainEvent(uuid=f"u{i}", name=f"d{i}", event="lifecycle", detail="started")


def test_stop_the_agents_node_it_carries_on_through_another(
    whole_cluster: RabbitCluster, tmp_path: Path
) -> None:
    cluster = whole_cluster
    a, b, c = cluster.nodes
    keys: AgentKeys = make_keys(tmp_path / "keys", host=HOST)
    agent_settings = bus_settings(
        cluster, tmp_path, "agent", [a, b, c], keys.agent_key, keys.agent_trusted
    )
    console_settings = bus_settings(
        cluster, tmp_path, "console", [c, a, b], keys.console_key, keys.console_trusted
    )
    handler = EchoHandler()
    agent = AgentBus(agent_settings, HOST, handler)
    first, got1 = ConsoleBus(console_settings), Recorder()
    second, got2 = ConsoleBus(console_settings), Recorder()
    try:
        first.start(got1)
        agent.start()
        assert agent.connected.wait(20), agent._link.last_error

        # -- before: the agent on A, the console on C, events and a command flow.
        agent.publish_inventory(Inventory(host=HostFacts(hostname=HOST, nova_host=HOST)))
        for i in range(2, 7):
            agent.publish_event(event(i))
        agent.publish_heartbeat(Heartbeat("test", 0.0, 10.0, True, "test:///default", 0))
        wait_for("events 2..6 and a heartbeat", lambda: got1.event_seqs() == set(range(2, 7)))
        wait_for("the heartbeat", lambda: got1.of("heartbeat"))
        assert first.request(HOST, "echo", {"n": 1}, timeout=10).ok

        def both_listed() -> dict[str, str] | None:
            nodes = cluster.connection_nodes(c)
            return nodes if {AGENT_CONNECTION, CONSOLE_CONNECTION} <= set(nodes) else None

        where = wait_for("both connections listed", both_listed)
        assert (where[AGENT_CONNECTION], where[CONSOLE_CONNECTION]) == (a.name, c.name)
        types = dict(
            line.split("\t")[:2]
            for line in cluster.ctl(c, "list_queues", "-p", cluster.vhost, "name", "type")
            .strip()
            .splitlines()[1:]
        )
        for queue in (
            command_queue(HOST),
            last_value_queue(HOST, "heartbeat"),
            last_value_queue(HOST, "inventory"),
            "novaconsole.console.cluster",
        ):
            assert types.get(queue) == "quorum", (queue, types)

        # -- the console goes away; what the broker confirms meanwhile waits in its queue.
        first.stop()
        for i in range(7, 17):
            agent.publish_event(event(i))
        wait_for("events 7..16 confirmed by the broker", lambda: agent.pending() == 0)
        assert agent.connects == 1

        # -- stop A; publish while the agent finds another node.
        for i in range(17, 22):
            agent.publish_event(event(i))
        cluster.stop_node(a)
        for i in range(22, 27):
            agent.publish_event(event(i))
        wait_for(
            "the agent reconnected through another node",
            lambda: agent.connects >= 2 and agent.connected.is_set(),
            timeout=60,
        )
        wait_for("every event confirmed after the failover", lambda: agent.pending() == 0)
        now_on = wait_for(
            "the agent's new connection listed",
            lambda: cluster.connection_nodes(c).get(AGENT_CONNECTION),
        )
        assert now_on in (b.name, c.name)

        # -- after: a console (first URL C) gets all that was confirmed, heartbeats go on.
        second.start(got2)
        wait_for("events 7..26", lambda: got2.event_seqs() >= set(range(7, 27)), timeout=30)
        agent.publish_heartbeat(Heartbeat("test", 1.0, 10.0, True, "test:///default", 0))
        beat = wait_for("a heartbeat after the stop", lambda: got2.of("heartbeat"))
        assert beat[-1].seq == 26  # it carries the last event number: nothing outstanding
        assert got1.event_seqs() | got2.event_seqs() == set(range(2, 27))
        assert (first.gaps, second.gaps, first.rejected, second.rejected) == (0, 0, 0, 0)

        # A command through the new node is answered, and each ran exactly once.
        reply = second.request(HOST, "echo", {"n": 2}, timeout=10)
        assert reply.ok
        assert reply.result == {"echo": {"n": 2}}
        assert [call.args["n"] for call in handler.calls] == [1, 2]
        assert agent.executed == 2
        # The last-value (quorum) queues still answer with A down.
        latest = second.latest([HOST])[HOST]
        assert latest.heartbeat is not None
        assert latest.inventory is not None
    finally:
        agent.stop()
        first.stop()
        second.stop()


def test_the_daemon_carries_on_when_its_node_is_killed(
    whole_cluster: RabbitCluster, tmp_path: Path
) -> None:
    """The real agent daemon on libvirt's ``test:///default`` (in this process, as in
    test_daemon.py): its node is killed (SIGKILL), it resyncs through another, libvirt
    events still arrive, and a command runs once."""
    cluster = whole_cluster
    a, b, c = cluster.nodes
    keys = make_keys(tmp_path / "keys", host=HOST)
    console_settings = bus_settings(
        cluster, tmp_path, "console", [c, a, b], keys.console_key, keys.console_trusted
    )
    password = tmp_path / "agent.password"
    password.write_text(cluster.password)
    password.chmod(0o600)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'host = "{HOST}"\n'
        'libvirt_uri = "test:///default"\n'
        "heartbeat_interval = 0.5\n"
        f'state_dir = "{tmp_path / "state"}"\n'
        "[bus]\n"
        f"urls = [{', '.join(repr(n.url).replace(chr(39), chr(34)) for n in (a, b, c))}]\n"
        f'vhost = "{cluster.vhost}"\n'
        f'user = "{cluster.user}"\n'
        f'password_file = "{password}"\n'
        "heartbeat = 5\n"
        "[keys]\n"
        f'signing_key = "{keys.agent_key}"\n'
        f'trusted = "{keys.agent_trusted}"\n'
        "[commands]\n"
    )
    got = Recorder()
    console = ConsoleBus(console_settings)
    agent = Agent(AgentConfig.load(config))
    thread = threading.Thread(target=lambda: agent.run(install_signals=False), daemon=True)
    libvirt_rw = libvirt.open("test:///default")
    dom = libvirt_rw.lookupByName("test")
    try:
        console.start(got)
        thread.start()
        assert agent.bus.connected.wait(20), agent.bus._link.last_error

        def inventories(cause: str) -> list[Message]:
            return [m for m in got.of("inventory") if m.body.get("cause") == cause]

        wait_for("the start inventory", lambda: inventories("start"))
        where = wait_for(
            "the agent's connection listed",
            lambda: cluster.connection_nodes(c).get(AGENT_CONNECTION),
        )
        assert where == a.name
        assert console.request(HOST, "stats", timeout=10).ok
        executed = agent.bus.executed

        # This time a crash: the node is killed, no connection.close to its clients.
        cluster.kill_node(a)
        # A libvirt event while the agent finds another node.
        dom.suspend()
        wait_for(
            "a resync inventory through another node",
            lambda: inventories("resync"),
            timeout=60,
        )
        assert agent.bus.connects >= 2
        now_on = wait_for(
            "the agent's new connection listed",
            lambda: cluster.connection_nodes(c).get(AGENT_CONNECTION),
        )
        assert now_on in (b.name, c.name)
        dom.resume()

        def lifecycle(detail: str) -> list[Message]:
            return [
                m
                for m in got.of("event")
                if m.body.get("name") == "test" and m.body.get("detail") == detail
            ]

        wait_for("the suspended event", lambda: lifecycle("suspended"))
        wait_for("the resumed event", lambda: lifecycle("resumed"))
        beats_after = len(got.of("heartbeat"))
        wait_for("heartbeats go on", lambda: len(got.of("heartbeat")) > beats_after + 1)
        assert console.request(HOST, "stats", timeout=10).ok
        assert agent.bus.executed == executed + 1
        assert (console.gaps, console.rejected) == (0, 0)
        seqs = sorted(m.seq for m in got.messages if m.kind != "heartbeat" and m.seq is not None)
        # Inventories and events are numbered 1, 2, 3...: none missing across the failover.
        assert set(seqs) == set(range(1, max(seqs) + 1))
    finally:
        if dom.info()[0] == libvirt.VIR_DOMAIN_PAUSED:
            dom.resume()
        libvirt_rw.close()
        agent.stop()
        thread.join(30)
        console.stop()
    assert not thread.is_alive(), "the agent did not stop"
