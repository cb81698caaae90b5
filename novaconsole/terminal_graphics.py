"""Which pixel graphics the terminal draws (Kitty's protocol, Sixel, or neither), and its cell size.

Asked once, before the TUI takes the terminal: a Kitty graphics query, ``CSI 16 t`` (cell
size in pixels) and Primary Device Attributes (DA1, ``CSI c``), in that order. Every
terminal answers DA1, so its reply ends the wait: a Kitty ``OK`` before it means Kitty
graphics, a DA1 attribute 4 means Sixel. The parsing is pure (tested on recorded
replies); :func:`probe_terminal` is the thin I/O around it. No Textual here.

Keys typed while the terminal is asked (the wait lasts up to a second) arrive mixed with
its answers: the bytes read that are not answers are kept (:func:`typed_ahead`, handed to
the TUI to replay first) and those not read yet stay queued for the TUI to read: the
probe drops none and keeps their order. (Between the probe and the TUI taking the
terminal, the terminal is in its own mode again, as for any program starting: keys
typed in that moment are echoed and line-edited before the TUI reads them.)
"""

from __future__ import annotations

import os
import re
import select
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from novaconsole.errors import ConfigError

#: What the ``graphics`` setting, ``--graphics`` and ``NOVACONSOLE_GRAPHICS`` accept.
GRAPHICS_MODES = ("auto", "kitty", "sixel", "cells")
ENV_VAR = "NOVACONSOLE_GRAPHICS"

#: A 1x1 RGB image query (``a=q``: checked, never stored or shown), cell size, DA1.
QUERY = b"\x1b_Gi=31,s=1,v=1,a=q,t=d,f=24;AAAA\x1b\\\x1b[16t\x1b[c"

#: Assumed when the terminal does not say (a common 8x16 font, cells twice as tall as wide).
DEFAULT_CELL = (8, 16)

_DA1 = re.compile(rb"\x1b\[\?([0-9;]*)c")
_KITTY = re.compile(rb"\x1b_Gi=31;([^\x1b]*)\x1b\\")
_CELL = re.compile(rb"\x1b\[6;([0-9]+);([0-9]+)t")


@dataclass(frozen=True, slots=True)
class TerminalGraphics:
    """How the console draws a guest's screen, and why."""

    protocol: str
    """``kitty``, ``sixel`` or ``cells`` (half blocks)."""
    cell_width: int = DEFAULT_CELL[0]
    """Pixels per cell, across."""
    cell_height: int = DEFAULT_CELL[1]
    """Pixels per cell, down."""
    reason: str = ""
    """One line: how the protocol was chosen (shown in the console's status line)."""
    typed_ahead: bytes = field(default=b"", repr=False)
    """What the operator typed while the terminal was asked (read with its answers), in
    order: the TUI's first input, before anything it reads itself."""


def check_mode(value: str, where: str) -> str:
    """``value`` if it is a graphics mode, else a one-line :class:`ConfigError` naming ``where``."""
    if value not in GRAPHICS_MODES:
        raise ConfigError(f"{where}: graphics {value!r} is not one of {', '.join(GRAPHICS_MODES)}")
    return value


def parse_reply(reply: bytes) -> tuple[str | None, tuple[int, int] | None, bool]:
    """(``kitty``/``sixel``/None, cell size or None, whether DA1 was seen) from the bytes
    a terminal sent back to :data:`QUERY`. A Kitty answer counts only before DA1."""
    da1 = _DA1.search(reply)
    before = reply[: da1.start()] if da1 else reply
    protocol: str | None = None
    kitty = _KITTY.search(before)
    if kitty and kitty.group(1) == b"OK":
        protocol = "kitty"
    elif da1 and "4" in da1.group(1).decode("ascii").split(";")[1:]:
        protocol = "sixel"
    cell = None
    size = _CELL.search(reply)
    if size:
        height, width = int(size.group(1)), int(size.group(2))
        if 0 < width < 1000 and 0 < height < 1000:
            cell = (width, height)
    return protocol, cell, da1 is not None


def typed_ahead(reply: bytes) -> bytes:
    """The bytes of ``reply`` that are not the terminal's answers to :data:`QUERY` (one
    each: Kitty's, the cell size, DA1), in the order they came: keys typed meanwhile."""
    rest = reply
    for answer in (_KITTY, _CELL, _DA1):
        rest = answer.sub(b"", rest, count=1)
    return rest


def winsize_cell(fd: int) -> tuple[int, int] | None:
    """Cell size from ``TIOCGWINSZ``'s pixel fields (0 on many terminals: then None)."""
    import fcntl
    import termios

    try:
        packed = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None
    rows, columns, x_pixels, y_pixels = struct.unpack("HHHH", packed)
    if rows and columns and x_pixels and y_pixels:
        return x_pixels // columns, y_pixels // rows
    return None


def probe_terminal(fd: int, timeout: float = 1.0) -> bytes:
    """Send :data:`QUERY` on the terminal ``fd`` (read and written), read until the DA1
    reply or ``timeout``; the terminal's mode is restored afterwards, and input not read
    yet is left queued (keys typed meanwhile: see :func:`typed_ahead` for those read)."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    reply = b""
    try:
        tty.setraw(fd, termios.TCSANOW)
        os.write(fd, QUERY)
        deadline = time.monotonic() + timeout
        while not _DA1.search(reply):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            reply += chunk
    finally:
        # TCSANOW, not TCSAFLUSH: flushing would drop what the operator typed after the
        # answers (and a paste longer than one read).
        termios.tcsetattr(fd, termios.TCSANOW, saved)
    return reply


def resolve_graphics(
    mode: str,
    *,
    fd: int | None,
    environ: Mapping[str, str] | None = None,
    probe: Callable[[int], bytes] = probe_terminal,
) -> TerminalGraphics:
    """The protocol for ``mode`` (``auto`` asks the terminal on ``fd``; None: not a terminal).

    An explicit mode is used as asked (the operator knows their terminal); ``auto``
    falls back to cells when the terminal answers neither way, or nothing answers.
    ``TERM=dumb`` and a missing terminal never get a query.
    """
    env = os.environ if environ is None else environ
    cell = winsize_cell(fd) if fd is not None else None
    if mode != "auto":
        reply_cell, typed = None, b""
        if mode != "cells" and cell is None and fd is not None:
            reply = probe(fd)
            _, reply_cell, _ = parse_reply(reply)
            typed = typed_ahead(reply)
        width, height = cell or reply_cell or DEFAULT_CELL
        return TerminalGraphics(mode, width, height, f"graphics {mode} as set", typed)
    if fd is None or env.get("TERM", "") in ("", "dumb"):
        return TerminalGraphics("cells", *DEFAULT_CELL, reason="not a graphics terminal")
    reply = probe(fd)
    protocol, reply_cell, answered = parse_reply(reply)
    typed = typed_ahead(reply)
    width, height = cell or reply_cell or DEFAULT_CELL
    if protocol is None:
        why = (
            "the terminal answered neither Kitty graphics nor Sixel"
            if answered
            else ("the terminal did not answer the graphics query")
        )
        return TerminalGraphics("cells", width, height, why, typed)
    reason = f"{protocol} graphics (the terminal says so)"
    return TerminalGraphics(protocol, width, height, reason, typed)
