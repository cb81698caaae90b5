"""``SerialScreen``: a server's serial console (nova-serialproxy) in a terminal emulator.

The ``ws://`` URL comes from Nova (``protocol="serial", type="serial"``) in a thread
worker; a :class:`~novaconsole.vnc.serial.SerialSession` reader thread collects the
guest's bytes and posts at most one pending message; the screen feeds them to pyte.
Keys become terminal bytes; ``ctrl+]`` leaves, as in ``virsh console``.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Static

from novaconsole.sources.base import CloudSource
from novaconsole.sources.rows import ServerRow
from novaconsole.ui.pane import describe_exception
from novaconsole.ui.terminal_view import TerminalView, key_bytes
from novaconsole.vnc.serial import SerialSession

#: Opens a serial session for a console URL (blocking; runs in a thread).
SerialOpener = Callable[[str], SerialSession]


def default_serial_opener(url: str) -> SerialSession:
    return SerialSession.open_url(url)


class SerialScreen(Screen[None]):
    """The guest's serial console; every key but ``ctrl+]`` goes to the guest."""

    DEFAULT_CSS = """
    SerialScreen {
        background: $background;
    }
    SerialScreen > #serial-title {
        height: 1;
        padding: 0 1;
        background: $primary;
        color: $text;
        text-style: bold;
    }
    SerialScreen > #serial-status {
        height: 1;
        padding: 0 1;
        background: $panel;
        color: $text-muted;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+right_square_bracket", "leave", "Leave", priority=True, key_display="^]"),
    ]

    class Output(Message):
        """The guest wrote something (collected in the screen's buffer)."""

    class Ended(Message):
        def __init__(self, reason: str | None) -> None:
            super().__init__()
            self.reason = reason

    def __init__(
        self,
        source: CloudSource,
        server: ServerRow,
        *,
        opener: SerialOpener = default_serial_opener,
        readonly: bool = False,
    ) -> None:
        super().__init__()
        self.source = source
        self.server = server
        self.opener = opener
        self.readonly = readonly
        self.session: SerialSession | None = None
        self.state = "connecting"
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._outgoing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def compose(self) -> ComposeResult:
        title = f"Serial console of {self.server.name} ({self.server.id})"
        if self.readonly:
            title += " · read-only: keys are not sent"
        yield Static(title, id="serial-title", markup=False)
        yield TerminalView(id="serial-view")
        yield Static("connecting to Nova for a serial console…", id="serial-status", markup=False)

    def on_mount(self) -> None:
        self.query_one(TerminalView).focus()
        self._connect()

    @property
    def terminal(self) -> TerminalView:
        return self.query_one(TerminalView)

    @work(thread=True, exclusive=True, exit_on_error=False, group="serial-connect")
    def _connect(self) -> None:
        try:
            url = self.source.remote_console_url(self.server, "serial")
            session = self.opener(url)
        except Exception as exc:
            self.app.call_from_thread(
                self._status, f"serial console of {self.server.name}: {describe_exception(exc)}"
            )
            self.state = "failed"
            return
        self.app.call_from_thread(self._connected, session)

    def _connected(self, session: SerialSession) -> None:
        if not self.is_attached:
            threading.Thread(target=session.close, daemon=True).start()
            return
        self.session = session
        self.state = "connected"
        self._status(f"connected to {session.where} · ctrl+] leaves · press Enter for a prompt")
        session.start_reader(self._on_data, self._on_end)
        self._send_loop(session)

    def _on_data(self, data: bytes) -> None:
        """In the reader thread: collect, and post one message until the screen drains it."""
        with self._lock:
            first = not self._pending
            self._pending.append(data)
        if first:
            self.post_message(self.Output())

    def _on_end(self, reason: str | None) -> None:
        self.post_message(self.Ended(reason))

    def on_serial_screen_output(self, message: Output) -> None:
        with self._lock:
            data, self._pending = b"".join(self._pending), []
        if data:
            self.terminal.feed(data)

    def on_serial_screen_ended(self, message: Ended) -> None:
        if self.state != "left":
            self.state = "ended"
            self._status(message.reason or "the serial console session ended")

    def _status(self, text: str) -> None:
        self.query_one("#serial-status", Static).update(text)

    def on_key(self, event: events.Key) -> None:
        event.stop()
        event.prevent_default()
        if self.session is None or self.readonly or self.state != "connected":
            return
        data = key_bytes(event.key, event.character)
        if data:
            self._outgoing.put(data)

    def _send_loop(self, session: SerialSession) -> None:
        """Start the one thread that writes keys, in order (a plain thread: it lives as
        long as the session, which a Textual worker should not)."""
        app = self.app

        def loop() -> None:
            while (data := self._outgoing.get()) is not None:
                try:
                    session.write(data)
                except Exception as exc:
                    text = f"not sent: {describe_exception(exc)}"
                    with contextlib.suppress(Exception):
                        app.call_from_thread(self._status, text)

        threading.Thread(target=loop, name="serial-keys", daemon=True).start()

    def action_leave(self) -> None:
        self.state = "left"
        self._outgoing.put(None)
        session, self.session = self.session, None
        if session is not None:
            threading.Thread(target=session.close, name="serial-close", daemon=True).start()
        self.dismiss(None)

    def on_unmount(self) -> None:
        self._outgoing.put(None)
        session, self.session = self.session, None
        if session is not None:
            threading.Thread(target=session.close, daemon=True).start()


def serial_screen_for(app: Any, source: CloudSource, server: ServerRow) -> SerialScreen:
    """The serial screen as the Servers pane opens it (the app may replace the opener)."""
    return SerialScreen(
        source,
        server,
        opener=getattr(app, "serial_opener", None) or default_serial_opener,
        readonly=bool(getattr(app, "readonly", False)),
    )
