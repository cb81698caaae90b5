"""``FakeRfbTransport``: replays a recorded RFB byte stream from a real QEMU, for snapshots.

It is a fake, for tests that need determinism (the console screen's snapshots and Pilot
tests): ``data/rfb_seabios.json`` holds what a real QEMU VNC server sent our client,
chunk by chunk, as recorded by ``record_rfb.py``. Replayed, the same client code decodes
the same screen every time. Everything the client sends is kept in ``sent``. The same
features run against a real QEMU in ``tests/vnc/test_rfb.py`` and against the lab's guest
in ``tests/lab/test_console_screen_lab.py``.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
from pathlib import Path
from typing import Any

from novaconsole.vnc.probe import TransportClosed
from novaconsole.vnc.serial import SerialSession
from novaconsole.vnc.session import RfbSession

RFB_RECORDING = Path(__file__).parent / "data" / "rfb_seabios.json"


def load_rfb_recording(path: Path = RFB_RECORDING) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


class FakeRfbTransport:
    """Hands out the recorded server chunks, then waits (an idle screen) until closed."""

    def __init__(self, recording: dict[str, Any] | None = None, *, hang_up: bool = False) -> None:
        data = recording if recording is not None else load_rfb_recording()
        #: End the stream after the recording, as a proxy whose token expired would.
        self.hang_up = hang_up
        self.chunks = [base64.b64decode(c) for c in data["chunks"]]
        self.updates = int(data["updates"])
        self.sent = bytearray()
        self._closed = threading.Event()
        #: Set once the reader asks for more after the last chunk: all of it is applied.
        self.drained = threading.Event()

    def receive(self) -> bytes:
        if self.chunks:
            return self.chunks.pop(0)
        self.drained.set()
        if self.hang_up:
            raise TransportClosed("close frame 1000 Target closed")
        self._closed.wait()
        raise TransportClosed("closed by the test")

    def send(self, data: bytes) -> None:
        self.sent += data

    def abort(self) -> None:
        self._closed.set()

    def close(self) -> None:
        self._closed.set()

    def key_events(self) -> list[tuple[int, int, int]]:
        """(down, keysym, scancode) of every key event sent (QEMU's or the plain one)."""
        out: list[tuple[int, int, int]] = []
        data = bytes(self.sent)
        pos = 0
        sizes = {0: 20, 3: 10, 5: 6}
        while pos < len(data):
            kind = data[pos]
            if kind == 2:  # SetEncodings
                (count,) = struct.unpack_from(">H", data, pos + 2)
                pos += 4 + 4 * count
            elif kind == 4:
                down, keysym = struct.unpack_from(">BxxI", data, pos + 1)
                out.append((down, keysym, 0))
                pos += 8
            elif kind == 255:
                down, keysym, scancode = struct.unpack_from(">HII", data, pos + 2)
                out.append((down, keysym, scancode))
                pos += 12
            elif kind in sizes:
                pos += sizes[kind]
            elif data[pos : pos + 4] == b"RFB ":
                pos += 12
            else:
                pos += 1  # security type / ClientInit bytes of the handshake
        return out


class FakeRfbOpener:
    """A console opener for the screen: every session replays the recording."""

    def __init__(self, *, hang_up: bool = False) -> None:
        self.urls: list[str] = []
        self.transports: list[FakeRfbTransport] = []
        self.hang_up = hang_up

    def __call__(self, url: str) -> RfbSession:
        self.urls.append(url)
        transport = FakeRfbTransport(hang_up=self.hang_up)
        self.transports.append(transport)
        session = RfbSession(transport, "fake console proxy")
        session.start()
        return session


#: What the serial screen's fake guest prints: written by hand in the shape of a busybox
#: guest's serial console (kernel line, a coloured banner, a prompt), with the escape
#: sequences a real one sends (colour, bold, clear to end of line).
SERIAL_TRANSCRIPT: tuple[bytes, ...] = (
    b"[    1.234567] Run /init as init process\r\n",
    b"\x1b[1;32mWelcome to the novaconsole lab guest\x1b[0m (busybox)\r\n",
    b"\x1b[33mwarning:\x1b[0m no network configured\x1b[K\r\n",
    b"/ # ",
)


class FakeSerialTransport:
    """Hands out :data:`SERIAL_TRANSCRIPT`, then waits until closed; keeps what was sent."""

    def __init__(self) -> None:
        self.chunks = list(SERIAL_TRANSCRIPT)
        self.sent = bytearray()
        self._closed = threading.Event()
        self.drained = threading.Event()

    def receive(self) -> bytes:
        if self.chunks:
            return self.chunks.pop(0)
        self.drained.set()
        self._closed.wait()
        raise TransportClosed("closed by the test")

    def send(self, data: bytes) -> None:
        self.sent += data

    def abort(self) -> None:
        self._closed.set()

    def close(self) -> None:
        self._closed.set()


class FakeSerialOpener:
    """A serial opener for the screen: every session replays the transcript."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.transports: list[FakeSerialTransport] = []

    def __call__(self, url: str) -> SerialSession:
        self.urls.append(url)
        transport = FakeSerialTransport()
        self.transports.append(transport)
        return SerialSession(transport, "fake serial console proxy")
