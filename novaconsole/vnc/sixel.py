"""Packed RGB -> a Sixel image (DEC's bitmap graphics, as xterm, foot, WezTerm and mlterm draw).

A Sixel image is bands of six pixel rows; each band lists, per palette colour, one
character per column whose six low bits say which of the six pixels have that colour.
Colours: the screen's own when it has at most 256 (a text console has 16 or so), else a
6x6x6 colour cube. Everything per pixel runs in C: palette indices come from
``bytes.translate``, and a band's characters for one colour are six translated rows
OR-ed together as big integers (each row owns one bit of every byte, so nothing
carries). No Textual here.
"""

from __future__ import annotations

import re
from functools import cache

#: Most colours a Sixel palette here holds (xterm's default register count is 256).
MAX_COLOURS = 256

#: Device Control String introducer (the raster attributes that follow, ``"1;1;W;H``,
#: set a 1:1 pixel aspect and the image's size).
_START = "\x1bPq"
_END = "\x1b\\"

_RUN = re.compile(r"(.)\1{3,}")


def _run_length(match: re.Match[str]) -> str:
    text = match.group(0)
    return f"!{len(text)}{text[0]}"


@cache
def _bit_table(colour: int, bit: int) -> bytes:
    """A ``bytes.translate`` table: ``colour`` -> ``1 << bit``, every other index -> 0."""
    table = bytearray(256)
    table[colour] = 1 << bit
    return bytes(table)


_CUBE_LEVEL = bytes(min(5, (v * 6) // 256) for v in range(256))
_CUBE_RED = bytes(36 * _CUBE_LEVEL[v] for v in range(256))
_CUBE_GREEN = bytes(6 * _CUBE_LEVEL[v] for v in range(256))
_CUBE_PALETTE = [
    (r * 51, g * 51, b * 51) for r in range(6) for g in range(6) for b in range(6)
]  # index = 36 r + 6 g + b


def quantize(width: int, height: int, rgb: bytes) -> tuple[list[tuple[int, int, int]], bytes]:
    """(palette, one palette index byte per pixel): exact colours when there are at most
    :data:`MAX_COLOURS`, else the nearest colour of a 6x6x6 cube."""
    reds, greens, blues = rgb[0::3], rgb[1::3], rgb[2::3]
    colours = set(zip(reds, greens, blues, strict=True))
    if len(colours) <= MAX_COLOURS:
        palette = sorted(colours)
        index = {colour: i for i, colour in enumerate(palette)}
        indices = bytes(map(index.__getitem__, zip(reds, greens, blues, strict=True)))
        return palette, indices
    # 36 r + 6 g + b <= 215: the three byte strings add as integers without a carry.
    total = (
        int.from_bytes(reds.translate(_CUBE_RED), "big")
        + int.from_bytes(greens.translate(_CUBE_GREEN), "big")
        + int.from_bytes(blues.translate(_CUBE_LEVEL), "big")
    )
    return _CUBE_PALETTE, total.to_bytes(width * height, "big")


def encode_sixel(width: int, height: int, rgb: bytes | bytearray | memoryview) -> str:
    """The Sixel image (a complete DCS string) of ``width`` x ``height`` packed RGB pixels."""
    if width <= 0 or height <= 0:
        raise ValueError(f"cannot encode a {width}x{height} Sixel image")
    data = bytes(rgb)
    if len(data) != width * height * 3:
        raise ValueError(f"{len(data)} bytes of RGB for a {width}x{height} image")
    palette, indices = quantize(width, height, data)
    parts = [_START, f'"1;1;{width};{height}']
    bands = []
    parts.extend(
        f"#{i};2;{r * 100 // 255};{g * 100 // 255};{b * 100 // 255}"
        for i, (r, g, b) in enumerate(palette)
    )
    offset = (0x3F3F3F3F3F3F3F3F).to_bytes(8, "big") * (width // 8 + 1)
    bias = int.from_bytes(offset[:width], "big")  # "?" (63) added to every column
    for top in range(0, height, 6):
        rows = [indices[y * width : (y + 1) * width] for y in range(top, min(top + 6, height))]
        lines = []
        for colour in sorted(set(b"".join(rows))):
            bits = 0
            for bit, row in enumerate(rows):
                bits |= int.from_bytes(row.translate(_bit_table(colour, bit)), "big")
            line = (bits + bias).to_bytes(width, "big").decode("ascii").rstrip("?")
            lines.append(f"#{colour}{_RUN.sub(_run_length, line)}")
        bands.append("$".join(lines))
    # No "-" after the last band: it would move the cursor (and maybe scroll) below.
    parts.append("-".join(bands))
    parts.append(_END)
    return "".join(parts)
