"""``RfbSession``: the blocking, threaded adapter over :class:`~novaconsole.vnc.rfb.RfbClient`.

One reader thread owns the transport's receiving side (the "one owner per connection"
habit): it feeds the sans-I/O client, keeps the framebuffer current, asks for the next
incremental update after each one, and tells listeners. Other threads (the TUI, the CLI)
send keys and pointer events through the same lock. Both the TUI console screen and
``novaconsole console --screenshot`` use it.

    with RfbSession.open_url(url) as session:       # websocket to nova-novncproxy
        session.wait_for_update(timeout=10)
        session.type_text("root\\n")
        session.screenshot("screen.png")
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from novaconsole.vnc.framebuffer import Framebuffer, Rect
from novaconsole.vnc.keys import ALT, CONTROL, NAMED_KEYS, SHIFT, Key, char_key, parse_combo
from novaconsole.vnc.png import write_png
from novaconsole.vnc.probe import (
    ProbeError,
    RfbError,
    RfbHandshake,
    SocketTransport,
    Transport,
    TransportClosed,
    WebSocketTransport,
    _open_websocket,
    parse_console_url,
)
from novaconsole.vnc.rfb import (
    Connected,
    DesktopResized,
    FramebufferUpdated,
    RfbClient,
    RfbEvent,
)


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The session ended: ``reason`` is one line (``None`` when we closed it ourselves)."""

    reason: str | None


SessionEvent = RfbEvent | Disconnected
Listener = Callable[[SessionEvent], None]


class RfbSession:
    """A connected RFB client with a reader thread; ``where`` names the peer in errors."""

    def __init__(
        self, transport: Transport, where: str, *, client: RfbClient | None = None
    ) -> None:
        self.transport = transport
        self.where = where
        self.client = client or RfbClient()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._listeners: list[Listener] = []
        self._thread: threading.Thread | None = None
        self._closing = False
        #: FramebufferUpdate messages applied so far.
        self.update_count = 0
        #: Why the session ended (one line), or None while it runs or after :meth:`close`.
        self.error: str | None = None
        self.closed = False
        #: Set (under the lock) once the reader thread told its listeners the session ended.
        self._ended = False

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open_url(cls, url: str, *, origin: str | None = "", timeout: float = 10.0) -> RfbSession:
        """Connect to a console URL (Nova's noVNC URL or ``ws(s)://``) and start the session.

        ``origin`` as in :func:`~novaconsole.vnc.probe.probe_console`: the page's own origin
        by default. Errors are one line naming the proxy (tokens redacted).
        """
        endpoint = parse_console_url(url)
        sent_origin = endpoint.origin if origin == "" else origin
        ws = _open_websocket(endpoint, sent_origin, timeout)
        session = cls(WebSocketTransport(ws), f"console proxy at {endpoint.host}:{endpoint.port}")
        session.start()
        return session

    @classmethod
    def open_tcp(cls, host: str, port: int, *, timeout: float = 10.0) -> RfbSession:
        """Connect straight to a VNC server (a compute node's port) and start the session."""
        where = f"VNC server at {host}:{port}"
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ProbeError(f"cannot connect to {where}: {exc.strerror or exc}") from None
        session = cls(SocketTransport(sock), where)
        session.start()
        return session

    def start(self) -> RfbHandshake:
        """Complete the handshake in this thread, then start the reader thread."""
        client = self.client
        try:
            while not client.connected:
                try:
                    data = self.transport.receive()
                except TransportClosed as exc:
                    detail = f" ({exc.detail})" if exc.detail else ""
                    raise ProbeError(
                        f"{self.where} closed the connection during the RFB handshake{detail}"
                    ) from None
                except TimeoutError:
                    raise ProbeError(
                        f"{self.where} sent nothing in time during the RFB handshake"
                    ) from None
                try:
                    events = client.receive(data)
                except RfbError as exc:
                    raise RfbError(f"{self.where}: {exc}") from None
                self._send_pending()
                self._dispatch(events)
        except BaseException:
            self.transport.close()
            self.closed = True
            raise
        assert client.handshake is not None
        self._thread = threading.Thread(target=self._read_loop, name="rfb-reader", daemon=True)
        self._thread.start()
        return client.handshake

    # -- the reader thread ---------------------------------------------------------------

    def _read_loop(self) -> None:
        reason: str | None = None
        try:
            while not self._closing:
                try:
                    data = self.transport.receive()
                except TimeoutError:
                    continue  # an unchanging screen sends nothing: that is not an error
                with self._lock:
                    events = self.client.receive(data)
                    for event in events:
                        if isinstance(event, FramebufferUpdated):
                            # Ask for the next one at once; the server answers when the
                            # screen changes, so this never spins.
                            self.update_count += 1
                            self.client.request_update()
                    self._send_pending()
                    if events:
                        self._changed.notify_all()
                self._dispatch(events)
        except TransportClosed as exc:
            if not self._closing:
                detail = f" ({exc.detail})" if exc.detail else ""
                reason = f"{self.where} closed the connection{detail}"
        except RfbError as exc:
            reason = f"{self.where}: {exc}"
        except OSError as exc:
            if not self._closing:
                reason = f"{self.where}: connection lost: {exc.strerror or exc}"
        finally:
            with self._lock:
                self.error = reason
                self.closed = True
                self._changed.notify_all()
                self._ended = True
                listeners = list(self._listeners)
            self.transport.close()
            for listener in listeners:
                listener(Disconnected(reason))

    def _send_pending(self) -> None:
        with self._lock:
            out = self.client.data_to_send()
            if out:
                self.transport.send(out)

    def _dispatch(self, events: Sequence[SessionEvent]) -> None:
        for event in events:
            for listener in list(self._listeners):
                listener(event)

    # -- listening -----------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event)`` for every event, in the reader thread (keep it short).

        A session can end before anyone listens (a proxy that hangs up at once): a
        listener added after the end is told :class:`Disconnected` at once, in this
        thread, or it would wait for an end that already happened.
        """
        with self._lock:
            ended = self._ended
            if not ended:
                self._listeners.append(listener)
        if ended:
            listener(Disconnected(self.error))

    def remove_listener(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def wait_for_update(self, timeout: float, *, after: int | None = None) -> bool:
        """Wait until more than ``after`` (default: none yet) updates were applied.

        Returns False on timeout or when the session ended first.
        """
        target = 0 if after is None else after
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.update_count <= target:
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return False
                self._changed.wait(left)
            return True

    @property
    def handshake(self) -> RfbHandshake:
        assert self.client.handshake is not None
        return self.client.handshake

    def snapshot(self) -> Framebuffer:
        """A copy of the framebuffer as it is now."""
        with self._lock:
            return self.client.framebuffer.copy_of()

    def take_dirty(self) -> tuple[Framebuffer, Rect | None]:
        """A copy of the framebuffer and the area changed since the last call."""
        with self._lock:
            fb = self.client.framebuffer
            return fb.copy_of(), fb.take_dirty()

    def screenshot(self, path: str | Path) -> Path:
        """Write the current screen as PNG (atomically); returns the path."""
        fb = self.snapshot()
        if fb.width == 0 or fb.height == 0:
            raise ProbeError(f"{self.where} has an empty {fb.width}x{fb.height} screen")
        return write_png(path, fb.width, fb.height, fb.pixels)

    # -- input ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ProbeError(self.error or f"the console session with {self.where} is closed")

    def send_key(self, key: Key, down: bool) -> None:
        """Press or release one key."""
        with self._lock:
            self._check_open()
            self.client.key_event(key, down)
            self._send_pending()

    def press_keys(self, keys: list[Key]) -> None:
        """Press ``keys`` in order, then release them in reverse (a chord)."""
        with self._lock:
            self._check_open()
            for key in keys:
                self.client.key_event(key, True)
            for key in reversed(keys):
                self.client.key_event(key, False)
            self._send_pending()

    def press(self, combo: str) -> None:
        """Press a named key or chord: ``"enter"``, ``"ctrl+c"``, ``"ctrl+alt+f2"``."""
        try:
            keys = parse_combo(combo)
        except ValueError as exc:
            raise ProbeError(str(exc)) from None
        self.press_keys(keys)

    def type_text(self, text: str) -> None:
        """Type ``text`` as key strokes (US layout scancodes; Shift where needed)."""
        with self._lock:
            self._check_open()
            for char in text:
                key, shifted = char_key(char)
                if shifted:
                    self.client.key_event(SHIFT, True)
                self.client.key_event(key, True)
                self.client.key_event(key, False)
                if shifted:
                    self.client.key_event(SHIFT, False)
            self._send_pending()

    def ctrl_alt_del(self) -> None:
        """Send Ctrl-Alt-Del (the guest usually reboots: ask the operator first)."""
        self.press_keys([CONTROL, ALT, NAMED_KEYS["delete"]])

    def pointer(self, x: int, y: int, buttons: int = 0) -> None:
        """Move the pointer to (x, y) with ``buttons`` held."""
        with self._lock:
            self._check_open()
            self.client.pointer_event(x, y, buttons)
            self._send_pending()

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the reader and close the transport; safe to call twice, from any thread."""
        self._closing = True
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # Closing a socket does not wake a thread blocked in recv(); shutting it down does.
            abort = getattr(self.transport, "abort", None)
            if abort is not None:
                abort()
            thread.join(timeout=5)
        self.transport.close()
        self.closed = True

    def __enter__(self) -> RfbSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = [
    "Connected",
    "DesktopResized",
    "Disconnected",
    "FramebufferUpdated",
    "RfbSession",
    "SessionEvent",
]
