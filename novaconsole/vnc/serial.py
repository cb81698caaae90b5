"""Serial consoles: a byte stream over nova-serialproxy's websocket, and a raw terminal on it.

Nova's ``POST /servers/{id}/remote-consoles`` with ``protocol=serial, type=serial`` returns
``ws://HOST:6083/?token=...``. nova-serialproxy is the same websockify ``WebSocketProxy``
as nova-novncproxy (checks after the upgrade, Origin scheme http/ws), relaying the raw
bytes of the guest's serial port (a QEMU TCP chardev on the compute node). websockify
answers subprotocol ``binary`` when offered and accepts none; we offer ``binary``.

:func:`run_raw_terminal` is ``virsh console`` for the shell: the local terminal in raw mode,
stdin to the guest, the guest to stdout, ``Ctrl-]`` to detach, the terminal restored on
every way out.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
import threading
import tty
from collections.abc import Callable
from types import FrameType, TracebackType

from novaconsole.vnc.probe import (
    ProbeError,
    Transport,
    TransportClosed,
    WebSocketTransport,
    _open_websocket,
    parse_console_url,
)

#: Ctrl-] : the detach key of ``virsh console`` and telnet.
ESCAPE = b"\x1d"


class SerialSession:
    """A connected serial console; ``where`` names the proxy in errors (never the token)."""

    def __init__(self, transport: Transport, where: str) -> None:
        self.transport = transport
        self.where = where
        self._send_lock = threading.Lock()
        self._closing = False
        self.closed = False
        #: Why the stream ended (one line), or None while open or after :meth:`close`.
        self.error: str | None = None

    @classmethod
    def open_url(cls, url: str, *, origin: str | None = "", timeout: float = 10.0) -> SerialSession:
        """Open a serial console URL from Nova (``ws://HOST:6083/?token=...``)."""
        endpoint = parse_console_url(url)
        sent_origin = endpoint.origin if origin == "" else origin
        ws = _open_websocket(endpoint, sent_origin, timeout)
        return cls(
            WebSocketTransport(ws), f"serial console proxy at {endpoint.host}:{endpoint.port}"
        )

    def read(self) -> bytes:
        """The guest's next bytes (blocking); ``b""`` once the stream ended (see :attr:`error`).

        An idle guest sends nothing for a long time: socket timeouts are waited through.
        """
        while not self._closing:
            try:
                return self.transport.receive()
            except TimeoutError:
                continue
            except TransportClosed as exc:
                if not self._closing:
                    detail = f" ({exc.detail})" if exc.detail else ""
                    self.error = f"{self.where} closed the connection{detail}"
                break
            except OSError as exc:
                if not self._closing:
                    self.error = f"{self.where}: connection lost: {exc.strerror or exc}"
                break
        self.closed = True
        return b""

    def write(self, data: bytes) -> None:
        """Send bytes to the guest's serial port (from any thread)."""
        if self.closed:
            raise ProbeError(self.error or f"the serial console at {self.where} is closed")
        if data:
            with self._send_lock:
                try:
                    self.transport.send(data)
                except Exception as exc:
                    raise ProbeError(f"{self.where}: cannot send: {exc}") from None

    def start_reader(
        self, on_data: Callable[[bytes], None], on_end: Callable[[str | None], None]
    ) -> threading.Thread:
        """A daemon thread calling ``on_data(bytes)`` per chunk, then ``on_end(error)``."""

        def loop() -> None:
            while data := self.read():
                on_data(data)
            on_end(self.error)

        thread = threading.Thread(target=loop, name="serial-reader", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Close the stream; a thread blocked in :meth:`read` returns ``b""``."""
        self._closing = True
        abort = getattr(self.transport, "abort", None)
        if abort is not None:
            abort()
        self.transport.close()
        self.closed = True

    def __enter__(self) -> SerialSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def run_raw_terminal(
    session: SerialSession,
    *,
    stdin_fd: int | None = None,
    stdout_fd: int | None = None,
    escape: bytes = ESCAPE,
    banner: str | None = None,
) -> str | None:
    """Attach the terminal to ``session`` until ``escape`` is typed or the stream ends.

    Returns ``None`` when the operator detached (or stdin ended), else the one-line reason
    the stream ended. The terminal's mode is restored however this returns or raises
    (SIGTERM and SIGHUP included); the session is closed.
    """
    in_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    out_fd = sys.stdout.fileno() if stdout_fd is None else stdout_fd
    is_tty = os.isatty(in_fd)
    wake_read, wake_write = os.pipe()
    ended: list[str | None] = []

    def on_data(data: bytes) -> None:
        with contextlib.suppress(OSError):
            _write_all(out_fd, data)

    def on_end(error: str | None) -> None:
        ended.append(error)
        with contextlib.suppress(OSError):
            os.write(wake_write, b"x")

    saved = None
    reader: threading.Thread | None = None
    previous_handlers: dict[int, object] = {}

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    try:
        if is_tty:
            saved = termios.tcgetattr(in_fd)
            tty.setraw(in_fd)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                previous_handlers[sig] = signal.signal(sig, terminate)
        if banner:
            # Raw mode: a bare \n would not return the carriage.
            _write_all(out_fd, banner.replace("\n", "\r\n").encode() + b"\r\n")
        reader = session.start_reader(on_data, on_end)
        while not ended:
            ready, _, _ = select.select([in_fd, wake_read], [], [])
            if in_fd not in ready:
                continue
            data = os.read(in_fd, 4096)
            if not data:
                break  # stdin ended (a pipe): detach
            if escape in data:
                session.write(data[: data.index(escape)])
                break
            try:
                session.write(data)
            except ProbeError:
                break  # the reader saw the end too; its reason is returned below
    finally:
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        session.close()
        if reader is not None:
            reader.join(timeout=5)  # before the pipe closes: on_end writes to it
        os.close(wake_read)
        os.close(wake_write)
    return ended[0] if ended else None
