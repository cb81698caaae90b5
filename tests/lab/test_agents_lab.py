"""``novaconsole drift`` and verify's ``compute-agents`` against the lab's real Nova.

A server is booted on the lab; an AgentBus for the lab's compute host (``vm``) on a vhost
of the test's own publishes real signed messages with an inventory built from Nova's own
list, leaving the booted server's domain out. ``drift`` must then report exactly that
server as missing on the hypervisor, and verify must see the agent live. (No libvirt is
read: the agent daemon itself is tested elsewhere; this is the console side.)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentbus_kit import BusKit, bus_vhost, make_kit, wait_for
from labtools import run_novaconsole

from novaconsole.agentbus import (
    CommandReply,
    CommandRequest,
    Domain,
    Heartbeat,
    HostFacts,
    Inventory,
    Message,
    ServiceStatus,
)
from novaconsole.agentbus.bus import AgentBus, ConsoleBus

pytestmark = pytest.mark.lab

#: libvirt's state for a server Nova sees as settled in this status.
DOMAIN_STATE = {"ACTIVE": "running", "SHUTOFF": "shut off", "PAUSED": "paused"}


def refuse(message: Message, request: CommandRequest) -> CommandReply:
    return CommandReply(correlation_id="", ok=False, error="no commands in this test")


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
def lab_server(lab_cloud: str) -> Iterator[tuple[Any, Any]]:
    import openstack

    conn = openstack.connect(cloud=lab_cloud)
    image, flavor = _pick_image_and_flavor(conn)
    server = conn.compute.create_server(
        name=f"agentui-drift-{uuid.uuid4().hex[:8]}",
        image_id=image.id,
        flavor_id=flavor.id,
        networks="none",
    )
    try:
        try:
            # A readiness wait (boot on this host takes seconds), not a speed assertion.
            server = conn.compute.wait_for_server(
                server, status="ACTIVE", failures=["ERROR"], interval=1, wait=600
            )
        except openstack.exceptions.ResourceFailure:
            fault = conn.compute.get_server(server).fault or {}
            pytest.fail(f"server went to ERROR: {fault.get('message', 'no fault recorded')}")
        yield conn, server
    finally:
        conn.compute.delete_server(server, ignore_missing=True)
        conn.compute.wait_for_delete(server, interval=1, wait=600)
        conn.close()


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[BusKit]:
    with bus_vhost() as vhost:
        yield make_kit(tmp_path / "bus", vhost, ["vm"])


def _inventory_without(conn: Any, host: str, left_out: str) -> Inventory:
    """Every settled server Nova places on ``host`` as a domain, except ``left_out``."""
    body = conn.compute.get(
        "/servers/detail", params={"all_tenants": "True"}, microversion="2.69"
    ).json()
    domains = [
        Domain(s["id"], s.get("OS-EXT-SRV-ATTR:instance_name") or "", DOMAIN_STATE[s["status"]])
        for s in body["servers"]
        if s.get("OS-EXT-SRV-ATTR:host") == host
        and s["id"] != left_out
        and s["status"] in DOMAIN_STATE
        and not s.get("OS-EXT-STS:task_state")
    ]
    return Inventory(
        host=HostFacts(hostname=host, nova_host=host),
        domains=domains,
        services=[ServiceStatus("nova-compute", True)],
    )


def test_drift_finds_the_domain_missing_from_the_inventory(
    lab_server: tuple[Any, Any], lab_cloud: str, kit: BusKit
) -> None:
    conn, server = lab_server
    host = conn.compute.get_server(server).compute_host
    assert host == "vm", f"the lab's compute host is vm, Nova placed the server on {host}"
    agent = AgentBus(kit.agent_settings("vm"), "vm", refuse)
    agent.start()
    try:
        assert agent.connected.wait(10), "agent bus did not connect"
        agent.publish_heartbeat(Heartbeat("lab-test", 0.0, 10.0, True, "qemu:///system", 0))
        agent.publish_inventory(_inventory_without(conn, "vm", server.id))

        def published() -> bool:
            with ConsoleBus(kit.console_settings()) as bus:
                bus.start(wait=10)
                latest = bus.latest(timeout=10).get("vm")
            return latest is not None and latest.inventory is not None

        wait_for("the agent's inventory on the broker", published)
        proc = run_novaconsole(
            "--os-cloud", lab_cloud, "drift", "-f", "json", env=kit.env(), timeout=120
        )
        assert proc.returncode == 1, proc.stderr
        report = json.loads(proc.stdout)
        assert report["checked_hosts"] == ["vm"]
        mine = [f for f in report["findings"] if f["server_id"] == server.id]
        assert [(f["kind"], f["host"], f["hypervisor"]) for f in mine] == [
            ("missing-on-hypervisor", "vm", "(no domain)")
        ]
        assert "NOSTATE" in mine[0]["nova_action"]
        assert "_sync_power_states" in mine[0]["when"]

        proc = run_novaconsole("--os-cloud", lab_cloud, "verify", "-f", "json", env=kit.env())
        checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
        assert checks["compute-agents"]["ok"], checks["compute-agents"]
        assert checks["compute-agents"]["facts"]["live"] == ["vm"]
    finally:
        agent.stop()


def test_drift_finds_a_deleted_server_still_running(lab_cloud: str, kit: BusKit) -> None:
    """Nova's own deleted list (``deleted=True``, admins): a domain of one is reap-able."""
    import openstack

    conn = openstack.connect(cloud=lab_cloud)
    try:
        body = conn.compute.get(
            "/servers/detail",
            params={"all_tenants": "True", "deleted": "True", "limit": 1},
            microversion="2.69",
        ).json()
    finally:
        conn.close()
    if not body["servers"]:
        pytest.skip("the lab has no deleted (unarchived) server to pretend is still running")
    gone = body["servers"][0]
    agent = AgentBus(kit.agent_settings("vm"), "vm", refuse)
    agent.start()
    try:
        assert agent.connected.wait(10), "agent bus did not connect"
        agent.publish_heartbeat(Heartbeat("lab-test", 0.0, 10.0, True, "qemu:///system", 1))
        agent.publish_inventory(
            Inventory(
                host=HostFacts(hostname="vm", nova_host="vm"),
                domains=[Domain(gone["id"], "instance-deleted", "running", "booted")],
            )
        )

        def published() -> bool:
            with ConsoleBus(kit.console_settings()) as bus:
                bus.start(wait=10)
                latest = bus.latest(timeout=10).get("vm")
            return latest is not None and latest.inventory is not None

        wait_for("the agent's inventory on the broker", published)
        proc = run_novaconsole(
            "--os-cloud", lab_cloud, "drift", "-f", "json", env=kit.env(), timeout=120
        )
        assert proc.returncode == 1, proc.stderr
        report = json.loads(proc.stdout)
        mine = [f for f in report["findings"] if f["server_id"] == gone["id"]]
        assert [f["kind"] for f in mine] == ["deleted-but-running"]
        assert mine[0]["nova"].startswith("DELETED/deleted")
        assert mine[0]["nova_action"].startswith("reap")
        assert "_cleanup_running_deleted_instances" in mine[0]["when"]
    finally:
        agent.stop()
