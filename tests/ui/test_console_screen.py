"""The console and serial screens over recorded fakes: behaviour with Pilot, and snapshots.

The RFB stream is a real QEMU's, recorded (``fake_rfb.py``); the real QEMU and the lab's
guest are tested in ``tests/vnc/test_rfb.py`` and ``tests/lab/test_console_screen_lab.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from console_helpers import AppFactory, settle, wait_until
from fake_rfb import FakeRfbOpener, FakeSerialOpener
from fake_source import FakeCloudSource
from textual.pilot import Pilot

from novaconsole.hookspecs import hookimpl
from novaconsole.plugins import PluginManager
from novaconsole.ui.app import NovaConsoleApp
from novaconsole.ui.confirm import ConfirmScreen
from novaconsole.ui.console_screen import ConsoleScreen
from novaconsole.ui.framebuffer_view import FramebufferView
from novaconsole.ui.serial_screen import SerialScreen
from novaconsole.ui.settings import ConsoleSettings
from novaconsole.vnc.keys import ALT, CONTROL, NAMED_KEYS, SHIFT
from novaconsole.vnc.png import read_png_rgb

SIZE = (140, 36)
Snap = Callable[..., bool]


def _notes(app: NovaConsoleApp) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def open_console(pilot: Pilot[Any], opener: FakeRfbOpener) -> ConsoleScreen:
    """Servers pane, ``c``, then wait until the whole recording is drawn."""
    app = pilot.app
    await settle(pilot)
    await pilot.press("5", "c")

    def drawn() -> bool:
        screen = app.screen
        if not isinstance(screen, ConsoleScreen):
            return False
        return screen.state == "failed" or bool(
            opener.transports
            and opener.transports[-1].drained.is_set()
            and not screen._frame_pending
            and screen.frames_drawn
            and screen.session is not None
            and screen.session.client.framebuffer.dirty == []
        )

    await wait_until(pilot, drawn, "the console screen drew the recording")
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, ConsoleScreen)
    return screen


def _app(fake_app: AppFactory, tmp_path: Path, **kw: Any) -> tuple[NovaConsoleApp, FakeRfbOpener]:
    app = fake_app(**kw)
    opener = FakeRfbOpener()
    app.console_opener = opener
    app.screenshot_dir = tmp_path
    return app, opener


@pytest.mark.asyncio
async def test_c_draws_the_guest_screen_from_nova_s_console(
    fake_app: AppFactory, tmp_path: Path
) -> None:
    source = FakeCloudSource()
    app, opener = _app(fake_app, tmp_path, source=source)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_console(pilot, opener)
        server = screen.server
        assert ("remote_console_url", server.id, "vnc") in source.calls
        assert opener.urls == ["ws://console.invalid:6080/?token=recorded-vnc"]
        view = screen.query_one(FramebufferView)
        fit = view.fit
        assert (fit.source_width, fit.source_height) == (720, 400)
        assert fit.scaled  # 720x400 does not fit 140x34 cells
        title = str(screen.query_one("#console-title").render())
        assert "720x400 at 17%: scaled to fit" in title
        # SeaBIOS's grey text on black: some cells are lit, most are black.
        lit = [c for row in view.renderer.cells for c in row if max(c[0] + c[1]) > 40]
        assert 0 < len(lit) < fit.columns * fit.rows // 4
        status = str(screen.query_one("#console-status").render())
        assert "connected to fake console proxy (QEMU (rfb-record))" in status
        assert "token" not in status


@pytest.mark.asyncio
async def test_keys_reach_the_guest_as_scancodes(fake_app: AppFactory, tmp_path: Path) -> None:
    app, opener = _app(fake_app, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_console(pilot, opener)
        transport = opener.transports[-1]
        # q, colon and ctrl+c would be the app's keys; here they are the guest's.
        await pilot.press("l", "S", "q", "colon", "ctrl+c", "enter", "up", "f2")
        await wait_until(pilot, lambda: len(transport.key_events()) >= 20, "20 key events sent")
        assert app.screen is screen  # still here: q did not quit
        events = transport.key_events()
        downs = [(keysym, scancode) for down, keysym, scancode in events if down]
        assert downs == [
            (ord("l"), 0x26),
            (SHIFT.keysym, SHIFT.scancode), (ord("S"), 0x1F),
            (ord("q"), 0x10),
            (SHIFT.keysym, SHIFT.scancode), (ord(":"), 0x27),
            (CONTROL.keysym, CONTROL.scancode), (ord("c"), 0x2E),
            (0xFF0D, 0x1C),
            (0xFF52, 0xC8),
            (0xFFBF, 0x3C),
        ]  # fmt: skip
        assert len(events) == 2 * len(downs)  # every key released too


@pytest.mark.asyncio
async def test_escape_key_leaves_and_closes_the_session(
    fake_app: AppFactory, tmp_path: Path
) -> None:
    app, opener = _app(fake_app, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_console(pilot, opener)
        session = screen.session
        assert session is not None
        await pilot.press("ctrl+right_square_bracket")
        await settle(pilot)
        assert not isinstance(app.screen, ConsoleScreen)
        assert app.active_pane_name == "servers"
        await wait_until(pilot, lambda: session.closed, "the session closed")


@pytest.mark.asyncio
async def test_ctrl_alt_del_asks_first(fake_app: AppFactory, tmp_path: Path) -> None:
    app, opener = _app(fake_app, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await open_console(pilot, opener)
        transport = opener.transports[-1]
        await pilot.press("ctrl+backslash")
        assert isinstance(app.screen, ConfirmScreen)
        assert "Ctrl-Alt-Del" in str(app.screen.question)
        await pilot.press("n")
        await settle(pilot)
        assert transport.key_events() == []
        await pilot.press("ctrl+backslash", "y")
        await wait_until(pilot, transport.key_events, "Ctrl-Alt-Del sent")
        delete = NAMED_KEYS["delete"]
        assert transport.key_events() == [
            (1, CONTROL.keysym, CONTROL.scancode),
            (1, ALT.keysym, ALT.scancode),
            (1, delete.keysym, delete.scancode),
            (0, delete.keysym, delete.scancode),
            (0, ALT.keysym, ALT.scancode),
            (0, CONTROL.keysym, CONTROL.scancode),
        ]


@pytest.mark.asyncio
async def test_screenshot_is_the_framebuffer_as_png(fake_app: AppFactory, tmp_path: Path) -> None:
    app, opener = _app(fake_app, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_console(pilot, opener)
        await pilot.press("ctrl+s")
        await settle(pilot)
        path = screen.last_screenshot
        assert path is not None
        assert path.parent == tmp_path
        assert path.name.endswith(".png")
        assert any(f"screenshot written to {path}" in n for n in _notes(app))
        assert screen.session is not None
        fb = screen.session.snapshot()
        assert read_png_rgb(path.read_bytes()) == (720, 400, bytes(fb.pixels))


class _BrowserPlugin:
    @hookimpl
    def novaconsole_open_console(self, server_id: str, cloud: str | None) -> str:
        return f"http://127.0.0.1:6080/vnc.html?server={server_id}&ticket=***"


@pytest.mark.asyncio
async def test_open_in_browser_asks_the_plugins(fake_app: AppFactory, tmp_path: Path) -> None:
    app, opener = _app(fake_app, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await open_console(pilot, opener)
        await pilot.press("ctrl+o")
        await settle(pilot)
        assert any("no plugin opens consoles in a browser" in n for n in _notes(app))
    pm = PluginManager()
    pm.register(_BrowserPlugin(), name="browser")
    app, opener = _app(fake_app, tmp_path, plugin_manager=pm)
    async with app.run_test(size=SIZE) as pilot:
        await open_console(pilot, opener)
        await pilot.press("ctrl+o")
        await settle(pilot)
        assert any("in a browser: http://127.0.0.1:6080/vnc.html?server=" in n for n in _notes(app))


@pytest.mark.asyncio
async def test_readonly_console_sends_no_keys(fake_app: AppFactory, tmp_path: Path) -> None:
    app, opener = _app(fake_app, tmp_path, settings=ConsoleSettings(refresh=0, readonly=True))
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_console(pilot, opener)
        await pilot.press("a", "enter", "ctrl+backslash")
        await settle(pilot)
        assert opener.transports[-1].key_events() == []
        assert "read-only: keys are not sent" in str(screen.query_one("#console-title").render())
        assert any("Ctrl-Alt-Del is not sent" in n for n in _notes(app))


@pytest.mark.asyncio
async def test_nova_refusing_a_console_is_one_line_on_the_screen(
    fake_app: AppFactory, tmp_path: Path
) -> None:
    source = FakeCloudSource(fail={"remote_console_url": "Nova said: instance is not running"})
    app, opener = _app(fake_app, tmp_path, source=source)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_console(pilot, opener)
        assert screen.state == "failed"
        status = str(screen.query_one("#console-status").render())
        assert "instance is not running" in status
        assert opener.urls == []


@pytest.mark.asyncio
async def test_panes_do_not_poll_behind_the_console(fake_app: AppFactory, tmp_path: Path) -> None:
    source = FakeCloudSource()
    app, opener = _app(fake_app, tmp_path, source=source, settings=ConsoleSettings(refresh=0.05))
    async with app.run_test(size=SIZE) as pilot:
        await open_console(pilot, opener)
        before = source.count("raw_servers")
        for _ in range(10):  # ten polling intervals and more
            await pilot.pause(0.06)
        assert source.count("raw_servers") == before


@pytest.mark.asyncio
async def test_the_proxy_hanging_up_is_shown_not_hidden(
    fake_app: AppFactory, tmp_path: Path
) -> None:
    app = fake_app()
    opener = FakeRfbOpener(hang_up=True)
    app.console_opener = opener
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("5", "c")
        screen = app.screen
        assert isinstance(screen, ConsoleScreen)
        await wait_until(pilot, lambda: screen.state == "ended", "the screen showed the end")
        status = str(screen.query_one("#console-status").render())
        assert "fake console proxy closed the connection (close frame 1000 Target closed)" in status
        await pilot.press("a")  # keys after the end go nowhere, quietly
        assert "ended" in str(screen.query_one("#console-title").render())


# -- serial console ------------------------------------------------------------------------


async def open_serial(pilot: Pilot[Any], opener: FakeSerialOpener) -> SerialScreen:
    app = pilot.app
    await settle(pilot)
    await pilot.press("5", "S")

    def shown() -> bool:
        screen = app.screen
        return bool(
            isinstance(screen, SerialScreen)
            and opener.transports
            and opener.transports[-1].drained.is_set()
            and not screen._pending
        )

    await wait_until(pilot, shown, "the serial screen showed the recording")
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, SerialScreen)
    return screen


@pytest.mark.asyncio
async def test_serial_screen_emulates_the_terminal_and_sends_keys(fake_app: AppFactory) -> None:
    source = FakeCloudSource()
    app = fake_app(source=source)
    opener = FakeSerialOpener()
    app.serial_opener = opener
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_serial(pilot, opener)
        assert ("remote_console_url", screen.server.id, "serial") in source.calls
        text = screen.terminal.text()
        assert "Welcome to the novaconsole lab guest" in text
        assert "/ # " in text
        assert "\x1b" not in text  # escape sequences interpreted, not shown
        await pilot.press(*"uname", "enter", "ctrl+c", "up", "q")
        await wait_until(pilot, lambda: len(opener.transports[-1].sent) >= 10, "10 bytes sent")
        assert bytes(opener.transports[-1].sent) == b"uname\r\x03\x1b[Aq"
        assert app.screen is screen
        await pilot.press("ctrl+right_square_bracket")
        await settle(pilot)
        assert not isinstance(app.screen, SerialScreen)


# -- snapshots -------------------------------------------------------------------------------


def _console_snapshot(
    fake_app: AppFactory, tmp_path: Path
) -> tuple[NovaConsoleApp, Callable[[Pilot[Any]], Any]]:
    app, opener = _app(fake_app, tmp_path)

    async def run(pilot: Pilot[Any]) -> None:
        await open_console(pilot, opener)

    return app, run


@pytest.mark.parametrize("size", [(140, 36), (80, 24)])
def test_console_screen_snapshot(
    snap_compare: Snap, fake_app: AppFactory, tmp_path: Path, size: tuple[int, int]
) -> None:
    app, run = _console_snapshot(fake_app, tmp_path)
    assert snap_compare(app, run_before=run, terminal_size=size)


def test_serial_screen_snapshot(snap_compare: Snap, fake_app: AppFactory) -> None:
    app = fake_app()
    opener = FakeSerialOpener()
    app.serial_opener = opener

    async def run(pilot: Pilot[Any]) -> None:
        await open_serial(pilot, opener)

    assert snap_compare(app, run_before=run, terminal_size=SIZE)
