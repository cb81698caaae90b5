"""A real QEMU with a real screen for the RFB tests: SeaBIOS on std VGA, no disk.

``-boot menu=on`` makes SeaBIOS print "Press ESC for boot menu." and wait: pressing Escape
(a key event from our client) opens its "Select boot device:" menu, so a key visibly
changes the screen. The long splash time keeps SeaBIOS waiting for the whole test.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from novaconsole.vnc.framebuffer import Framebuffer

QEMU = shutil.which("qemu-system-x86_64")

#: Text-mode glyph height of SeaBIOS's 720x400 VGA text screen.
GLYPH_HEIGHT = 16


def free_vnc_display() -> int:
    for display in range(60, 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 5900 + display))
            except OSError:
                continue
            return display
    raise RuntimeError("no free VNC display between :60 and :99")


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    """Start-up readiness: 127.0.0.1:``port`` accepts, or ``proc`` exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)


@contextmanager
def seabios_guest(
    name: str = "rfb-test", *, boot_menu: bool = True, vnc_password_file: str | None = None
) -> Iterator[int]:
    """Run the guest; yields its VNC port on 127.0.0.1. Killed on exit.

    Without the boot menu SeaBIOS goes straight to "No bootable device." (the lab's
    blank image shows the same). With ``vnc_password_file`` QEMU's VNC server asks for
    VNC Authentication with the password in that file (a QEMU secret object).
    """
    assert QEMU is not None
    display = free_vnc_display()
    vnc = f"127.0.0.1:{display}"
    secret: list[str] = []
    if vnc_password_file is not None:
        secret = ["-object", f"secret,id=vncpw,file={vnc_password_file}"]
        vnc += ",password-secret=vncpw"
    proc = subprocess.Popen(
        [
            QEMU,
            "-machine", "pc", "-accel", "tcg", "-m", "32",
            "-display", "none", "-nodefaults", "-vga", "std", "-net", "none",
            *(["-boot", "menu=on,splash-time=60000"] if boot_menu else []),
            "-name", f"guest={name}",
            *secret,
            "-vnc", vnc,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        port = 5900 + display
        if not wait_listening(port, proc):
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"QEMU did not start its VNC server: {stderr}")
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()


def text_rows(fb: Framebuffer) -> list[int]:
    """Which 16-pixel text rows hold any bright pixel (SeaBIOS prints light grey on black)."""
    rows: set[int] = set()
    stride = fb.width * 3
    for y in range(fb.height):
        if max(fb.pixels[y * stride : (y + 1) * stride], default=0) > 128:
            rows.add(y // GLYPH_HEIGHT)
    return sorted(rows)
