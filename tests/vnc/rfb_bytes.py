"""RFB server messages as bytes, for the client's transcript tests (what a server would send).

The ZRLE encoder here writes each subencoding the way RFC 6143 7.7.6 describes it, so
the transcript exercises every decoder path; the real-QEMU tests check the same decoder
against QEMU's own encoder.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

NAME = b"QEMU (rfb-test)"


def server_init(width: int, height: int, name: bytes = NAME) -> bytes:
    # 32 bpp, depth 24, little endian, true colour, shifts 16/8/0: QEMU's own default.
    return (
        struct.pack(">HHBBBBHHHBBBxxx", width, height, 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
        + struct.pack(">I", len(name))
        + name
    )


def handshake(width: int = 8, height: int = 4) -> bytes:
    """RFB 3.8, security None, SecurityResult OK, ServerInit."""
    return b"RFB 003.008\n" + bytes([1, 1]) + struct.pack(">I", 0) + server_init(width, height)


def bgrx(pixels: Sequence[tuple[int, int, int]]) -> bytes:
    """RGB triples as the 32 bpp little-endian pixels we ask for (B, G, R, padding)."""
    return b"".join(bytes([b, g, r, 0]) for r, g, b in pixels)


def cpixels(pixels: Sequence[tuple[int, int, int]]) -> bytes:
    """ZRLE's 3-byte CPIXELs for our format: the padding byte left out."""
    return b"".join(bytes([b, g, r]) for r, g, b in pixels)


def update(*rects: bytes) -> bytes:
    return struct.pack(">BxH", 0, len(rects)) + b"".join(rects)


def rect_header(x: int, y: int, w: int, h: int, encoding: int) -> bytes:
    return struct.pack(">HHHHi", x, y, w, h, encoding)


def raw_rect(x: int, y: int, w: int, h: int, pixels: Sequence[tuple[int, int, int]]) -> bytes:
    assert len(pixels) == w * h
    return rect_header(x, y, w, h, 0) + bgrx(pixels)


def copy_rect(x: int, y: int, w: int, h: int, src_x: int, src_y: int) -> bytes:
    return rect_header(x, y, w, h, 1) + struct.pack(">HH", src_x, src_y)


class ZStream:
    """One zlib stream for a whole connection, flushed after each rectangle (as servers do)."""

    def __init__(self) -> None:
        self._z = zlib.compressobj()

    def pack(self, data: bytes) -> bytes:
        out = self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)
        return struct.pack(">I", len(out)) + out


def zlib_rect(
    stream: ZStream, x: int, y: int, w: int, h: int, pixels: Sequence[tuple[int, int, int]]
) -> bytes:
    return rect_header(x, y, w, h, 6) + stream.pack(bgrx(pixels))


def zrle_run(length: int) -> bytes:
    """A ZRLE run length: 255s and a final byte summing to length - 1."""
    rest = length - 1
    out = bytearray()
    while rest >= 255:
        out.append(255)
        rest -= 255
    out.append(rest)
    return bytes(out)


def zrle_tile_raw(pixels: Sequence[tuple[int, int, int]]) -> bytes:
    return b"\x00" + cpixels(pixels)


def zrle_tile_solid(colour: tuple[int, int, int]) -> bytes:
    return b"\x01" + cpixels([colour])


def zrle_tile_packed(
    palette: Sequence[tuple[int, int, int]], indices: Sequence[int], width: int
) -> bytes:
    bits = 1 if len(palette) == 2 else 2 if len(palette) <= 4 else 4
    out = bytearray([len(palette)]) + cpixels(palette)
    for start in range(0, len(indices), width):
        row = indices[start : start + width]
        acc, used = 0, 0
        for index in row:
            acc = (acc << bits) | index
            used += bits
            if used == 8:
                out.append(acc)
                acc, used = 0, 0
        if used:
            out.append(acc << (8 - used))
    return bytes(out)


def zrle_tile_plain_rle(runs: Sequence[tuple[tuple[int, int, int], int]]) -> bytes:
    out = bytearray([128])
    for colour, length in runs:
        out += cpixels([colour]) + zrle_run(length)
    return bytes(out)


def zrle_tile_palette_rle(
    palette: Sequence[tuple[int, int, int]], runs: Sequence[tuple[int, int]]
) -> bytes:
    out = bytearray([128 + len(palette)]) + cpixels(palette)
    for index, length in runs:
        out += bytes([index]) if length == 1 else bytes([index | 0x80]) + zrle_run(length)
    return bytes(out)


def zrle_rect(stream: ZStream, x: int, y: int, w: int, h: int, tiles: Sequence[bytes]) -> bytes:
    return rect_header(x, y, w, h, 16) + stream.pack(b"".join(tiles))


def desktop_size(width: int, height: int) -> bytes:
    return rect_header(0, 0, width, height, -223)


def qemu_extended_key_ack() -> bytes:
    return rect_header(0, 0, 0, 0, -258)


def bell() -> bytes:
    return b"\x02"


def cut_text(text: str) -> bytes:
    data = text.encode("latin-1")
    return struct.pack(">BxxxI", 3, len(data)) + data


def colour_map_entries(count: int) -> bytes:
    return struct.pack(">BxHH", 1, 0, count) + b"\x00\x01" * 3 * count
