"""A second compute node (``lab up --computes 2``) and servers moving between the nodes.

Node 2 (``nc-compute2``) is a host of its own on this machine: its own host name, libvirtd
and nova-compute. Its compute service stays **disabled** between tests (other lab tests
expect their servers on the machine's own node, ``vm``); each test here enables it while
it runs and disables it again in a ``finally``. Servers are named ``nodes-...`` and deleted.

Every move is judged by Nova's ``OS-EXT-SRV-ATTR:host`` changing and by libvirt on each
node: the guest runs on the destination's libvirtd, and the source's no longer has it.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labtools import run_novaconsole

from novaconsole.cells import host_mapping
from novaconsole.dburl import connection_url
from novaconsole.lab.config import LabConfig, load_or_create_secrets
from novaconsole.lab.nodes import NodeLayout
from novaconsole.lab.runner import lab_site

pytestmark = pytest.mark.lab

NODE2 = "nc-compute2"
HOST_URI = "qemu:///system"


def virsh(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=60, check=False
    )


def domain_state(uri: str, name: str) -> str | None:
    """``virsh domstate`` of ``name`` at ``uri`` ("running", "shut off"), None if absent."""
    proc = virsh(uri, "domstate", name)
    return proc.stdout.strip() if proc.returncode == 0 else None


def node1_host(conn: Any) -> str:
    """The machine's own compute host (the lab's node 1)."""
    hosts = [s.host for s in conn.compute.services(binary="nova-compute") if s.host != NODE2]
    assert len(hosts) == 1, hosts
    return str(hosts[0])


@pytest.fixture(scope="module")
def node2(lab_state: LabConfig) -> Iterator[NodeLayout]:
    """The lab with a second compute node (brought up here unless the lab is used as is),
    and back to one node afterwards: the tests after these expect the one-node lab."""
    import os

    import openstack

    layout = NodeLayout.of(lab_state, NODE2)
    conn = openstack.connect(cloud="novaconsole-lab")
    added = False
    try:
        registered = list(conn.compute.services(binary="nova-compute", host=NODE2))
        if not registered or not layout.root.is_dir():
            if os.environ.get("NOVACONSOLE_TEST_LAB_AS_IS") == "1":
                pytest.skip("the lab as it is has one compute node (lab up --computes 2)")
            added = True
            proc = run_novaconsole("lab", "up", "-q", "--computes", "2")
            # Other tests expect their servers on node 1: keep node 2 out of scheduling.
            for service in conn.compute.services(binary="nova-compute", host=NODE2):
                conn.compute.disable_service(service, disabled_reason="nodes tests only")
            assert proc.returncode == 0, "\n".join(proc.stderr.splitlines()[-25:])
        yield layout
    finally:
        conn.close()
        if added:
            proc = run_novaconsole("lab", "up", "-q", "--computes", "1")
            assert proc.returncode == 0, "\n".join(proc.stderr.splitlines()[-25:])
            # The retired node's agent is trusted no more and has no broker user left.
            assert not (lab_state.state_dir / "bus" / "agent-keys" / f"{NODE2}.pub").exists()
            users = subprocess.run(
                ["rabbitmqctl", "-q", "list_users"], capture_output=True, text=True, timeout=60
            ).stdout.split()
            assert f"novaconsole-agent-{NODE2}" not in users


@pytest.fixture
def conn(node2: NodeLayout) -> Iterator[Any]:
    import openstack

    connection = openstack.connect(cloud="novaconsole-lab")
    yield connection
    connection.close()


@contextlib.contextmanager
def node2_enabled(conn: Any) -> Iterator[None]:
    """Node 2 schedulable while the block runs; disabled again whatever happens."""
    conn.compute.enable_service(None, host=NODE2, binary="nova-compute")
    try:
        yield
    finally:
        conn.compute.disable_service(
            None, host=NODE2, binary="nova-compute", disabled_reason="nodes tests only"
        )


@contextlib.contextmanager
def server_on(conn: Any, host: str | None = None) -> Iterator[Any]:
    """A running test server (on ``host`` when given: admin, microversion 2.74)."""
    image = conn.image.find_image("novaconsole-test-raw")
    flavor = conn.compute.find_flavor("nc.tiny")
    assert image is not None
    assert flavor is not None
    attrs: dict[str, Any] = {
        "name": f"nodes-{uuid.uuid4().hex[:8]}",
        "image_id": image.id,
        "flavor_id": flavor.id,
        "networks": "none",
    }
    if host is not None:
        attrs["host"] = host
    server = conn.compute.create_server(**attrs)
    try:
        server = conn.compute.wait_for_server(
            server, status="ACTIVE", failures=["ERROR"], interval=1, wait=300
        )
        yield server
    finally:
        conn.compute.delete_server(server, ignore_missing=True)
        conn.compute.wait_for_delete(server, interval=1, wait=300)


def wait_for(conn: Any, server: Any, status: str, wait: float = 300) -> Any:
    return conn.compute.wait_for_server(
        server, status=status, failures=["ERROR"], interval=1, wait=wait
    )


def assert_runs_only_on(server: Any, running_uri: str, gone_uri: str) -> None:
    name = server.instance_name
    assert domain_state(running_uri, name) == "running"
    assert domain_state(gone_uri, name) is None


def test_second_node_is_up_mapped_and_a_host_of_its_own(
    conn: Any, node2: NodeLayout, lab_state: LabConfig
) -> None:
    services = list(conn.compute.services(binary="nova-compute", host=NODE2))
    assert [s.state for s in services] == ["up"]
    site = lab_site(lab_state, load_or_create_secrets(lab_state.secrets_file))
    assert host_mapping(connection_url(site, "nova", "nova_api"), NODE2) == "cell1"
    hypervisors = {h.name for h in conn.compute.hypervisors()}
    assert {NODE2, node1_host(conn)} <= hypervisors
    # Placement knows it under its own name (resource provider names are unique).
    assert [rp.name for rp in conn.placement.resource_providers(name=NODE2)] == [NODE2]
    # Its libvirtd is another daemon than the machine's: own host name and host UUID.
    assert virsh(node2.libvirt_uri, "hostname").stdout.strip() == NODE2
    uuids = {
        uri: virsh(uri, "capabilities").stdout.split("<uuid>")[1].split("</uuid>")[0]
        for uri in (HOST_URI, node2.libvirt_uri)
    }
    assert uuids[HOST_URI] != uuids[node2.libvirt_uri]
    # Its processes live in namespaces of their own (not this test's).
    pid = Path(node2.services_dir / "supervisord.pid").read_text().strip()
    assert Path(f"/proc/{pid}/ns/uts").resolve() != Path("/proc/self/ns/uts").resolve()


def test_second_node_has_a_compute_agent_of_its_own(
    conn: Any, node2: NodeLayout, lab_state: LabConfig
) -> None:
    # Provisioned on the node like nova-compute: its own key (enrolled with the console),
    # broker user and service under the node's keeper, watching the node's libvirtd.
    from novaconsole.agentbus import Inventory, parse_body
    from novaconsole.agentbus.bus import ConsoleBus
    from novaconsole.agentbus.settings import BusSettings

    status = subprocess.run(
        [
            str(lab_state.venvs_dir / "openstack" / "bin" / "supervisorctl"),
            "-c",
            str(node2.services_dir / "supervisord.conf"),
            "status",
            "novaconsole-agent",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "RUNNING" in status.stdout, status.stdout + status.stderr
    assert (lab_state.state_dir / "bus" / "agent-keys" / f"{NODE2}.pub").is_file()
    wanted = sorted(virsh(node2.libvirt_uri, "list", "--all", "--uuid").stdout.split())
    with ConsoleBus(BusSettings.load(lab_state.state_dir / "bus" / "agents.toml")) as bus:
        bus.start(wait=10)
        deadline = time.monotonic() + 60
        while True:
            latest = bus.latest([NODE2], timeout=10).get(NODE2)
            if (latest is not None and latest.inventory is not None) or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert latest is not None, "nothing from the node's agent on the broker"
    assert latest.inventory is not None, "no inventory from the node's agent"
    inventory = parse_body("inventory", latest.inventory.body)
    assert isinstance(inventory, Inventory)
    assert inventory.libvirt_connected
    assert (inventory.host.hostname, inventory.host.nova_host) == (NODE2, NODE2)
    assert sorted(d.uuid for d in inventory.domains) == wanted
    # verify's compute-agents check counts both nodes live.
    proc = run_novaconsole("--os-cloud", "novaconsole-lab", "verify", "-f", "json")
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["compute-agents"]["ok"], checks["compute-agents"]
    assert sorted(checks["compute-agents"]["facts"]["live"]) == sorted([node1_host(conn), NODE2])


def test_live_migration_moves_a_running_guest_and_it_keeps_running(
    conn: Any, node2: NodeLayout
) -> None:
    source = node1_host(conn)
    with server_on(conn) as server:  # node 2 is disabled: the guest starts on node 1
        assert server.compute_host == source
        assert_runs_only_on(server, HOST_URI, node2.libvirt_uri)
        with node2_enabled(conn):
            conn.compute.live_migrate_server(server, host=NODE2, block_migration="auto")
            deadline = time.monotonic() + 300
            while True:
                server = conn.compute.get_server(server.id)
                if server.status == "ACTIVE" and server.compute_host == NODE2:
                    break
                assert server.status in ("ACTIVE", "MIGRATING"), server.status
                assert time.monotonic() < deadline, (server.status, server.compute_host)
                time.sleep(1)
        assert server.power_state == 1  # RUNNING, as Nova sees it
        assert_runs_only_on(server, node2.libvirt_uri, HOST_URI)


def test_cold_migration_moves_the_guest_and_it_runs_there(conn: Any, node2: NodeLayout) -> None:
    source = node1_host(conn)
    with server_on(conn) as server:
        assert server.compute_host == source
        with node2_enabled(conn):
            conn.compute.migrate_server(server, host=NODE2)
            server = wait_for(conn, server, "VERIFY_RESIZE")
            conn.compute.confirm_server_resize(server)
            server = wait_for(conn, server, "ACTIVE")
        assert server.compute_host == NODE2
        assert_runs_only_on(server, node2.libvirt_uri, HOST_URI)


def test_evacuation_from_a_forced_down_node_rebuilds_the_guest_on_node_1(
    conn: Any, node2: NodeLayout, lab_state: LabConfig
) -> None:
    import openstack.exceptions

    from novaconsole.lab.venvs import lab_venvs

    keeper = node2.keeper(lab_venvs(lab_state.venvs_dir)["openstack"].bin)
    target = node1_host(conn)
    with node2_enabled(conn), server_on(conn, host=NODE2) as server:
        assert server.compute_host == NODE2
        assert_runs_only_on(server, node2.libvirt_uri, HOST_URI)
        try:
            # Node 2 fails: its nova-compute stops, and (the operator's fencing, so that
            # two QEMUs never write one shared disk) its guest is powered off.
            keeper.ctl("stop", "nova-compute")
            assert virsh(node2.libvirt_uri, "destroy", server.instance_name).returncode == 0
            conn.compute.update_service_forced_down(None, NODE2, "nova-compute", True)
            conn.compute.evacuate_server(server)
            # Compute API 2.95 and later (openstacksdk asks for it) leave the evacuated
            # server stopped on its new host; the operator starts it when the old host is
            # known to be fenced (Nova 2023.2's release note).
            deadline = time.monotonic() + 300
            while True:
                server = conn.compute.get_server(server.id)
                if server.status == "SHUTOFF" and server.compute_host == target:
                    break
                assert server.status in ("ACTIVE", "REBUILD", "SHUTOFF"), server.status
                assert time.monotonic() < deadline, (server.status, server.compute_host)
                time.sleep(1)
            assert domain_state(HOST_URI, server.instance_name) == "shut off"
            conn.compute.start_server(server)
            server = wait_for(conn, server, "ACTIVE")
            assert server.compute_host == target
            assert domain_state(HOST_URI, server.instance_name) == "running"
        finally:
            # Node 2 comes back first: its nova-compute finds the evacuation and completes
            # its migration record; Nova refuses to lift forced_down before that (400).
            keeper.ctl("start", "nova-compute")
            deadline = time.monotonic() + 120
            while True:
                try:
                    conn.compute.update_service_forced_down(None, NODE2, "nova-compute", False)
                    break
                except openstack.exceptions.BadRequestException:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(2)
        # Node 2 comes back and cleans up the evacuated guest; node 1's keeps running
        # (shared instance storage: its disk is not deleted under it).
        deadline = time.monotonic() + 120
        while domain_state(node2.libvirt_uri, server.instance_name) is not None:
            assert time.monotonic() < deadline, "node 2 kept the evacuated domain"
            time.sleep(1)
        assert domain_state(HOST_URI, server.instance_name) == "running"
        assert conn.compute.get_server(server.id).compute_host == target
