"""Pixel graphics for the console screen: Sixel checked with libsixel's decoder, Kitty's
payload decoded back to pixels, and terminal detection on recorded replies and a real pty."""

from __future__ import annotations

import base64
import fcntl
import os
import re
import select
import shutil
import struct
import subprocess
import termios
import threading
import tty
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from png_decode import decode_png

from novaconsole.errors import ConfigError
from novaconsole.terminal_graphics import (
    QUERY,
    check_mode,
    parse_reply,
    probe_terminal,
    resolve_graphics,
    typed_ahead,
    winsize_cell,
)
from novaconsole.vnc import kitty
from novaconsole.vnc.framebuffer import Framebuffer, Rect
from novaconsole.vnc.render import scale_pixels
from novaconsole.vnc.sixel import encode_sixel, quantize


def _pixels(width: int, height: int, colour: Callable[[int, int], tuple[int, int, int]]) -> bytes:
    return b"".join(bytes(colour(x, y)) for y in range(height) for x in range(width))


def _console_like(x: int, y: int) -> tuple[int, int, int]:
    """A text console's few colours: grey glyph strokes, a blue bar, black."""
    if y < 7:
        return (0, 0, 170)
    if (x // 3 + y // 5) % 4 == 0:
        return (170, 170, 170)
    return (0, 0, 0) if x % 11 else (255, 255, 85)


def _sixel_to_rgb(tmp_path: Path, sixel: str) -> tuple[int, int, bytes]:
    tool = shutil.which("sixel2png")
    if tool is None:
        pytest.skip("libsixel's sixel2png is not installed (.ci/host-setup.sh installs it)")
    source, target = tmp_path / "image.six", tmp_path / "image.png"
    source.write_text(sixel, encoding="ascii")
    subprocess.run([tool, "-i", str(source), "-o", str(target)], check=True, timeout=60)
    return decode_png(target.read_bytes())


# -- Sixel ------------------------------------------------------------------------------


def test_sixel_of_a_console_screen_decodes_to_the_same_pixels(tmp_path: Path) -> None:
    width, height = 61, 20  # not a multiple of 6 rows: the last band is partial
    rgb = _pixels(width, height, _console_like)
    sixel = encode_sixel(width, height, rgb)
    assert sixel.startswith("\x1bPq")
    assert sixel.endswith("\x1b\\")
    assert not sixel[:-2].endswith("-")  # no line feed after the last band
    w, h, decoded = _sixel_to_rgb(tmp_path, sixel)
    assert (w, h) == (width, height)
    # Sixel colours are percentages: each channel comes back within rounding.
    assert max(abs(a - b) for a, b in zip(rgb, decoded, strict=True)) <= 3


def test_sixel_of_many_colours_uses_the_colour_cube(tmp_path: Path) -> None:
    width, height = 40, 30
    rgb = _pixels(width, height, lambda x, y: (x * 6, y * 8, (x * y) % 256))
    palette, indices = quantize(width, height, rgb)
    assert len(palette) == 216
    assert len(indices) == width * height
    w, h, decoded = _sixel_to_rgb(tmp_path, encode_sixel(width, height, rgb))
    assert (w, h) == (width, height)
    assert max(abs(a - b) for a, b in zip(rgb, decoded, strict=True)) <= 51 + 3


def test_sixel_runs_are_compressed() -> None:
    sixel = encode_sixel(100, 6, bytes(3) * 600)  # one colour, one band
    assert "!100~" in sixel  # 100 columns with all six bits set, as one run


def test_sixel_refuses_a_wrong_size() -> None:
    with pytest.raises(ValueError, match="bytes of RGB for a 2x2 image"):
        encode_sixel(2, 2, b"\0" * 11)


def test_scale_pixels_never_enlarges_and_averages() -> None:
    fb = Framebuffer(4, 2)
    fb.put(Rect(0, 0, 4, 2), _pixels(4, 2, lambda x, y: (255, 255, 255) if x % 2 else (0, 0, 0)))
    how, pixels = scale_pixels(fb, 2, 2)
    assert (how.width, how.height) == (2, 1)
    assert pixels == bytes([127] * 6)
    same, full = scale_pixels(fb, 100, 100)
    assert (same.width, same.height, full) == (4, 2, bytes(fb.pixels))


# -- Kitty ------------------------------------------------------------------------------

_APC = re.compile(r"\x1b_G([^;\x1b]*)(?:;([^\x1b]*))?\x1b\\")


def test_kitty_transmission_decodes_to_the_same_pixels() -> None:
    width, height = 200, 90
    rgb = _pixels(width, height, lambda x, y: (x % 256, y * 2, (x ^ y) % 256))
    text = kitty.transmit(4242, width, height, rgb, 30, 9)
    commands = _APC.findall(text)
    assert "".join(f"\x1b_G{k};{p}\x1b\\" if p else f"\x1b_G{k}\x1b\\" for k, p in commands) == text
    first = dict(item.split("=") for item in commands[0][0].split(","))
    assert first["a"] == "T"
    assert first["U"] == "1"
    assert first["i"] == "4242"
    assert (first["f"], first["o"], first["s"], first["v"]) == ("24", "z", "200", "90")
    assert (first["c"], first["r"], first["q"]) == ("30", "9", "2")
    assert len(commands) > 1
    assert all(len(p) <= kitty.CHUNK for _, p in commands)
    assert [k.split(",")[-1] for k, _ in commands] == ["m=1"] * (len(commands) - 1) + ["m=0"]
    payload = "".join(p for _, p in commands)
    assert zlib.decompress(base64.standard_b64decode(payload)) == rgb


def test_kitty_placeholders_name_row_and_column() -> None:
    row = kitty.placeholder_row(2, 3)
    assert row == "".join(
        kitty.PLACEHOLDER + kitty.DIACRITICS[2] + kitty.DIACRITICS[c] for c in range(3)
    )
    assert kitty.colour_of(0x123456) == (0x12, 0x34, 0x56)
    with pytest.raises(ValueError, match="out of range"):
        kitty.transmit(1, 1, 1, b"\0\0\0", kitty.MAX_CELLS + 1, 1)


# -- detection --------------------------------------------------------------------------

KITTY = b"\x1b_Gi=31;OK\x1b\\\x1b[6;20;10t\x1b[?62;c"
KITTY_REFUSED = b"\x1b_Gi=31;EINVAL:Unknown transmission type\x1b\\\x1b[?62;c"
XTERM_SIXEL = b"\x1b[6;17;9t\x1b[?63;1;2;4;6;9;15;16;22;28c"
FOOT = b"\x1b[6;22;11t\x1b[?62;4;22c"
VTE = b"\x1b[?65;1;9c"
TMUX = b"\x1b[?1;2c"
LATE_KITTY = b"\x1b[?62;c\x1b_Gi=31;OK\x1b\\"


@pytest.mark.parametrize(
    ("reply", "protocol", "cell"),
    [
        (KITTY, "kitty", (10, 20)),
        (KITTY_REFUSED, None, None),
        (XTERM_SIXEL, "sixel", (9, 17)),
        (FOOT, "sixel", (11, 22)),
        (VTE, None, None),
        (TMUX, None, None),
        (LATE_KITTY, None, None),
    ],
)
def test_recorded_replies(reply: bytes, protocol: str | None, cell: tuple[int, int] | None) -> None:
    found, size, answered = parse_reply(reply)
    assert (found, size, answered) == (protocol, cell, True)


def test_no_reply_at_all() -> None:
    assert parse_reply(b"") == (None, None, False)


def _pty(cell_pixels: tuple[int, int] | None) -> tuple[int, int]:
    master, slave = os.openpty()
    x, y = (80 * cell_pixels[0], 24 * cell_pixels[1]) if cell_pixels else (0, 0)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, x, y))
    return master, slave


def test_probe_over_a_real_pty_reads_until_da1() -> None:
    master, slave = _pty(None)
    seen = bytearray()

    def terminal() -> None:  # the other end of the pty, answering as foot does
        while len(seen) < len(QUERY):
            seen.extend(os.read(master, 1024))
        os.write(master, FOOT + b"typed after")

    player = threading.Thread(target=terminal, daemon=True)
    player.start()
    try:
        before = termios.tcgetattr(slave)
        reply = probe_terminal(slave, timeout=10)
        assert termios.tcgetattr(slave) == before  # the terminal's mode is restored
    finally:
        player.join(10)
        os.close(master)
        os.close(slave)
    assert bytes(seen) == QUERY
    assert reply.startswith(FOOT)
    graphics = resolve_graphics("auto", fd=None)
    assert graphics.protocol == "cells"


def test_typed_ahead_is_the_reply_without_the_terminal_s_answers() -> None:
    kitty_ok = len(b"\x1b_Gi=31;OK\x1b\\")  # keys come between answers, not inside one
    assert typed_ahead(b"ab" + KITTY[:kitty_ok] + b"c" + KITTY[kitty_ok:] + b"d") == b"abcd"
    assert typed_ahead(LATE_KITTY + b"q") == b"q"  # a Kitty answer after DA1 is no key
    assert typed_ahead(KITTY_REFUSED) == b""
    assert typed_ahead(b"\x1b[A" + XTERM_SIXEL + b"\x1b[6;1;1tz") == b"\x1b[A\x1b[6;1;1tz"
    assert typed_ahead(b"no answer at all") == b"no answer at all"


def test_keys_typed_during_detection_are_neither_lost_nor_reordered() -> None:
    """One burst from the terminal: keys, its answers, more keys and a paste longer than
    one read. What the probe read comes back as typed ahead; the rest is still queued for
    the TUI (it was flushed when the probe restored the terminal's mode)."""
    master, slave = _pty(None)
    before, after = b"/sc", b"hed\x1b[A"
    paste = bytes(range(0x61, 0x7B)) * 200  # 5200 bytes of a..z: more than one read
    burst = before + FOOT + after + paste
    seen = bytearray()

    def terminal() -> None:  # the other end of the pty, answering as foot does
        while len(seen) < len(QUERY):
            seen.extend(os.read(master, 1024))
        view = memoryview(burst)
        while view:  # the pty takes what fits; the rest waits for the reader
            view = view[os.write(master, view) :]

    player = threading.Thread(target=terminal, daemon=True)
    player.start()
    rest = bytearray()
    try:
        graphics = resolve_graphics("auto", fd=slave, environ={"TERM": "foot"})
        # As Textual's driver does before it reads (TCSANOW: tty.setraw's default,
        # TCSAFLUSH, would drop what is queued).
        tty.setraw(slave, termios.TCSANOW)
        while True:
            ready, _, _ = select.select([slave], [], [], 2)
            if not ready:
                break
            rest.extend(os.read(slave, 65536))
    finally:
        player.join(10)
        os.close(master)
        os.close(slave)
    assert bytes(seen) == QUERY
    assert graphics.protocol == "sixel"
    assert graphics.typed_ahead.startswith(before + after)
    assert graphics.typed_ahead + bytes(rest) == before + after + paste


def test_resolve_uses_the_reply_and_the_window_size() -> None:
    master, slave = _pty((12, 24))
    try:
        assert winsize_cell(slave) == (12, 24)
        env = {"TERM": "xterm-256color"}
        sixel = resolve_graphics("auto", fd=slave, environ=env, probe=lambda fd: XTERM_SIXEL)
        assert (sixel.protocol, sixel.cell_width, sixel.cell_height) == ("sixel", 12, 24)
        none = resolve_graphics("auto", fd=slave, environ=env, probe=lambda fd: VTE)
        assert none.protocol == "cells"
        assert "neither" in none.reason
        silent = resolve_graphics("auto", fd=slave, environ=env, probe=lambda fd: b"")
        assert silent.protocol == "cells"
        assert "did not answer" in silent.reason
        forced = resolve_graphics("kitty", fd=slave, environ=env, probe=lambda fd: VTE)
        assert forced.protocol == "kitty"
        dumb = resolve_graphics("auto", fd=slave, environ={"TERM": "dumb"}, probe=lambda fd: KITTY)
        assert dumb.protocol == "cells"
    finally:
        os.close(master)
        os.close(slave)
    master, slave = _pty(None)
    try:  # no pixel sizes in the window size: the CSI 16 t answer gives the cell
        kitty_term = resolve_graphics("auto", fd=slave, environ=env, probe=lambda fd: KITTY)
        assert (kitty_term.protocol, kitty_term.cell_width, kitty_term.cell_height) == (
            "kitty",
            10,
            20,
        )
    finally:
        os.close(master)
        os.close(slave)


def test_a_bad_mode_is_one_line_naming_where() -> None:
    with pytest.raises(ConfigError, match=r"^--graphics: graphics 'svga' is not one of auto"):
        check_mode("svga", "--graphics")
