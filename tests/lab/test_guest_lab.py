"""The lab's real guest, booted by Nova: console log, serial console, VNC.

One server from the image :data:`~novaconsole.lab.guest.GUEST_IMAGE` (Debian's kernel and
a busybox initramfs, booted by Nova's libvirt driver from its ``kernel_id``,
``ramdisk_id`` and ``os_command_line`` properties) and the flavor the lab offers for it.
Its console log (``os-getConsoleOutput``) must show the boot and the banner; through
nova-serialproxy (``POST /servers/{id}/remote-consoles`` with protocol ``serial``) a
command typed into its shell must come back answered; nova-novncproxy must reach its VNC
server. The server is deleted afterwards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from labtools import boot_lab_server

from novaconsole.lab.guest import (
    BANNER,
    COMMAND_LINE,
    GUEST_FLAVOR,
    GUEST_IMAGE,
    GUEST_KERNEL_IMAGE,
    GUEST_RAMDISK_IMAGE,
    PROMPT,
)
from novaconsole.vnc.probe import probe_console

pytestmark = pytest.mark.lab

#: Readiness deadlines (the guest boots under TCG on a shared 2-core machine), not timings.
BOOT_DEADLINE = 300.0
SHELL_DEADLINE = 60.0


@dataclass(frozen=True)
class GuestServer:
    conn: Any
    server: Any
    console_log: str  #: the console output once the shell prompt showed


def _console_output(conn: Any, server: Any) -> str:
    return str(conn.compute.get_server_console_output(server).get("output", ""))


@pytest.fixture(scope="module")
def guest_server(lab_cloud: str) -> Iterator[GuestServer]:
    with boot_lab_server(
        lab_cloud, "guest-test", image=GUEST_IMAGE, flavor=GUEST_FLAVOR, wait=int(BOOT_DEADLINE)
    ) as booted:
        conn, server = booted.conn, booted.server
        deadline = time.monotonic() + BOOT_DEADLINE
        output = _console_output(conn, server)
        while PROMPT not in output and time.monotonic() < deadline:
            time.sleep(2)
            output = _console_output(conn, server)
        yield GuestServer(conn, server, output)


def test_guest_images_link_kernel_and_ramdisk(lab_cloud: str) -> None:
    import openstack

    conn = openstack.connect(cloud=lab_cloud)
    try:
        root = conn.image.find_image(GUEST_IMAGE, ignore_missing=False)
        kernel = conn.image.find_image(GUEST_KERNEL_IMAGE, ignore_missing=False)
        ramdisk = conn.image.find_image(GUEST_RAMDISK_IMAGE, ignore_missing=False)
        assert (kernel.disk_format, ramdisk.disk_format) == ("aki", "ari")
        assert root.kernel_id == kernel.id
        assert root.ramdisk_id == ramdisk.id
        assert root.os_command_line == COMMAND_LINE
    finally:
        conn.close()


def test_guest_is_active_and_booted_by_its_own_kernel(guest_server: GuestServer) -> None:
    server = guest_server.conn.compute.get_server(guest_server.server)
    assert server.status == "ACTIVE"
    # Nova copied the aki/ari images next to the disk and booted them directly.
    assert "Linux version 6." in guest_server.console_log
    assert "Command line: " + COMMAND_LINE in guest_server.console_log


def test_console_log_shows_the_banner(guest_server: GuestServer) -> None:
    assert BANNER in guest_server.console_log
    assert PROMPT in guest_server.console_log


def test_serial_console_answers_a_command(guest_server: GuestServer) -> None:
    import websocket

    console = guest_server.conn.compute.create_server_remote_console(
        guest_server.server, protocol="serial", type="serial"
    )
    url = str(console.url)
    assert url.startswith("ws://127.0.0.1:6083/?token=")
    # nova-serialproxy is websockify: it speaks the "binary" subprotocol (raw bytes).
    ws = websocket.create_connection(url, subprotocols=["binary"], timeout=5)
    try:
        assert ws.getsubprotocol() == "binary"
        marker = uuid.uuid4().hex[:8]
        # The echo makes the answer ours, not an earlier one still in the line.
        ws.send_binary(f"uname -a; echo done-{marker}\n".encode())
        received = b""
        deadline = time.monotonic() + SHELL_DEADLINE
        while f"\ndone-{marker}".encode() not in received and time.monotonic() < deadline:
            try:
                _opcode, data = ws.recv_data()
            except websocket.WebSocketTimeoutException:
                continue
            received += data
    finally:
        ws.close()
    text = received.decode(errors="replace")
    answer = text.split("uname -a", 1)[-1]
    assert "Linux novaconsole-guest 6." in answer, text[-500:]
    assert f"done-{marker}" in answer


def test_vnc_probe_reaches_the_guest(guest_server: GuestServer) -> None:
    console = guest_server.conn.compute.create_server_remote_console(
        guest_server.server, protocol="vnc", type="novnc"
    )
    probe = probe_console(str(console.url), timeout=30)
    handshake = probe.handshake
    assert handshake.width > 0
    assert handshake.height > 0
    assert guest_server.server.instance_name in handshake.name


def _screenshot(domain: str) -> bytes:
    """The guest's screen as libvirt takes it (the same framebuffer VNC serves), PNG."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/screen"
        subprocess.run(
            ["virsh", "-c", "qemu:///system", "screenshot", domain, path],
            capture_output=True,
            check=True,
            timeout=30,
        )
        with open(path, "rb") as handle:
            return handle.read()


def test_text_console_shows_a_shell_that_takes_keys(guest_server: GuestServer) -> None:
    """tty1 is the Linux text console on the guest's screen, with a shell reading keys."""
    import struct
    import subprocess

    domain = guest_server.server.instance_name
    # The text cursor blinks: every state the idle screen shows counts as "before".
    before = set()
    for _ in range(4):
        before.add(_screenshot(domain))
        time.sleep(0.5)
    first = next(iter(before))
    assert first.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", first[16:24])
    assert (width, height) == (720, 400)  # VGA text mode: 80x25 cells of 9x16
    keys = ["KEY_E", "KEY_C", "KEY_H", "KEY_O", "KEY_SPACE", "KEY_H", "KEY_I", "KEY_ENTER"]
    subprocess.run(
        ["virsh", "-c", "qemu:///system", "send-key", domain, *keys],
        capture_output=True,
        check=True,
        timeout=30,
    )
    deadline = time.monotonic() + SHELL_DEADLINE
    after = _screenshot(domain)
    while after in before and time.monotonic() < deadline:
        time.sleep(1)
        after = _screenshot(domain)
    assert after not in before, "the screen did not change after typing on tty1"
