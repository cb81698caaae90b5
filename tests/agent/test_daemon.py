"""The agent daemon against real libvirt (the ``test:///default`` driver) and real RabbitMQ.

``test:///default`` is libvirt's built-in test hypervisor: real libvirt API, domains and
events, one shared state per process (so the agent runs in this process, in a thread, and
the test changes domains through a connection of its own).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pika
import pytest
from agenttools import AgentKeys, agent_toml, console_settings, rabbitmqctl, wait_for

from novaconsole.agentbus import (
    CommandRequest,
    Inventory,
    Message,
    SigningKey,
    parse_body,
    seal,
)
from novaconsole.agentbus.bus import EXCHANGE_COMMANDS, CommandJournal, ConsoleBus
from novaconsole.agentbus.envelope import seal_payload
from novaconsole_agent.config import AgentConfig
from novaconsole_agent.daemon import Agent

VNC_DOMAIN = """<domain type='test'>
  <name>agent-test-vnc</name>
  <uuid>0b7c3e4a-5f0e-4c1e-9d43-6a1f00000001</uuid>
  <memory unit='KiB'>65536</memory>
  <vcpu>1</vcpu>
  <os><type arch='i686'>hvm</type></os>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:package version="34.0.0"/>
      <nova:name>web-1</nova:name>
      <nova:creationTime>2026-12-01 10:00:00</nova:creationTime>
      <nova:flavor name="m1.tiny"><nova:memory>64</nova:memory></nova:flavor>
      <nova:owner>
        <nova:user uuid="u-1">admin</nova:user>
        <nova:project uuid="p-1">demo</nova:project>
      </nova:owner>
    </nova:instance>
  </metadata>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/nova/instances/x/disk'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='tcp'>
      <source mode='bind' host='127.0.0.1' service='10000'/>
    </serial>
    <graphics type='vnc' port='5905' autoport='no' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
  </devices>
</domain>"""


class Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.lock = threading.Lock()

    def __call__(self, message: Message) -> None:
        with self.lock:
            self.messages.append(message)

    def of(self, kind: str) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m.kind == kind]

    def inventories(self, cause: str) -> list[Inventory]:
        return [
            parse_body("inventory", m.body)
            for m in self.of("inventory")
            if m.body.get("cause") == cause
        ]


@dataclass
class Running:
    agent: Agent
    console: ConsoleBus
    got: Recorder
    thread: threading.Thread


@pytest.fixture
def libvirt_rw() -> Iterator[libvirt.virConnect]:
    """A connection of the test's own to the shared test:///default state."""
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


def start_agent(
    tmp_path: Path, bus_vhost: str, keys: AgentKeys, **toml: object
) -> tuple[Agent, threading.Thread]:
    path = tmp_path / "agent.toml"
    path.write_text(agent_toml(bus_vhost, keys, **toml))  # type: ignore[arg-type]
    agent = Agent(AgentConfig.load(path))
    thread = threading.Thread(target=lambda: agent.run(install_signals=False), daemon=True)
    thread.start()
    assert agent.bus.connected.wait(10), "agent did not reach the broker"
    return agent, thread


@pytest.fixture
def running(
    tmp_path: Path, bus_vhost: str, agent_keys: AgentKeys, request: pytest.FixtureRequest
) -> Iterator[Running]:
    options = getattr(request, "param", {})
    got = Recorder()
    console = ConsoleBus(console_settings(tmp_path, bus_vhost, agent_keys))
    console.start(got)
    agent, thread = start_agent(tmp_path, bus_vhost, agent_keys, **options)
    yield Running(agent, console, got, thread)
    agent.stop()
    # Wait for the agent to be gone from the broker: a lingering consumer on its command
    # queue would take the next test's commands.
    thread.join(30)
    console.stop()
    assert not thread.is_alive(), "the agent did not stop"


def test_inventory_on_start_and_domain_events(
    running: Running, libvirt_rw: libvirt.virConnect
) -> None:
    got = running.got
    start = wait_for("the start inventory", lambda: got.inventories("start"))[0]
    assert start.libvirt_connected
    assert start.host.nova_host == "testhost"
    assert start.host.hypervisor_type == "TEST"
    names = {d.name: d for d in start.domains}
    assert names["test"].state == "running"
    assert names["test"].stats["state.state"] == 1

    dom = libvirt_rw.defineXML(VNC_DOMAIN)
    try:
        dom.create()
        ev = wait_for(
            "a started event",
            lambda: [
                m
                for m in got.of("event")
                if m.body["name"] == "agent-test-vnc" and m.body["detail"] == "started"
            ],
        )[0]
        assert ev.body["event"] == "lifecycle"
        assert ev.body["reason"] == "booted"
        assert ev.body["state"] == "running booted"
        # The change coalesces into one inventory that holds the new domain.
        changed = wait_for(
            "an inventory with the new domain",
            lambda: [
                i
                for i in got.inventories("change")
                if any(d.name == "agent-test-vnc" and d.state == "running" for d in i.domains)
            ],
        )[-1]
        vnc_dom = next(d for d in changed.domains if d.name == "agent-test-vnc")
        assert vnc_dom.nova is not None
        assert (vnc_dom.nova.display_name, vnc_dom.nova.flavor) == ("web-1", "m1.tiny")
        assert (vnc_dom.nova.project_name, vnc_dom.nova.user_id) == ("demo", "u-1")
        assert vnc_dom.vnc() is not None
        assert (vnc_dom.graphics[0].listen, vnc_dom.graphics[0].port) == ("127.0.0.1", 5905)
        assert (vnc_dom.serials[0].type, vnc_dom.serials[0].port) == ("tcp", 10000)
        assert (vnc_dom.disks[0].target, vnc_dom.disks[0].driver_type) == ("vda", "qcow2")

        # The console's commands: read-only ones work.
        console = running.console
        target = console.request("testhost", "vnc_target", {"name": "agent-test-vnc"})
        assert target.ok, target.error
        assert target.result == {
            "uuid": "0b7c3e4a-5f0e-4c1e-9d43-6a1f00000001",
            "name": "agent-test-vnc",
            "listen": "127.0.0.1",
            "address": "127.0.0.1",
            "port": 5905,
        }
        xml = console.request("testhost", "domain_xml", {"uuid": dom.UUIDString()})
        assert xml.ok
        assert xml.result is not None
        assert "nova:instance" in xml.result["xml"]

        dom.destroy()
        stopped = wait_for(
            "a stopped event",
            lambda: [
                m
                for m in got.of("event")
                if m.body["name"] == "agent-test-vnc" and m.body["detail"] == "stopped"
            ],
        )[0]
        assert stopped.body["reason"] == "destroyed"
        assert stopped.body["state"] == "shut off destroyed"
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    wait_for(
        "an undefined event",
        lambda: [m for m in got.of("event") if m.body["detail"] == "undefined"],
    )
    hb = wait_for("a heartbeat", lambda: got.of("heartbeat"))[-1]
    assert hb.body["libvirt_connected"] is True
    assert {s["name"] for s in hb.body["services"]} == {"nova-compute", "libvirtd"}


@pytest.mark.parametrize(
    "running",
    [{"extra": 'nova_compute_log = "nova-compute.log"\n'}],
    indirect=True,
)
def test_read_only_commands(running: Running, tmp_path: Path) -> None:
    (tmp_path / "nova-compute.log").write_text(
        "2026-12-01 10:00:00.000 42 INFO nova.compute.manager [-] fine\n"
        "2026-12-01 10:00:01.000 42 ERROR nova.compute.manager [-] Instance failed\n"
    )
    console = running.console
    inv = console.request("testhost", "inventory")
    assert inv.ok
    assert inv.result is not None
    body = parse_body("inventory", inv.result["inventory"])
    assert body.cause == "request"
    assert body.errors == [
        "2026-12-01 10:00:01.000 42 ERROR nova.compute.manager [-] Instance failed"
    ]
    # ...and the same inventory went out on the bus (inventory on request).
    wait_for("the requested inventory on the bus", lambda: running.got.inventories("request"))
    tail = console.request("testhost", "log_tail", {"service": "nova-compute", "lines": 1})
    assert tail.ok
    assert tail.result is not None
    assert tail.result["lines"] == [
        "2026-12-01 10:00:01.000 42 ERROR nova.compute.manager [-] Instance failed"
    ]
    nolog = console.request("testhost", "log_tail", {"service": "sshd"})
    assert not nolog.ok
    assert "no log configured for 'sshd'" in (nolog.error or "")
    stats = console.request("testhost", "stats")
    assert stats.ok
    assert stats.result is not None
    assert stats.result["stats"]["6695eb01-f6a4-8304-79aa-97f2502e193f"]["state.state"] == 1
    shot = console.request("testhost", "screenshot", {"name": "test"})
    assert shot.ok, shot.error
    assert shot.result is not None
    data = base64.b64decode(shot.result["data"])
    assert len(data) == shot.result["size"] > 0
    assert data[:2] in (b"P6", b"\x89P")  # PPM or PNG, as libvirt hands it over


def test_unknown_and_not_enabled_commands_are_refused(
    running: Running, libvirt_rw: libvirt.virConnect, caplog: pytest.LogCaptureFixture
) -> None:
    console = running.console
    with caplog.at_level(logging.WARNING, logger="novaconsole.agent"):
        unknown = console.request("testhost", "rm_rf", {"path": "/"})
        refused = console.request("testhost", "destroy_unknown_domain", {"name": "test"})
    assert not unknown.ok
    assert unknown.error == "unknown command 'rm_rf'"
    assert not refused.ok
    assert "not enabled on this agent" in (refused.error or "")
    # Not acted on: the domain still runs.
    assert libvirt_rw.lookupByName("test").state()[0] == libvirt.VIR_DOMAIN_RUNNING
    lines = [r.getMessage() for r in caplog.records]
    assert any("unknown command 'rm_rf' (key console)" in line for line in lines)
    assert any(
        "destroy_unknown_domain is not enabled on this agent (key console)" in line
        for line in lines
    )


@pytest.mark.parametrize(
    "running", [{"allowed": ["inventory", "destroy_unknown_domain"]}], indirect=True
)
def test_mutating_command_when_enabled_is_audited(
    running: Running, libvirt_rw: libvirt.virConnect, caplog: pytest.LogCaptureFixture
) -> None:
    assert running.agent.hypervisor.read_write
    dom = libvirt_rw.defineXML(VNC_DOMAIN.replace("agent-test-vnc", "agent-test-nova"))
    plain = libvirt_rw.defineXML(
        VNC_DOMAIN.replace("agent-test-vnc", "agent-test-plain")
        .replace("00000001", "00000002")
        .split("<metadata>")[0]
        + "<devices/></domain>"
    )
    try:
        dom.create()
        plain.create()
        console = running.console
        with caplog.at_level(logging.WARNING, logger="novaconsole.agent"):
            nova = console.request(
                "testhost", "destroy_unknown_domain", {"name": "agent-test-nova"}
            )
            gone = console.request(
                "testhost", "destroy_unknown_domain", {"name": "agent-test-plain"}
            )
        assert not nova.ok
        assert "carries Nova's metadata" in (nova.error or "")
        assert dom.isActive()
        assert gone.ok, gone.error
        assert not plain.isActive()
        audit = [r.getMessage() for r in caplog.records if "AUDIT" in r.getMessage()]
        assert any(
            "destroy_unknown_domain name=agent-test-plain requested (key console" in a
            for a in audit
        )
        assert any("destroy_unknown_domain done (key console)" in a for a in audit)
        assert any("refused" in a for a in audit)
    finally:
        for d in (dom, plain):
            if d.isActive():
                d.destroy()
            d.undefine()


def _publish_raw(vhost: str, host: str, *bodies: bytes) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", virtual_host=vhost))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for body in bodies:
            ch.basic_publish(EXCHANGE_COMMANDS, host, body, mandatory=True)
    finally:
        conn.close()


def _command(key: SigningKey, host: str = "testhost", **kw: object) -> bytes:
    body = CommandRequest(command="destroy_unknown_domain", args={"name": "test"}).to_dict()
    data, _ = seal(key, "command", host, body, **kw)  # type: ignore[arg-type]
    return data


@pytest.mark.parametrize(
    "running", [{"allowed": ["inventory", "destroy_unknown_domain"]}], indirect=True
)
@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unsigned", "unsigned"),
        ("forged", "bad-signature"),
        ("wrong-key", "unknown-key"),
        ("impostor", "bad-signature"),
        ("expired", "expired"),
        ("replayed", "replayed"),
        ("wrong-host", "wrong-host"),
        ("unknown-kind", "unknown-kind"),
    ],
)
def test_bad_commands_are_rejected_logged_and_not_acted_on(
    running: Running,
    agent_keys: AgentKeys,
    bus_vhost: str,
    libvirt_rw: libvirt.virConnect,
    caplog: pytest.LogCaptureFixture,
    case: str,
    reason: str,
) -> None:
    """An agent that *has* enabled a mutating command still refuses it when the envelope
    is bad: the domain 'test' keeps running."""
    console_key = SigningKey.load(agent_keys.console_key)
    plain = libvirt_rw.defineXML(
        VNC_DOMAIN.replace("agent-test-vnc", "agent-test-victim")
        .replace("00000001", "00000003")
        .split("<metadata>")[0]
        + "<devices/></domain>"
    )
    plain.create()
    try:
        good = CommandRequest(command="destroy_unknown_domain", args={"name": "agent-test-victim"})
        valid, _ = seal(console_key, "command", "testhost", good.to_dict())
        if case == "unsigned":
            outer = json.loads(valid)
            outer["signatures"] = []
            bodies = [json.dumps(outer).encode()]
        elif case == "forged":
            outer = json.loads(valid)
            payload = json.loads(base64.b64decode(outer["payload"]))
            payload["body"]["args"]["name"] = "test"
            outer["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
            bodies = [json.dumps(outer).encode()]
        elif case == "wrong-key":
            bodies = [_command(SigningKey.generate("mallory"))]
        elif case == "impostor":
            # The agent's own key names itself "console": still not the console's key.
            bodies = [_command(SigningKey.generate("console"))]
        elif case == "expired":
            bodies = [_command(console_key, ts=1_000_000.0)]
        elif case == "replayed":
            # The same signed bytes twice: the first runs (on the victim), the second not.
            bodies = [valid, valid]
        elif case == "wrong-host":
            # Signed for another host, delivered to this agent's queue.
            bodies = [_command(console_key, host="otherhost")]
        else:
            bodies = [
                seal_payload(
                    console_key,
                    {
                        "v": 1,
                        "kind": "selfdestruct",
                        "host": "testhost",
                        "sender": "console",
                        "ts": 2e9,
                        "nonce": "n",
                        "id": "i",
                        "body": {},
                    },
                )
            ]
        before = running.agent.bus.rejected
        executed = running.agent.bus.executed
        with caplog.at_level(logging.WARNING):
            _publish_raw(bus_vhost, "testhost", *bodies)
            try:
                wait_for("the rejection", lambda: running.agent.bus.rejected > before)
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}; log: {[r.getMessage() for r in caplog.records]}"
                ) from None
        lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
        assert any(line.startswith(f"command rejected: {reason}") for line in lines), lines
        assert libvirt_rw.lookupByName("test").state()[0] == libvirt.VIR_DOMAIN_RUNNING, lines
        if case == "replayed":
            assert running.agent.bus.executed == executed + 1
            assert not plain.isActive()  # the first, valid one did run
        else:
            assert running.agent.bus.executed == executed, lines
            assert plain.isActive(), lines
    finally:
        if plain.isActive():
            plain.destroy()
        plain.undefine()


def test_broker_drop_reconnects_resyncs_and_runs_no_command_twice(
    running: Running, bus_vhost: str
) -> None:
    got = running.got
    wait_for("the start inventory", lambda: got.inventories("start"))
    assert running.console.request("testhost", "stats").ok
    executed = running.agent.bus.executed
    rabbitmqctl("close_all_connections", "--vhost", bus_vhost, "test: broker drop")
    wait_for("a resync inventory", lambda: got.inventories("resync"), timeout=30)
    assert running.agent.bus.connects >= 2
    wait_for("console reconnected", lambda: running.console.connected.is_set())
    assert running.console.request("testhost", "stats").ok
    assert running.agent.bus.executed == executed + 1


def test_libvirt_connection_lost_reconnects_and_resyncs(running: Running) -> None:
    got = running.got
    wait_for("the start inventory", lambda: got.inventories("start"))
    conn = running.agent.hypervisor.conn
    assert conn is not None
    # What libvirt's close callback reports for a remote connection; a local driver has
    # none, so the agent also checks isAlive every heartbeat. Here: the callback path.
    running.agent.hypervisor.events.put("closed:eof")
    resync = wait_for("a resync inventory", lambda: got.inventories("resync"), timeout=30)[0]
    assert resync.libvirt_connected
    assert running.agent.hypervisor.conn is not None
    assert running.agent.hypervisor.conn is not conn


def test_command_journal_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "commands.jsonl"
    journal = CommandJournal(path)
    request = CommandRequest(command="restart_service", correlation_id="c1")
    journal.start("id-1", request)
    # Killed here (SIGKILL mid-command): a new agent must not run id-1 again.
    again = CommandJournal(path)
    state, reply = again.state("id-1")
    assert state == "done"
    assert reply is not None
    assert not reply.ok
    assert "not run again" in (reply.error or "")
    assert reply.correlation_id == "c1"


@pytest.fixture
def private_libvirtd() -> Iterator[Callable[[], tuple[subprocess.Popen[bytes], str]]]:
    """A libvirtd of the test's own, as ``nobody`` in session mode (its own sockets and
    state under tmp_path), so it can be stopped and started again without touching the
    lab's. Its test driver is reached remotely: a real connection with keepalive and a
    close callback. Yields a function that (re)starts it."""
    if os.geteuid() != 0 or shutil.which("libvirtd") is None:
        pytest.skip("needs root and libvirtd")
    # Not under tmp_path: pytest's base directory is root's own (0700), which nobody
    # cannot enter.
    root = Path(tempfile.mkdtemp(prefix="agent-test-libvirtd-"))
    for sub in ("run", "home"):
        (root / sub).mkdir(parents=True)
    shutil.chown(root, "nobody")
    for sub in ("run", "home"):
        shutil.chown(root / sub, "nobody")
    procs: list[subprocess.Popen[bytes]] = []
    socket_path = root / "run" / "libvirt" / "libvirt-sock"

    def start() -> tuple[subprocess.Popen[bytes], str]:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(root / "home"),
            "XDG_RUNTIME_DIR": str(root / "run"),
            "XDG_CONFIG_HOME": str(root / "home" / ".config"),
            "XDG_CACHE_HOME": str(root / "home" / ".cache"),
        }
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        proc = subprocess.Popen(
            [
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "libvirtd",
                "--timeout",
                "0",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        wait_for("the private libvirtd's socket", socket_path.exists)
        return proc, f"test+unix:///default?socket={socket_path}"

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    shutil.rmtree(root, ignore_errors=True)


def test_libvirtd_restart_reconnects_and_resyncs(
    tmp_path: Path,
    bus_vhost: str,
    agent_keys: AgentKeys,
    private_libvirtd: Callable[[], tuple[subprocess.Popen[bytes], str]],
) -> None:
    daemon, uri = private_libvirtd()
    got = Recorder()
    console = ConsoleBus(console_settings(tmp_path, bus_vhost, agent_keys))
    console.start(got)
    agent, thread = start_agent(tmp_path, bus_vhost, agent_keys, uri=uri)
    try:
        wait_for("the start inventory", lambda: got.inventories("start"))
        daemon.terminate()
        daemon.wait(15)
        wait_for(
            "a heartbeat saying libvirt is down",
            lambda: [m for m in got.of("heartbeat") if not m.body["libvirt_connected"]],
        )
        private_libvirtd()
        resync = wait_for(
            "a resync inventory",
            lambda: [i for i in got.inventories("resync") if i.libvirt_connected],
            timeout=90,
        )[0]
        assert [d.name for d in resync.domains] == ["test"]
        # Callbacks are registered again on the new connection: a new domain is an event.
        conn = libvirt.open(uri)
        try:
            dom = conn.defineXML(VNC_DOMAIN)
            wait_for(
                "a defined event after the reconnect",
                lambda: [
                    m
                    for m in got.of("event")
                    if m.body["name"] == "agent-test-vnc" and m.body["detail"] == "defined"
                ],
            )
            dom.undefine()
        finally:
            conn.close()
    finally:
        agent.stop()
        thread.join(10)
        console.stop()


def test_host_facts_ask_libvirt_for_capabilities_once_per_connection() -> None:
    """``getCapabilities``/``getVersion`` took 12-40 s a call on the lab's libvirtd (it
    re-probes QEMU when its cache is not valid), and every inventory waited for them
    while the events behind it queued: they are read once per connection."""
    from novaconsole_agent.hypervisor import Hypervisor

    hypervisor = Hypervisor("test:///default")
    hypervisor.connect()
    try:
        first = hypervisor.host_facts("vm")
        assert hypervisor.conn is not None
        calls: list[str] = []

        def refuse(name: str) -> Callable[..., object]:
            def call(*_args: object) -> object:
                calls.append(name)
                raise AssertionError(f"{name} asked again on the same connection")

            return call

        for name in ("getCapabilities", "getVersion"):
            setattr(hypervisor.conn, name, refuse(name))
        assert hypervisor.host_facts("vm") == first
        assert calls == []
        hypervisor.connect()  # a new connection (libvirtd restarted): asked again
        assert hypervisor.host_facts("vm") == first
    finally:
        hypervisor.close()
