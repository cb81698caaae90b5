"""``novaconsole drift`` and verify's ``compute-agents`` against the lab's real Nova.

A server is booted on the lab; an AgentBus for the lab's compute host (``vm``) on a vhost
of the test's own publishes real signed messages with an inventory built from Nova's own
list, leaving the booted server's domain out. ``drift`` must then report exactly that
server as missing on the hypervisor, and verify must see the agent live. (No libvirt is
read: the agent daemon itself is tested elsewhere; this is the console side.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentbus_kit import BusKit, bus_vhost, make_kit, wait_for
from labtools import boot_lab_server, run_novaconsole

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


@pytest.fixture(scope="module")
def lab_server(lab_cloud: str) -> Iterator[tuple[Any, Any]]:
    with boot_lab_server(lab_cloud, "agentui-drift") as booted:
        yield booted.conn, booted.server


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
            params={"all_tenants": "True", "deleted": "True", "host": "vm", "limit": 1},
            microversion="2.69",
        ).json()
    finally:
        conn.close()
    # One that was deleted on this host: a deleted server of another node (the nodes
    # tests' nc-compute2) running here is rightly "unknown" to drift, not reap-able.
    here = [s for s in body["servers"] if s.get("OS-EXT-SRV-ATTR:host") == "vm"]
    if not here:
        pytest.skip("the lab has no server deleted on host vm to pretend is still running")
    gone = here[0]
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
