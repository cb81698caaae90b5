"""Record what a real QEMU VNC server sends our RFB client, for ``fake_rfb.py``.

    python tests/ui/record_rfb.py                 # a SeaBIOS guest of its own (no disk)
    python tests/ui/record_rfb.py HOST:PORT       # any VNC server (e.g. a lab guest's)

It waits until the screen shows "No bootable device." (the row under it) and stays the
same for two updates, then writes ``data/rfb_seabios.json``.
"""

from __future__ import annotations

import base64
import json
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "vnc"))

from qemu_guest import QEMU, seabios_guest, text_rows  # noqa: E402

from novaconsole.vnc.framebuffer import Rect  # noqa: E402
from novaconsole.vnc.probe import SocketTransport  # noqa: E402
from novaconsole.vnc.session import RfbSession  # noqa: E402


class RecordingTransport(SocketTransport):
    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.chunks: list[bytes] = []
        self.recording = True

    def receive(self) -> bytes:
        data = super().receive()
        if self.recording:
            self.chunks.append(data)
        return data


def record(host: str, port: int, label: str) -> dict[str, Any]:
    sock = socket.create_connection((host, port), timeout=10)
    transport = RecordingTransport(sock)
    with RfbSession(transport, label) as session:
        session.start()
        seen, previous = -1, b""
        while session.wait_for_update(60, after=seen):
            seen = session.update_count
            fb = session.snapshot()
            top = fb.crop(Rect(0, 0, fb.width, min(fb.height, 8 * 16)))
            if 7 in text_rows(fb) and top == previous:
                transport.recording = False
                break
            previous = top
        else:
            raise SystemExit(f"the screen never settled: {session.error}")
        updates = session.update_count
    return {
        "recorded_from": label,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "updates": updates,
        "chunks": [base64.b64encode(c).decode() for c in transport.chunks],
    }


def main(argv: list[str]) -> int:
    if argv:
        host, _, port_text = argv[0].rpartition(":")
        data = record(host, int(port_text), f"VNC server at {argv[0]}")
    else:
        if QEMU is None:
            raise SystemExit("qemu-system-x86_64 is not installed")
        with seabios_guest("rfb-record", boot_menu=False) as port:
            data = record("127.0.0.1", port, "QEMU 7.2 SeaBIOS, std VGA, no disk")
    out = HERE / "data" / "rfb_seabios.json"
    out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"{out}: {len(data['chunks'])} chunks, {data['updates']} updates")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
