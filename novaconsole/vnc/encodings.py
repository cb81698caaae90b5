"""Pixel formats and ZRLE tiles: the decoding halves of :mod:`novaconsole.vnc.rfb`.

:class:`PixelCodec` turns pixels of a true-colour RFB pixel format into packed RGB;
:class:`ZrleDecoder` paints one inflated ZRLE rectangle (RFC 6143 7.7.6) into a framebuffer.
"""

from __future__ import annotations

from novaconsole.vnc.framebuffer import Framebuffer, Rect
from novaconsole.vnc.probe import PixelFormat, RfbError

_ZRLE_TILE = 64


class PixelCodec:
    """Turns pixels of one true-colour :class:`PixelFormat` into packed RGB bytes.

    32 bpp formats with byte-aligned 8-bit channels (what we ask for) are converted with
    byte slicing; any other true-colour format pixel by pixel.
    """

    def __init__(self, pf: PixelFormat, *, compact: bool = False) -> None:
        if not pf.true_colour:
            raise RfbError("colour-map pixel formats are not supported (need true colour)")
        if pf.bits_per_pixel not in (8, 16, 32):
            raise RfbError(f"{pf.bits_per_pixel} bits per pixel is not an RFB pixel size")
        if min(pf.red_max, pf.green_max, pf.blue_max) < 1:
            raise RfbError("pixel format has a colour channel of zero bits")
        self.format = pf
        self.bytes_per_pixel = pf.bits_per_pixel // 8
        self._order: str = "big" if pf.big_endian else "little"
        self._dropped: int | None = None  # the byte index a ZRLE CPIXEL leaves out
        if compact:
            self._dropped = _cpixel_dropped_byte(pf)
            if self._dropped is not None:
                self.bytes_per_pixel = 3
        self._fast: tuple[int, int, int] | None = None
        if pf.bits_per_pixel == 32 and (pf.red_max, pf.green_max, pf.blue_max) == (255,) * 3:
            shifts = (pf.red_shift, pf.green_shift, pf.blue_shift)
            if all(s % 8 == 0 and s <= 24 for s in shifts):
                indices = [s // 8 if not pf.big_endian else 3 - s // 8 for s in shifts]
                if self._dropped is not None:
                    indices = [i - (i > self._dropped) for i in indices]
                if self._dropped not in indices:
                    self._fast = (indices[0], indices[1], indices[2])

    def to_rgb(self, data: bytes | bytearray | memoryview) -> bytes:
        """``len(data) // bytes_per_pixel`` pixels as R, G, B bytes."""
        step = self.bytes_per_pixel
        count = len(data) // step
        if self._fast is not None:
            ri, gi, bi = self._fast
            out = bytearray(count * 3)
            out[0::3] = data[ri : count * step : step]
            out[1::3] = data[gi : count * step : step]
            out[2::3] = data[bi : count * step : step]
            return bytes(out)
        return b"".join(self.one(data[i * step : (i + 1) * step]) for i in range(count))

    def one(self, pixel: bytes | bytearray | memoryview) -> bytes:
        """One pixel as 3 RGB bytes (the slow, general path)."""
        raw = bytes(pixel)
        if self._dropped is not None:
            raw = raw[: self._dropped] + b"\x00" + raw[self._dropped :]
        value = int.from_bytes(raw, self._order)  # type: ignore[arg-type]
        pf = self.format
        return bytes(
            ((value >> shift) & top) * 255 // top
            for shift, top in (
                (pf.red_shift, pf.red_max),
                (pf.green_shift, pf.green_max),
                (pf.blue_shift, pf.blue_max),
            )
        )


def _cpixel_dropped_byte(pf: PixelFormat) -> int | None:
    """Which byte of a 32-bit pixel ZRLE's 3-byte CPIXEL omits, or None (CPIXEL = PIXEL)."""
    if pf.bits_per_pixel != 32 or pf.depth > 24 or not pf.true_colour:
        return None
    bits = 0
    for shift, top in (
        (pf.red_shift, pf.red_max),
        (pf.green_shift, pf.green_max),
        (pf.blue_shift, pf.blue_max),
    ):
        bits |= top << shift
    if bits < (1 << 24):  # fits in the least significant three bytes
        return 0 if pf.big_endian else 3
    if bits & 0xFF == 0:  # fits in the most significant three bytes
        return 3 if pf.big_endian else 0
    return None


def _packed_tables() -> dict[int, list[tuple[int, ...]]]:
    """For 1, 2 and 4 bits per index: byte -> the indices it packs, most significant first."""
    tables: dict[int, list[tuple[int, ...]]] = {}
    for bits in (1, 2, 4):
        mask = (1 << bits) - 1
        tables[bits] = [
            tuple((byte >> (8 - bits * (i + 1))) & mask for i in range(8 // bits))
            for byte in range(256)
        ]
    return tables


_PACKED = _packed_tables()


class ZrleDecoder:
    """Decodes one ZRLE rectangle's inflated bytes, 64x64 tile by tile (RFC 6143 7.7.6)."""

    def __init__(self, codec: PixelCodec, data: bytes) -> None:
        self.codec = codec
        self.data = data
        self.pos = 0
        self.step = codec.bytes_per_pixel

    def _pixels(self, count: int) -> list[bytes]:
        size = count * self.step
        chunk = self.data[self.pos : self.pos + size]
        if len(chunk) != size:
            raise IndexError
        self.pos += size
        rgb = self.codec.to_rgb(chunk)
        return [rgb[i : i + 3] for i in range(0, len(rgb), 3)]

    def _run(self) -> int:
        length = 1
        while True:
            byte = self.data[self.pos]
            self.pos += 1
            length += byte
            if byte != 255:
                return length

    def paint(self, fb: Framebuffer, rect: Rect) -> None:
        for ty in range(rect.y, rect.y + rect.height, _ZRLE_TILE):
            th = min(_ZRLE_TILE, rect.y + rect.height - ty)
            for tx in range(rect.x, rect.x + rect.width, _ZRLE_TILE):
                tw = min(_ZRLE_TILE, rect.x + rect.width - tx)
                self._tile(fb, Rect(tx, ty, tw, th))

    def _tile(self, fb: Framebuffer, tile: Rect) -> None:
        count = tile.width * tile.height
        out: list[bytes] = []
        sub = self.data[self.pos]
        self.pos += 1
        if sub == 0:
            size = count * self.step
            chunk = self.data[self.pos : self.pos + size]
            if len(chunk) != size:
                raise IndexError
            self.pos += size
            fb.put(tile, self.codec.to_rgb(chunk))
        elif sub == 1:
            fb.fill(tile, self._pixels(1)[0])
        elif 2 <= sub <= 16:
            palette = self._pixels(sub)
            bits = 1 if sub == 2 else 2 if sub <= 4 else 4
            table = _PACKED[bits]
            row_bytes = (tile.width * bits + 7) // 8
            for _ in range(tile.height):
                row = self.data[self.pos : self.pos + row_bytes]
                if len(row) != row_bytes:
                    raise IndexError
                self.pos += row_bytes
                indices = [i for byte in row for i in table[byte]][: tile.width]
                out.extend(palette[i] for i in indices)
            fb.put(tile, b"".join(out))
        elif sub == 128:
            filled = 0
            while filled < count:
                pixel = self._pixels(1)[0]
                run = self._run()
                out.append(pixel * run)
                filled += run
            self._check_fill(filled, count)
            fb.put(tile, b"".join(out))
        elif sub >= 130:
            palette = self._pixels(sub - 128)
            filled = 0
            while filled < count:
                index = self.data[self.pos]
                self.pos += 1
                run = 1
                if index & 0x80:
                    index &= 0x7F
                    run = self._run()
                if index >= len(palette):
                    raise RfbError(f"ZRLE palette index {index} beyond a palette of {len(palette)}")
                out.append(palette[index] * run)
                filled += run
            self._check_fill(filled, count)
            fb.put(tile, b"".join(out))
        else:
            raise RfbError(f"ZRLE tile with unused subencoding {sub}")

    @staticmethod
    def _check_fill(filled: int, count: int) -> None:
        if filled != count:
            raise RfbError(f"ZRLE run overflows its tile ({filled} of {count} pixels)")
