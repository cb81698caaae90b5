"""``ConsoleScreen``: a server's graphical console (VNC through Nova) inside the terminal.

The URL comes from Nova (``create_server_remote_console(protocol="vnc", type="novnc")``)
in a thread worker; an :class:`~novaconsole.vnc.session.RfbSession` reads framebuffer
updates in its own thread and posts at most one pending frame message at a time, drawn at
most :data:`MAX_FPS` times a second. Keys go to the guest (QEMU scancodes) through one
sender thread, except the screen's own: ``ctrl+]`` leaves, ``ctrl+s`` screenshots,
``ctrl+\\`` sends a confirmed Ctrl-Alt-Del, ``ctrl+o`` opens the console in a browser.
"""

from __future__ import annotations

import contextlib
import queue
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Static

from novaconsole.sources.base import CloudSource
from novaconsole.sources.rows import ServerRow
from novaconsole.terminal_graphics import TerminalGraphics
from novaconsole.ui.confirm import ConfirmScreen
from novaconsole.ui.framebuffer_view import FramebufferView
from novaconsole.ui.pane import describe_exception
from novaconsole.vnc.keys import ALT, CONTROL, NAMED_KEYS, Key, keys_for_terminal_key
from novaconsole.vnc.render import Fit
from novaconsole.vnc.rfb import DesktopResized, FramebufferUpdated
from novaconsole.vnc.session import Disconnected, RfbSession, SessionEvent

#: At most this many redraws a second, however fast updates arrive.
MAX_FPS = 30

#: Opens an RFB session for a console URL (blocking; runs in a thread).
SessionOpener = Callable[[str], RfbSession]

KEY_HELP = "ctrl+] leave · ctrl+s screenshot · ctrl+\\ Ctrl-Alt-Del · ctrl+o open in browser"


def default_opener(url: str) -> RfbSession:
    return RfbSession.open_url(url)


def screenshot_name(server: ServerRow, now: datetime) -> str:
    """``NAME-YYYYmmdd-HHMMSS.png`` with the name made safe for a file name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", server.name).strip("._") or server.id
    return f"{safe}-{now:%Y%m%d-%H%M%S}.png"


class ConsoleScreen(Screen[None]):
    """The guest's screen, live; keys to the guest; a title line and a status line."""

    DEFAULT_CSS = """
    ConsoleScreen {
        background: $background;
    }
    ConsoleScreen > #console-title {
        height: 1;
        padding: 0 1;
        background: $primary;
        color: $text;
        text-style: bold;
    }
    ConsoleScreen > #console-status {
        height: 1;
        padding: 0 1;
        background: $panel;
        color: $text-muted;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+right_square_bracket", "leave", "Leave", priority=True, key_display="^]"),
        Binding("ctrl+s", "screenshot", "Screenshot", priority=True),
        Binding("ctrl+backslash", "ctrl_alt_del", "Ctrl-Alt-Del", priority=True),
        Binding("ctrl+o", "open_browser", "Open in browser", priority=True),
    ]

    class FrameReady(Message):
        """The session has a new frame (at most one of these is pending)."""

    class Ended(Message):
        """The session ended; ``reason`` is one line or None (we closed it)."""

        def __init__(self, reason: str | None) -> None:
            super().__init__()
            self.reason = reason

    def __init__(
        self,
        source: CloudSource,
        server: ServerRow,
        *,
        opener: SessionOpener = default_opener,
        readonly: bool = False,
        screenshot_dir: Path | None = None,
        open_in_browser: Callable[[], str | None] | None = None,
        graphics: TerminalGraphics | None = None,
    ) -> None:
        super().__init__()
        #: Half-block cells unless the terminal (or the operator) chose Kitty or Sixel.
        self.graphics = graphics or TerminalGraphics("cells", reason="half-block cells")
        self.source = source
        self.server = server
        self.opener = opener
        self.readonly = readonly
        self.screenshot_dir = screenshot_dir or Path.cwd()
        self.open_in_browser = open_in_browser
        self.session: RfbSession | None = None
        self.state = "connecting"
        self.last_screenshot: Path | None = None
        self._frame_pending = False
        self._last_draw = 0.0
        self._fit: Fit | None = None
        self._keys: queue.SimpleQueue[list[Key] | None] = queue.SimpleQueue()
        #: Frames drawn so far (tests and the benchmark read it).
        self.frames_drawn = 0
        #: ``time.monotonic()`` of each stage: opened, url, connected, first_frame.
        self.timings: dict[str, float] = {"opened": time.monotonic()}

    def compose(self) -> ComposeResult:
        yield Static(self._title(), id="console-title", markup=False)
        yield FramebufferView(id="console-view", graphics=self.graphics)
        yield Static(
            f"connecting to Nova for a console of {self.server.name}…",
            id="console-status",
            markup=False,
        )

    def on_mount(self) -> None:
        view = self.query_one(FramebufferView)
        view.reserved_keys = frozenset(str(b.key) for b in self.BINDINGS if isinstance(b, Binding))
        view.focus()
        self._connect()

    # -- connecting ----------------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="console-connect")
    def _connect(self) -> None:
        try:
            url = self.source.remote_console_url(self.server, "vnc")
            self.timings["url"] = time.monotonic()
            session = self.opener(url)
            self.timings["connected"] = time.monotonic()
        except Exception as exc:
            self.app.call_from_thread(self._failed, describe_exception(exc))
            return
        session.add_listener(self._on_session_event)
        self.app.call_from_thread(self._connected, session)

    def _connected(self, session: RfbSession) -> None:
        if not self.is_attached:  # left before the connection was up
            threading.Thread(target=session.close, daemon=True).start()
            return
        self.session = session
        self._send_keys_loop(session)
        if self.state != "connecting":
            # The session ended before this ran (a proxy that hangs up at once): its Ended
            # message and this call come by different queues, in either order.
            self._draw()
            return
        self.state = "connected"
        drawn = self.graphics.protocol
        how = "" if drawn == "cells" else f" · {drawn} graphics"
        self._status(f"connected to {session.where} ({session.handshake.name}){how}")
        self._draw()

    def _failed(self, error: str) -> None:
        self.state = "failed"
        self._status(f"console of {self.server.name}: {error}")
        self.query_one("#console-title", Static).update(self._title())

    def _on_session_event(self, event: SessionEvent) -> None:
        """In the RFB reader thread: coalesce updates into one pending message."""
        if isinstance(event, FramebufferUpdated | DesktopResized):
            if not self._frame_pending:
                self._frame_pending = True
                self.post_message(self.FrameReady())
        elif isinstance(event, Disconnected):
            self.post_message(self.Ended(event.reason))

    def on_console_screen_frame_ready(self, message: FrameReady) -> None:
        wait = self._last_draw + 1 / MAX_FPS - time.monotonic()
        if wait > 0:
            self.set_timer(wait, self._draw)
        else:
            self._draw()

    def on_console_screen_ended(self, message: Ended) -> None:
        if self.state == "left":
            return
        self.state = "ended"
        self._status(message.reason or "the console session ended")
        self.query_one("#console-title", Static).update(self._title())

    def _draw(self) -> None:
        self._frame_pending = False
        session = self.session
        if session is None:
            return
        fb, dirty = session.take_dirty()
        fit = self.query_one(FramebufferView).show(fb, dirty)
        self._last_draw = time.monotonic()
        self.frames_drawn += 1
        if "first_frame" not in self.timings and not fb.is_blank():
            self.timings["first_frame"] = self._last_draw
        if fit != self._fit:
            self._fit = fit
            self.query_one("#console-title", Static).update(self._title())

    def on_resize(self) -> None:
        self._fit = None
        if self.session is not None:
            self.call_after_refresh(self._draw)

    # -- title and status ----------------------------------------------------------------

    def _title(self) -> str:
        parts = [f"Console of {self.server.name} ({self.server.id})"]
        fit = self._fit
        if fit is not None and fit.source_width:
            if fit.scaled:
                parts.append(f"{fit.describe()}: scaled to fit, a larger terminal shows more")
            else:
                parts.append(fit.describe())
        if self.readonly:
            parts.append("read-only: keys are not sent")
        if self.state in ("failed", "ended"):
            parts.append(self.state)
        return " · ".join(parts)

    def _status(self, text: str) -> None:
        self.query_one("#console-status", Static).update(f"{text} │ {KEY_HELP}")

    # -- keys ----------------------------------------------------------------------------

    def _send_keys_loop(self, session: RfbSession) -> None:
        """Start the one thread that sends keys, in order, off the event loop.

        A plain thread rather than a Textual worker: it lives as long as the session.
        """
        app = self.app

        def loop() -> None:
            while (keys := self._keys.get()) is not None:
                try:
                    session.press_keys(keys)
                except Exception as exc:
                    text = f"key not sent: {describe_exception(exc)}"
                    with contextlib.suppress(Exception):
                        app.call_from_thread(self._status, text)

        threading.Thread(target=loop, name="rfb-keys", daemon=True).start()

    def on_key(self, event: events.Key) -> None:
        event.stop()
        event.prevent_default()
        if self.session is None or self.readonly or self.state != "connected":
            return
        keys = keys_for_terminal_key(event.key, event.character)
        if keys:
            self._keys.put(keys)

    def on_screen_suspend(self) -> None:
        """Another screen (a confirmation, help) is over this one: hide the pixels."""
        for view in self.query(FramebufferView):
            view.cover()

    def on_screen_resume(self) -> None:
        for view in self.query(FramebufferView):
            view.uncover()

    def action_leave(self) -> None:
        self.state = "left"
        # Now, not at unmount: the next screen is drawn before this one is removed.
        self.query_one(FramebufferView).release()
        self._keys.put(None)
        session, self.session = self.session, None
        if session is not None:
            threading.Thread(target=session.close, name="rfb-close", daemon=True).start()
        self.dismiss(None)

    def action_ctrl_alt_del(self) -> None:
        if self.session is None:
            return
        if self.readonly:
            self.notify("read-only console: Ctrl-Alt-Del is not sent", severity="warning")
            return

        def answered(reason: str | None) -> None:
            if reason is not None and self.session is not None:
                self._keys.put([CONTROL, ALT, NAMED_KEYS["delete"]])
                self._status(f"Ctrl-Alt-Del sent to {self.server.name}")

        self.app.push_screen(
            ConfirmScreen(
                f"Send Ctrl-Alt-Del to server {self.server.name} ({self.server.id})? "
                "The guest will probably reboot."
            ),
            answered,
        )

    def action_screenshot(self) -> None:
        if self.session is not None:
            self._screenshot(
                self.session, self.screenshot_dir / screenshot_name(self.server, datetime.now())
            )

    @work(thread=True, exit_on_error=False, group="console-screenshot")
    def _screenshot(self, session: RfbSession, path: Path) -> None:
        try:
            written = session.screenshot(path)
        except Exception as exc:
            self.app.call_from_thread(
                self.app.notify, f"screenshot: {describe_exception(exc)}", severity="error"
            )
            return
        self.last_screenshot = written
        self.app.call_from_thread(self.app.notify, f"screenshot written to {written}", timeout=10)
        self.app.call_from_thread(self._status, f"screenshot written to {written}")

    def action_open_browser(self) -> None:
        self._open_browser()

    @work(thread=True, exit_on_error=False, group="console-browser")
    def _open_browser(self) -> None:
        try:
            url = self.open_in_browser() if self.open_in_browser is not None else None
        except Exception as exc:
            message, severity = f"open in browser: {describe_exception(exc)}", "error"
        else:
            if url:
                message, severity = (
                    f"console of {self.server.name} in a browser: {url}",
                    "information",
                )
            else:
                message = "no plugin opens consoles in a browser (the VNC bridge plugin does)"
                severity = "warning"
        self.app.call_from_thread(self.app.notify, message, severity=severity, timeout=10)

    def on_unmount(self) -> None:
        self._keys.put(None)
        session, self.session = self.session, None
        if session is not None:
            with contextlib.suppress(Exception):
                threading.Thread(target=session.close, daemon=True).start()


def console_screen_for(app: Any, source: CloudSource, server: ServerRow) -> ConsoleScreen:
    """The console screen as the Servers pane opens it, wired to the app's plugins."""
    pm = getattr(app, "plugin_manager", None)
    cloud = getattr(source, "name", None)

    def open_in_browser() -> str | None:
        if pm is None:
            return None
        result = pm.hook.novaconsole_open_console(server_id=server.id, cloud=cloud)
        return str(result) if result else None

    return ConsoleScreen(
        source,
        server,
        opener=getattr(app, "console_opener", None) or default_opener,
        readonly=bool(getattr(app, "readonly", False)),
        screenshot_dir=getattr(app, "screenshot_dir", None),
        open_in_browser=open_in_browser,
        graphics=getattr(app, "graphics", None),
    )
