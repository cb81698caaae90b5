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
from labtools import boot_lab_server

from novaconsole.lab.config import LabConfig
from novaconsole.vnc.probe import ProbeError, parse_console_url, probe_console

pytestmark = pytest.mark.lab


@dataclass(frozen=True)
class LabServer:
    conn: Any
    server: Any
    console_url: str


@pytest.fixture(scope="module")
def lab_server(lab_cloud: str) -> Iterator[LabServer]:
    with boot_lab_server(lab_cloud, "novaconsole-vnc-probe") as booted:
        console = booted.conn.compute.create_server_remote_console(
            booted.server, protocol="vnc", type="novnc"
        )
        yield LabServer(booted.conn, booted.server, str(console.url))


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
