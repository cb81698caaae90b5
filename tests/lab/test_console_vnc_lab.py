"""A server booted on the lab, its noVNC console reached through nova-novncproxy.

Boots a server with no network (``networks="none"``, microversion >= 2.37) from the lab's
smallest active image and flavor, waits for ACTIVE, asks Nova for a noVNC console URL
(``POST /servers/{id}/remote-consoles``) and completes the websocket + RFB handshake with
the probe, down to the instance's own QEMU VNC server. The server is deleted afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from novaconsole.lab.config import LabConfig
from novaconsole.vnc.probe import ProbeError, parse_console_url, probe_console

pytestmark = pytest.mark.lab


@dataclass(frozen=True)
class LabServer:
    conn: Any
    server: Any
    console_url: str


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
def lab_server(lab_cloud: str) -> Iterator[LabServer]:
    import openstack

    conn = openstack.connect(cloud=lab_cloud)
    image, flavor = _pick_image_and_flavor(conn)
    server = conn.compute.create_server(
        name=f"novaconsole-vnc-probe-{uuid.uuid4().hex[:8]}",
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
        console = conn.compute.create_server_remote_console(server, protocol="vnc", type="novnc")
        yield LabServer(conn, server, str(console.url))
    finally:
        conn.compute.delete_server(server, ignore_missing=True)
        conn.compute.wait_for_delete(server, interval=1, wait=600)
        conn.close()


def _token(url: str) -> str:
    ws = parse_console_url(url).websocket_url
    return parse_qs(urlsplit(ws).query)["token"][0]


def test_nova_console_url_has_the_token_in_novnc_path(lab_server: LabServer) -> None:
    url = lab_server.console_url
    assert "path=%3Ftoken%3D" in url  # ConsoleAuthToken.access_url for noVNC >= 1.1
    assert len(_token(url)) >= 32


def test_probe_reaches_the_instance_vnc_server(lab_server: LabServer) -> None:
    probe = probe_console(lab_server.console_url, timeout=30)
    hs = probe.handshake
    assert hs.server_version.startswith("RFB 003.")
    assert hs.version == (3, 8)
    assert hs.security_type == 1
    assert hs.width > 0
    assert hs.height > 0
    assert hs.pixel_format.bits_per_pixel in (8, 16, 32)
    # QEMU names its VNC desktop after the libvirt domain: proof we reached this instance.
    assert lab_server.server.instance_name
    assert lab_server.server.instance_name in hs.name
    assert probe.subprotocol == "binary"
    assert _token(lab_server.console_url) not in str(probe.as_dict())


def test_no_origin_is_accepted_as_a_non_browser_client(lab_server: LabServer) -> None:
    probe = probe_console(lab_server.console_url, origin=None, timeout=30)
    assert probe.handshake.width > 0


def test_foreign_origin_is_dropped_by_novncproxy(lab_server: LabServer) -> None:
    with pytest.raises(ProbeError) as info:
        probe_console(lab_server.console_url, origin="http://evil.example", timeout=30)
    message = info.value.one_line()
    assert "closed the connection while waiting for the RFB greeting" in message
    assert _token(lab_server.console_url) not in message


def test_unknown_token_is_dropped_by_novncproxy(lab_server: LabServer) -> None:
    real = _token(lab_server.console_url)
    forged = lab_server.console_url.replace(real, uuid.uuid4().hex + uuid.uuid4().hex[:4])
    with pytest.raises(ProbeError, match="token is invalid or expired"):
        probe_console(forged, timeout=30)


def test_guest_runs_with_the_virt_type_the_compute_plugin_chose(
    lab_server: LabServer, lab_state: LabConfig
) -> None:
    """The booted guest is a real libvirt domain of the type `lab status` reports."""
    import re

    import libvirt

    from novaconsole.lab.config import load_or_create_secrets
    from novaconsole.lab.runner import lab_site
    from novaconsole_compute import host_facts

    facts = host_facts(lab_site(lab_state, load_or_create_secrets(lab_state.secrets_file)))
    assert facts.driver == "libvirt"
    conn = libvirt.openReadOnly("qemu:///system")
    try:
        domain = conn.lookupByName(lab_server.server.instance_name)
        match = re.search(r"<domain type='(\w+)'", domain.XMLDesc(0))
        assert match is not None
        assert match.group(1) == facts.virt_type
        assert domain.isActive()
    finally:
        conn.close()
