"""The lab's networking, for real: ML2/OVN on Open vSwitch's userspace datapath.

A guest booted through Nova on the lab's tenant network gets its address by DHCP (its
own udhcpc, answered by OVN), reads its UUID from Nova's metadata service through the
OVN metadata agent's namespace, and answers HTTP from the machine: inside the network
(from that namespace) and through the router, by a floating IP on ``public`` via br-ex.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from labtools import pick_image_and_flavor, run_novaconsole

from novaconsole.lab.guest import METADATA_LINE, NET_LINE, WEB_PAGE
from novaconsole.lab.stack.neutron import LAB_NETWORK, LAB_SECURITY_GROUP, PUBLIC_NETWORK

pytestmark = pytest.mark.lab

BOOT_WAIT = 300
CONSOLE_WAIT = 180


def _console_log(conn: Any, server: Any) -> str:
    return str(conn.compute.get_server_console_output(server).get("output", ""))


def _wait_console(conn: Any, server: Any, pattern: str) -> re.Match[str]:
    deadline = time.monotonic() + CONSOLE_WAIT
    log = ""
    while time.monotonic() < deadline:
        log = _console_log(conn, server)
        found = re.search(pattern, log)
        if found:
            return found
        time.sleep(3)
    pytest.fail(f"guest never printed {pattern!r}; console log ends:\n{log[-1500:]}")


def _http_get(url: str, *, netns: str | None = None, timeout: float = 10) -> str:
    if netns is None:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return str(response.read().decode())
    code = (
        "import sys, urllib.request; sys.stdout.write("
        f"urllib.request.urlopen({url!r}, timeout={timeout}).read().decode())"
    )
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, "python3", "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout + 10,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-800:]
    return proc.stdout


@pytest.fixture(scope="module")
def conn(lab_cloud: str) -> Iterator[Any]:
    import openstack

    connection = openstack.connect(cloud=lab_cloud)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def networked_guest(conn: Any) -> Iterator[Any]:
    import openstack

    image, flavor = pick_image_and_flavor(conn, prefer_guest=True)
    network = conn.network.find_network(LAB_NETWORK, ignore_missing=False)
    server = conn.compute.create_server(
        name=f"net-{uuid.uuid4().hex[:8]}",
        image_id=image.id,
        flavor_id=flavor.id,
        networks=[{"uuid": network.id}],
        security_groups=[{"name": LAB_SECURITY_GROUP}],
    )
    try:
        try:
            server = conn.compute.wait_for_server(
                server, status="ACTIVE", failures=["ERROR"], interval=2, wait=BOOT_WAIT
            )
        except openstack.exceptions.ResourceFailure:
            fault = conn.compute.get_server(server).fault or {}
            pytest.fail(f"server went to ERROR: {fault.get('message', 'no fault recorded')}")
        yield server
    finally:
        conn.compute.delete_server(server, ignore_missing=True)
        conn.compute.wait_for_delete(server, interval=2, wait=BOOT_WAIT)


def test_lab_status_reports_ovn_on_the_userspace_datapath() -> None:
    proc = run_novaconsole("lab", "status", "-f", "json")
    assert proc.returncode == 0, proc.stderr
    networking = json.loads(proc.stdout)["networking"]
    assert networking["mode"] == "ovn"
    assert networking["datapath"].startswith("netdev")
    assert networking["services_running"] == dict.fromkeys(networking["services_running"], True)
    assert {"ovsdb-server", "ovs-vswitchd", "ovn-northd", "ovn-controller"} <= set(
        networking["services_running"]
    )


def test_verify_checks_networking(lab_cloud: str) -> None:
    proc = run_novaconsole("verify", "--os-cloud", lab_cloud, "-f", "json")
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["networking"]["ok"], checks["networking"]["summary"]
    assert LAB_NETWORK in checks["networking"]["facts"]["usable_networks"]
    agents = {a["type"] for a in checks["networking"]["facts"]["agents"]}
    assert any("OVN Controller" in t for t in agents)
    assert "OVN Metadata agent" in agents


def test_guest_gets_its_address_by_dhcp(conn: Any, networked_guest: Any) -> None:
    ports = list(conn.network.ports(device_id=networked_guest.id))
    assert len(ports) == 1
    assert ports[0].status == "ACTIVE"
    fixed = ports[0].fixed_ips[0]["ip_address"]
    # The guest's own DHCP client says what it was given (not only what the port shows).
    found = _wait_console(conn, networked_guest, rf"{NET_LINE} (\S+)/(\d+) router (\S+)")
    assert found.group(1) == fixed
    subnet = conn.network.get_subnet(ports[0].fixed_ips[0]["subnet_id"])
    assert found.group(3) == subnet.gateway_ip
    # Nova's view (what the console's Servers pane shows) agrees.
    addresses = conn.compute.get_server(networked_guest).addresses
    assert [a["addr"] for a in addresses[LAB_NETWORK]] == [fixed]


def test_guest_reads_its_uuid_from_the_metadata_service(conn: Any, networked_guest: Any) -> None:
    found = _wait_console(conn, networked_guest, rf"{METADATA_LINE} ([0-9a-f-]{{36}})")
    assert found.group(1) == networked_guest.id


def test_guest_answers_inside_its_network_and_through_a_floating_ip(
    conn: Any, networked_guest: Any
) -> None:
    _wait_console(conn, networked_guest, NET_LINE)
    network = conn.network.find_network(LAB_NETWORK, ignore_missing=False)
    port = next(conn.network.ports(device_id=networked_guest.id))
    fixed = port.fixed_ips[0]["ip_address"]
    # From inside the tenant network: the metadata agent's namespace has a port on it.
    assert _http_get(f"http://{fixed}/", netns=f"ovnmeta-{network.id}") == WEB_PAGE
    # From the machine, through the router: a floating IP on the provider network.
    public = conn.network.find_network(PUBLIC_NETWORK, ignore_missing=False)
    fip = conn.network.create_ip(floating_network_id=public.id, port_id=port.id)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert _http_get(f"http://{fip.floating_ip_address}/", timeout=5) == WEB_PAGE
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
    finally:
        conn.network.delete_ip(fip)
