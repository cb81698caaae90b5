"""The in-terminal consoles against the real lab: a server of our own (``rfb-test-...``),
its VNC console drawn by the TUI's console screen (Pilot), its serial console answering
``uname -a`` in the serial screen (pyte) and through ``run_raw_terminal`` on a real pty.

Boots from the lab's Linux guest image (``novaconsole-lab-guest``) when the lab has it,
else from its smallest image (SeaBIOS's "No bootable device" is a real screen too; the
serial tests then skip). The server is deleted afterwards.
Run with ``NOVACONSOLE_TEST_LAB_AS_IS=1 pytest -m lab tests/lab/test_console_screen_lab.py``.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ui"))

from console_helpers import settle
from labtools import boot_lab_server
from textual.pilot import Pilot

from novaconsole.sources.openstack_source import OpenStackSource, open_cloud_source
from novaconsole.ui.app import NovaConsoleApp, make_app
from novaconsole.ui.console_screen import ConsoleScreen
from novaconsole.ui.serial_screen import SerialScreen
from novaconsole.ui.settings import ConsoleSettings
from novaconsole.vnc.png import read_png_rgb

pytestmark = pytest.mark.lab
SIZE = (160, 44)
GUEST_IMAGE = "novaconsole-lab-guest"
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LabServer:
    conn: Any
    server: Any
    image: str

    @property
    def linux(self) -> bool:
        return self.image == GUEST_IMAGE


@pytest.fixture(scope="module")
def lab_server(lab_cloud: str) -> Iterator[LabServer]:
    with boot_lab_server(lab_cloud, "rfb-test", prefer_guest=True) as booted:
        yield LabServer(booted.conn, booted.server, booted.image)


@pytest.fixture
def source(lab_cloud: str) -> Iterator[OpenStackSource]:
    real = open_cloud_source(lab_cloud, timeout=30)
    yield real
    real.close()


def _app(source: OpenStackSource, tmp_path: Path) -> NovaConsoleApp:
    app = make_app(
        connect=lambda name: source,
        cloud=source.name,
        settings=ConsoleSettings(refresh=0, timeout=30),
        remember_theme=False,
    )
    app.screenshot_dir = tmp_path
    return app


async def _select_server(pilot: Pilot[Any], name: str) -> None:
    await settle(pilot)
    await pilot.press("5", "slash", *name, "enter")
    await settle(pilot)
    row = pilot.app.pane("servers").table.current_row  # type: ignore[attr-defined]
    assert row is not None
    assert row.name == name


async def _until(pilot: Pilot[Any], check: Any, what: str, timeout: float = 120) -> None:
    """A readiness wait with a deadline (the guest boots while we watch), not a timing test."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.2)


@pytest.mark.asyncio
async def test_console_screen_shows_the_guest_s_screen(
    lab_server: LabServer, source: OpenStackSource, tmp_path: Path
) -> None:
    app = _app(source, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await _select_server(pilot, lab_server.server.name)
        await pilot.press("c")

        def lit() -> bool:
            screen = app.screen
            if isinstance(screen, ConsoleScreen) and screen.state == "failed":
                raise AssertionError(str(screen.query_one("#console-status").render()))
            if not isinstance(screen, ConsoleScreen) or screen.session is None:
                return False
            fb = screen.session.snapshot()
            cells = screen.query_one("#console-view").renderer.cells  # type: ignore[attr-defined]
            bright = any(max(c[0] + c[1]) > 100 for row in cells for c in row)
            return not fb.is_blank() and screen.frames_drawn > 0 and bright

        await _until(pilot, lit, "the guest's screen to show text in the console screen")
        screen = app.screen
        assert isinstance(screen, ConsoleScreen)
        session = screen.session
        assert session is not None
        assert "127.0.0.1:6080" in session.where  # through nova-novncproxy
        assert session.client.extended_keys  # the instance's QEMU: keys go as scancodes
        # A key reaches the guest and the screen changes (Linux echoes; SeaBIOS is deaf).
        if lab_server.linux:
            before = session.snapshot().pixels
            await pilot.press("enter", *"echo rfb", "enter")
            await _until(
                pilot,
                lambda: screen.session is not None and screen.session.snapshot().pixels != before,
                "the guest's screen to change after typing",
            )
        await pilot.press("ctrl+s")
        await _until(pilot, lambda: screen.last_screenshot is not None, "the screenshot")
        assert screen.last_screenshot is not None
        width, height, rgb = read_png_rgb(screen.last_screenshot.read_bytes())
        assert (width, height) == (session.handshake.width, session.handshake.height) or (
            width * height * 3 == len(rgb)
        )
        await pilot.press("ctrl+right_square_bracket")
        await settle(pilot)
        assert not isinstance(app.screen, ConsoleScreen)


@pytest.mark.asyncio
async def test_serial_screen_answers_uname(
    lab_server: LabServer, source: OpenStackSource, tmp_path: Path
) -> None:
    if not lab_server.linux:
        pytest.skip(f"the lab has no {GUEST_IMAGE} image: no shell on the serial console")
    app = _app(source, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await _select_server(pilot, lab_server.server.name)
        await pilot.press("S")

        def connected() -> bool:
            screen = app.screen
            if isinstance(screen, SerialScreen) and screen.state == "failed":
                raise AssertionError(str(screen.query_one("#serial-status").render()))
            return isinstance(screen, SerialScreen) and screen.state == "connected"

        await _until(pilot, connected, "the serial console to connect")
        screen = app.screen
        assert isinstance(screen, SerialScreen)
        assert screen.session is not None
        assert "127.0.0.1:6083" in screen.session.where  # through nova-serialproxy
        # The guest may still be booting: ask for a prompt until uname's answer shows.
        deadline = time.monotonic() + 120
        while "Linux" not in screen.terminal.text():
            assert time.monotonic() < deadline, screen.terminal.text()
            await pilot.press("enter", *"uname -a", "enter")
            await pilot.pause(2)
        assert "Linux" in screen.terminal.text()
        await pilot.press("ctrl+right_square_bracket")
        await settle(pilot)
        assert not isinstance(app.screen, SerialScreen)


RAW_TERMINAL = """
import os
from novaconsole.vnc.serial import SerialSession, run_raw_terminal
url = os.environ.pop("NOVACONSOLE_TEST_SERIAL_URL")
reason = run_raw_terminal(SerialSession.open_url(url), banner="attached; escape is ^]")
print("detached" if reason is None else "ended: " + reason, flush=True)
"""


def _pty_read_until(fd: int, needle: bytes, timeout: float, poke: bytes = b"") -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    next_poke = 0.0
    while needle not in seen:
        now = time.monotonic()
        assert now < deadline, f"never saw {needle!r}; got {seen[-400:]!r}"
        if poke and now >= next_poke:
            os.write(fd, poke)
            next_poke = now + 3
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            seen += os.read(fd, 4096)
    return seen


def test_run_raw_terminal_on_the_lab_guest(lab_server: LabServer) -> None:
    if not lab_server.linux:
        pytest.skip(f"the lab has no {GUEST_IMAGE} image: no shell on the serial console")
    console = lab_server.conn.compute.create_server_remote_console(
        lab_server.server, protocol="serial", type="serial"
    )
    master, slave = pty.openpty()
    # The URL carries a token: through the environment, never the command line.
    env = {**os.environ, "NOVACONSOLE_TEST_SERIAL_URL": str(console.url)}
    proc = subprocess.Popen(
        [sys.executable, "-c", RAW_TERMINAL],
        stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        before = termios.tcgetattr(slave)
        _pty_read_until(master, b"attached", 30)
        out = _pty_read_until(master, b"Linux", 120, poke=b"\runame -a\r")
        assert b"Linux" in out
        os.write(master, b"\x1d")
        _pty_read_until(master, b"detached", 30)
        assert proc.wait(timeout=30) == 0
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        os.close(master)
        os.close(slave)
