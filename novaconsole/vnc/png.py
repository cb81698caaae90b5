"""A PNG writer for screenshots: 8-bit RGB, filter 0, zlib and struct only (no dependency)."""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import zlib
from pathlib import Path

from novaconsole.errors import ConfigError

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def encode_png(width: int, height: int, rgb: bytes | bytearray | memoryview) -> bytes:
    """The PNG file bytes of ``width`` x ``height`` packed RGB pixels."""
    if width <= 0 or height <= 0:
        raise ValueError(f"cannot write a {width}x{height} image")
    row = width * 3
    if len(rgb) != row * height:
        raise ValueError(f"{len(rgb)} bytes of RGB for a {width}x{height} image")
    view = memoryview(rgb)
    # Filter type 0 (None) on every row: screens compress well enough without filters.
    raw = b"".join(b"\x00" + view[y * row : (y + 1) * row] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def write_png(
    path: str | os.PathLike[str], width: int, height: int, rgb: bytes | bytearray
) -> Path:
    """Write a PNG atomically (a temporary file renamed into place: never half-written).

    Errors name the file, in one line (:class:`ConfigError`, exit 2).
    """
    target = Path(path)
    data = encode_png(width, height, rgb)
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise ConfigError(f"cannot write screenshot {target}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ConfigError(f"cannot write screenshot {target}: {exc.strerror or exc}") from None
    return target


def read_png_rgb(data: bytes) -> tuple[int, int, bytes]:
    """Decode a PNG written by :func:`encode_png` (8-bit RGB, filter 0) back to pixels.

    Only what we write is understood; it exists so tests and tools can check a screenshot.
    """
    if not data.startswith(_SIGNATURE):
        raise ValueError("not a PNG file")
    pos = len(_SIGNATURE)
    width = height = 0
    idat = bytearray()
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        if zlib.crc32(kind + body) != crc:
            raise ValueError(f"bad CRC in PNG chunk {kind!r}")
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if (depth, colour, interlace) != (8, 2, 0):
                raise ValueError("only 8-bit RGB non-interlaced PNGs are understood")
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    raw = zlib.decompress(bytes(idat))
    row = width * 3
    out = bytearray()
    for y in range(height):
        line = raw[y * (row + 1) : (y + 1) * (row + 1)]
        if line[0] != 0:
            raise ValueError(f"PNG row {y} uses filter {line[0]} (only 0 is understood)")
        out += line[1:]
    return width, height, bytes(out)
