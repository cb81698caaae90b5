"""The agent on the lab's hypervisor (``qemu:///system``, the lab's libvirtd), over the real
broker: what it reports agrees with ``virsh``, and a guest destroyed behind Nova's back
is an event on the bus.

A server of this test's own (``agent-test-...``) is booted if needed and deleted after;
other guests on the shared lab are only looked at, never touched.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agenttools import AgentKeys, agent_toml, console_settings, wait_for

from novaconsole.agentbus import Inventory, Message, parse_body
from novaconsole.agentbus.bus import ConsoleBus
from novaconsole.lab.config import LabConfig

pytestmark = pytest.mark.lab

URI = "qemu:///system"


def virsh(*args: str) -> str:
    return subprocess.run(
        ["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=60, check=True
    ).stdout


def virsh_domains() -> dict[str, tuple[str, str]]:
    """uuid -> (name, state) from ``virsh list --all``."""
    names = virsh("list", "--all", "--name").split()
    out = {}
    for name in names:
        dom_uuid = virsh("domuuid", name).strip()
        out[dom_uuid] = (name, virsh("domstate", name).strip())
    return out


def virsh_domstats() -> dict[str, dict[str, str]]:
    """name -> {key: value} from ``virsh domstats --raw``."""
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in virsh("domstats", "--raw").splitlines():
        m = re.match(r"^Domain: '(.+)'$", line.strip())
        if m:
            current = out.setdefault(m.group(1), {})
        elif "=" in line:
            key, value = line.strip().split("=", 1)
            current[key] = value
    return out


class Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.lock = threading.Lock()

    def __call__(self, message: Message) -> None:
        with self.lock:
            self.messages.append(message)

    def events(self) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m.kind == "event"]

    def inventories(self) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m.kind == "inventory"]


def _pick_image_and_flavor(conn: Any) -> tuple[Any, Any]:
    images = [i for i in conn.image.images() if i.status == "active"]
    assert images, "the lab has no active image"
    image = min(images, key=lambda i: i.size or 0)
    fits = [
        f
        for f in conn.compute.flavors()
        if f.ram >= (image.min_ram or 0) and (f.disk == 0 or f.disk >= (image.min_disk or 0))
    ]
    assert fits, f"no flavor fits image {image.name!r}"
    return image, min(fits, key=lambda f: (f.ram, f.vcpus, f.disk))


@pytest.fixture(scope="module")
def lab_server(lab_cloud: str) -> Iterator[Any]:
    """A server of this module's own, ACTIVE; deleted afterwards."""
    import openstack

    conn = openstack.connect(cloud=lab_cloud)
    image, flavor = _pick_image_and_flavor(conn)
    server = conn.compute.create_server(
        name=f"agent-test-{uuid.uuid4().hex[:8]}",
        image_id=image.id,
        flavor_id=flavor.id,
        networks="none",
    )
    try:
        try:
            server = conn.compute.wait_for_server(
                server, status="ACTIVE", failures=["ERROR"], interval=1, wait=600
            )
        except openstack.exceptions.ResourceFailure:
            fault = conn.compute.get_server(server).fault or {}
            pytest.fail(f"server went to ERROR: {fault.get('message', 'no fault recorded')}")
        yield server
    finally:
        conn.compute.delete_server(server, ignore_missing=True)
        conn.compute.wait_for_delete(server, interval=1, wait=600)
        conn.close()


@pytest.fixture
def lab_agent(
    tmp_path: Path,
    bus_vhost: str,
    agent_keys: AgentKeys,
    lab_state: LabConfig,
) -> Iterator[tuple[ConsoleBus, Recorder, str]]:
    """The agent daemon on the lab's libvirtd (read-only), and a console listening."""
    nova_log = lab_state.state_dir / "services" / "logs" / "nova-compute.log"
    config = tmp_path / "agent.toml"
    config.write_text(
        agent_toml(
            bus_vhost,
            agent_keys,
            uri=URI,
            heartbeat=2.0,
            extra=f'nova_compute_log = "{nova_log}"\n',
        )
    )
    got = Recorder()
    bus = ConsoleBus(console_settings(tmp_path, bus_vhost, agent_keys))
    bus.start(got)
    proc = subprocess.Popen(
        [sys.executable, "-m", "novaconsole", "--plugin", "compute-agent", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for("the agent's start inventory", got.inventories, timeout=60)
        yield bus, got, agent_keys.host
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
        bus.stop()
    assert proc.returncode == 0, err[-2000:]
    assert "read-only" in err


def _stable_inventory(bus: ConsoleBus, host: str) -> tuple[Inventory, dict[str, tuple[str, str]]]:
    """The agent's inventory and virsh's list, taken while the list did not change (other
    helpers boot and delete servers on the shared lab)."""
    for _ in range(10):
        before = virsh_domains()
        reply = bus.request(host, "inventory", timeout=30)
        after = virsh_domains()
        assert reply.ok, reply.error
        assert reply.result is not None
        if before == after:
            return parse_body("inventory", reply.result["inventory"]), after
    raise AssertionError("virsh list kept changing under the test")


def test_inventory_agrees_with_virsh(
    lab_server: Any, lab_agent: tuple[ConsoleBus, Recorder, str]
) -> None:
    bus, _got, host = lab_agent
    inventory, listed = _stable_inventory(bus, host)
    reported = {d.uuid: (d.name, d.state) for d in inventory.domains}
    assert reported == listed
    assert lab_server.id in reported
    mine = next(d for d in inventory.domains if d.uuid == lab_server.id)
    assert mine.nova is not None
    assert mine.nova.display_name == lab_server.name
    assert mine.nova.flavor == lab_server.flavor["original_name"]
    assert mine.vnc() is not None
    assert inventory.host.libvirt_version
    assert {s.name: s.running for s in inventory.services} == {
        "nova-compute": True,
        "libvirtd": True,
    }
    # Stats that do not move between two reads: compared with virsh domstats.
    stats = virsh_domstats()
    for domain in inventory.domains:
        theirs = stats[domain.name]
        for key in ("state.state", "vcpu.current", "vcpu.maximum", "block.count", "net.count"):
            if key in theirs:
                assert str(domain.stats.get(key)) == theirs[key], (domain.name, key)
        if "balloon.maximum" in theirs:
            assert str(domain.stats.get("balloon.maximum")) == theirs["balloon.maximum"]


def test_virsh_destroy_is_a_lifecycle_event(
    lab_server: Any, lab_agent: tuple[ConsoleBus, Recorder, str]
) -> None:
    _bus, got, _host = lab_agent
    name = lab_server.instance_name
    virsh("destroy", name)
    event = wait_for(
        "the stopped event of the destroyed guest",
        lambda: [
            m
            for m in got.events()
            if m.body["uuid"] == lab_server.id and m.body["detail"] == "stopped"
        ],
        timeout=30,
    )[0]
    assert event.body["reason"] == "destroyed"
    assert event.body["state"] == "shut off destroyed"
    assert event.host == _host
    change = wait_for(
        "an inventory with the guest shut off",
        lambda: [
            m
            for m in got.inventories()
            if any(
                d["uuid"] == lab_server.id and d["state"] == "shut off" for d in m.body["domains"]
            )
        ],
        timeout=30,
    )
    assert change


def test_lab_libvirtd_restart_is_reconnected_and_resynced(
    lab_server: Any,
    lab_agent: tuple[ConsoleBus, Recorder, str],
    lab_state: LabConfig,
    lab_cloud: str,
) -> None:
    # The lab's own libvirtd (QEMU driver, the keeper's program) restarted under the agent
    # and under nova-compute, as an operator's package upgrade does. Guests keep running
    # (QEMU outlives libvirtd); the agent reconnects and resyncs, and Nova still sees the host.
    import openstack

    from novaconsole.lab.runner import keeper_for

    bus, got, host = lab_agent
    before = len(got.inventories())
    keeper = keeper_for(lab_state)
    keeper.apply(restart=["libvirtd"])
    keeper.wait_running(["libvirtd"], timeout=60)
    resync = wait_for(
        "a resync inventory after libvirtd's restart",
        lambda: [
            m
            for m in got.inventories()[before:]
            if m.body.get("cause") == "resync" and m.body["libvirt_connected"]
        ],
        timeout=90,
    )[0]
    # The guest is as virsh says (running, or shut off if the destroy test ran first).
    domains = {d["uuid"]: d["state"] for d in resync.body["domains"]}
    assert domains.get(lab_server.id) == virsh("domstate", lab_server.instance_name).strip()
    inventory, listed = _stable_inventory(bus, host)
    assert {d.uuid: (d.name, d.state) for d in inventory.domains} == listed
    # nova-compute reconnected too: its service stays up and it still reports the guest.
    conn = openstack.connect(cloud=lab_cloud)
    try:
        wait_for(
            "nova-compute up after libvirtd's restart",
            lambda: [
                s
                for s in conn.compute.services(binary="nova-compute")
                if s.state == "up" and s.status == "enabled"
            ],
            timeout=90,
        )
        # And it still answers for the guest (the power state comes from the driver).
        server = conn.compute.get_server(lab_server.id)
        assert server.status in ("ACTIVE", "SHUTOFF"), server.status
        assert server.compute_host == lab_server.compute_host
    finally:
        conn.close()
