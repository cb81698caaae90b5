"""``Framebuffer``: the guest's screen as packed RGB bytes, with the rectangles that changed.

The RFB client writes decoded rectangles into it; renderers and the PNG writer read it.
It is not thread-safe by itself: :class:`novaconsole.vnc.session.RfbSession` guards it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Largest framebuffer side we accept (RFB sizes are U16; QEMU caps at 5120 or so).
MAX_SIDE = 16384


@dataclass(frozen=True, slots=True)
class Rect:
    """A rectangle in framebuffer pixels."""

    x: int
    y: int
    width: int
    height: int

    @property
    def empty(self) -> bool:
        return self.width <= 0 or self.height <= 0

    def union(self, other: Rect) -> Rect:
        """The smallest rectangle holding both."""
        if self.empty:
            return other
        if other.empty:
            return self
        x0, y0 = min(self.x, other.x), min(self.y, other.y)
        x1 = max(self.x + self.width, other.x + other.width)
        y1 = max(self.y + self.height, other.y + other.height)
        return Rect(x0, y0, x1 - x0, y1 - y0)


class Framebuffer:
    """``width`` x ``height`` pixels, 3 bytes (R, G, B) each, rows top to bottom."""

    def __init__(self, width: int, height: int) -> None:
        self.width = 0
        self.height = 0
        self.pixels = bytearray()
        #: Rectangles changed since the last :meth:`take_dirty` (coalesced by the reader).
        self.dirty: list[Rect] = []
        self.resize(width, height)

    def resize(self, width: int, height: int) -> None:
        """A new, black screen of the given size (RFB DesktopSize); all of it is dirty."""
        if not (0 <= width <= MAX_SIDE and 0 <= height <= MAX_SIDE):
            raise ValueError(f"framebuffer size {width}x{height} is out of range")
        self.width, self.height = width, height
        self.pixels = bytearray(width * height * 3)
        self.dirty = [Rect(0, 0, width, height)]

    def _check(self, rect: Rect) -> None:
        if (
            rect.x < 0
            or rect.y < 0
            or rect.x + rect.width > self.width
            or rect.y + rect.height > self.height
        ):
            raise ValueError(
                f"rectangle {rect.width}x{rect.height}+{rect.x}+{rect.y} lies outside "
                f"the {self.width}x{self.height} framebuffer"
            )

    def put(self, rect: Rect, rgb: bytes | bytearray | memoryview) -> None:
        """Write ``rect.width * rect.height`` RGB pixels (row by row) at ``rect``."""
        self._check(rect)
        row_bytes = rect.width * 3
        if len(rgb) != row_bytes * rect.height:
            raise ValueError(f"{len(rgb)} bytes of pixels for a {rect.width}x{rect.height} rect")
        stride = self.width * 3
        offset = (rect.y * self.width + rect.x) * 3
        if rect.x == 0 and rect.width == self.width:
            self.pixels[offset : offset + len(rgb)] = rgb
        else:
            for row in range(rect.height):
                start = row * row_bytes
                self.pixels[offset : offset + row_bytes] = rgb[start : start + row_bytes]
                offset += stride
        self.dirty.append(rect)

    def fill(self, rect: Rect, colour: bytes) -> None:
        """Paint ``rect`` with one RGB colour (3 bytes)."""
        self._check(rect)
        line = colour * rect.width
        stride = self.width * 3
        offset = (rect.y * self.width + rect.x) * 3
        for _ in range(rect.height):
            self.pixels[offset : offset + len(line)] = line
            offset += stride
        self.dirty.append(rect)

    def copy(self, source_x: int, source_y: int, rect: Rect) -> None:
        """RFB CopyRect: copy the ``rect``-sized area at (``source_x``, ``source_y``) to ``rect``."""
        source = Rect(source_x, source_y, rect.width, rect.height)
        self._check(source)
        # Read the whole source first: source and destination may overlap.
        self.put(rect, self.crop(source))

    def crop(self, rect: Rect) -> bytes:
        """The RGB bytes of ``rect``, row by row."""
        self._check(rect)
        stride = self.width * 3
        row_bytes = rect.width * 3
        offset = (rect.y * self.width + rect.x) * 3
        return b"".join(
            bytes(self.pixels[offset + r * stride : offset + r * stride + row_bytes])
            for r in range(rect.height)
        )

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        """The (R, G, B) of one pixel."""
        self._check(Rect(x, y, 1, 1))
        offset = (y * self.width + x) * 3
        r, g, b = self.pixels[offset : offset + 3]
        return r, g, b

    def take_dirty(self) -> Rect | None:
        """The union of what changed since the last call (``None``: nothing), and forget it."""
        if not self.dirty:
            return None
        union = self.dirty[0]
        for rect in self.dirty[1:]:
            union = union.union(rect)
        self.dirty = []
        return union

    def is_blank(self) -> bool:
        """True when every pixel has the same colour (a black or cleared screen)."""
        if not self.pixels:
            return True
        first = bytes(self.pixels[:3])
        return self.pixels == bytearray(first * (self.width * self.height))

    def copy_of(self) -> Framebuffer:
        """An independent copy (for a screenshot or a renderer in another thread)."""
        clone = Framebuffer(0, 0)
        clone.width, clone.height = self.width, self.height
        clone.pixels = bytearray(self.pixels)
        clone.dirty = []
        return clone
