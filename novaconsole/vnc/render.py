"""Framebuffer -> terminal cells with the upper half block: ``▀`` in the upper pixel's colour
(foreground) over the lower pixel's colour (background), so each cell shows two pixels.

The screen is scaled to fit the cell grid keeping its aspect ratio (a half-block pixel is
about square in a terminal whose cells are twice as tall as wide), never enlarged. Scaling
is an **area average** (box filter): each output pixel is the mean of the source pixels
it covers, estimated from up to 3x3 evenly spread samples (all sums run in C),
which keeps thin glyph strokes visible as grey rather than dropping them as
nearest-neighbour sampling would. :class:`HalfBlockRenderer` re-renders only the cell rows
a framebuffer update touched. No Textual here: the TUI turns cells into styled segments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter

from novaconsole.vnc.framebuffer import Framebuffer, Rect

#: Samples per box side: boxes wider or taller are averaged from this many evenly spread
#: rows/columns (3x3 keeps glyph strokes visible and a full 720x400 frame fast).
MAX_SAMPLES = 3

#: The character of every cell.
UPPER_HALF_BLOCK = "▀"

RGB = tuple[int, int, int]
#: One terminal cell: (foreground = upper pixel, background = lower pixel).
Cell = tuple[RGB, RGB]

_BLACK: RGB = (0, 0, 0)


@dataclass(frozen=True, slots=True)
class Fit:
    """How a ``source_width`` x ``source_height`` screen maps onto the cell grid."""

    source_width: int
    source_height: int
    #: Output pixels (one per column, two per cell row).
    width: int
    height: int
    #: Output pixels per source pixel (1.0: every pixel shown).
    scale: float

    @property
    def columns(self) -> int:
        return self.width

    @property
    def rows(self) -> int:
        return (self.height + 1) // 2

    @property
    def scaled(self) -> bool:
        return self.scale < 1.0

    def describe(self) -> str:
        """``"720x400 at 25%"`` or ``"720x400 at 100%"``, for titles."""
        return f"{self.source_width}x{self.source_height} at {self.scale * 100:.0f}%"


def fit(width: int, height: int, columns: int, rows: int) -> Fit:
    """The largest scale (at most 1) at which the screen fits ``columns`` x ``rows`` cells."""
    if width <= 0 or height <= 0 or columns <= 0 or rows <= 0:
        return Fit(width, height, 0, 0, 0.0)
    scale = min(1.0, columns / width, 2 * rows / height)
    out_w = max(1, min(columns, int(width * scale)))
    out_h = max(1, min(2 * rows, int(height * scale)))
    return Fit(width, height, out_w, out_h, scale)


def _sample(start: int, end: int, k: int, count: int) -> int:
    """The ``k``-th of ``count`` sample positions spread evenly over ``[start, end)``."""
    if count <= 1:
        return start + (end - start - 1) // 2
    return start + k * (end - start - 1) // (count - 1)


def _bounds(source: int, target: int) -> list[tuple[int, int]]:
    """For each of ``target`` output pixels, the source range [start, end) it averages."""
    out = []
    for i in range(target):
        start = i * source // target
        end = max(start + 1, (i + 1) * source // target)
        out.append((start, end))
    return out


class HalfBlockRenderer:
    """Keeps the cell grid of one framebuffer at one grid size, updated by dirty rectangle."""

    def __init__(self, columns: int, rows: int) -> None:
        self.columns = columns
        self.rows = rows
        self.fit = fit(0, 0, columns, rows)
        #: ``cells[row][column]``; sized ``fit.rows`` x ``fit.columns``.
        self.cells: list[list[Cell]] = []
        self._xb: list[tuple[int, int]] = []
        self._yb: list[tuple[int, int]] = []
        self._getters: list[Callable[[bytes | bytearray], tuple[int, ...]]] = []
        self._tallest = 1

    def resize(self, columns: int, rows: int) -> None:
        """A new grid size: the next :meth:`render` redraws everything."""
        self.columns, self.rows = columns, rows
        self.fit = fit(0, 0, columns, rows)

    def render(self, fb: Framebuffer, dirty: Rect | None = None) -> range:
        """Update the cells from ``fb`` (only rows touching ``dirty``, when the layout holds).

        Returns the cell rows that changed.
        """
        wanted = fit(fb.width, fb.height, self.columns, self.rows)
        if wanted != self.fit or len(self.cells) != wanted.rows:
            self._layout(fb, wanted)
            self.cells = [[(_BLACK, _BLACK)] * wanted.columns for _ in range(wanted.rows)]
            dirty = None
        if wanted.width == 0:
            return range(0)
        if dirty is None:
            first, last = 0, wanted.rows
        else:
            if dirty.empty:
                return range(0)
            first = self._out_index(self._yb, dirty.y) // 2
            last = self._out_index(self._yb, dirty.y + dirty.height - 1) // 2 + 1
        for row in range(first, last):
            upper = self._pixel_row(fb, 2 * row)
            lower = self._pixel_row(fb, 2 * row + 1) if 2 * row + 1 < wanted.height else None
            if lower is None:
                self.cells[row] = [(up, _BLACK) for up in upper]
            else:
                self.cells[row] = list(zip(upper, lower, strict=True))
        return range(first, last)

    def _layout(self, fb: Framebuffer, wanted: Fit) -> None:
        self.fit = wanted
        self._xb = _bounds(fb.width, wanted.width)
        self._yb = _bounds(fb.height, wanted.height)
        self._prepare(fb)

    def pixels(self, fb: Framebuffer) -> tuple[Fit, bytes]:
        """The whole screen scaled (area average) to fit ``columns`` x ``2 * rows`` pixels,
        as packed RGB; the cells are left as they were."""
        wanted = fit(fb.width, fb.height, self.columns, self.rows)
        if wanted.width == 0:
            return wanted, b""
        if wanted.scale == 1.0:
            return wanted, bytes(fb.pixels)
        if wanted != self.fit:
            self._layout(fb, wanted)
        rows = [self._pixel_row(fb, y) for y in range(wanted.height)]
        return wanted, bytes(chain.from_iterable(chain.from_iterable(rows)))

    @staticmethod
    def _out_index(bounds: list[tuple[int, int]], source: int) -> int:
        """The output pixel whose source range holds ``source`` (bounds are sorted)."""
        lo, hi = 0, len(bounds) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if bounds[mid][0] <= source:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _prepare(self, fb: Framebuffer) -> None:
        """Per layout: for each sample column offset, a C-level gather of one pixel per box."""
        widest = min(MAX_SAMPLES, max((x1 - x0 for x0, x1 in self._xb), default=1))
        self._getters = []
        for j in range(widest):
            indices = [_sample(x0, x1, j, widest) for x0, x1 in self._xb]
            # itemgetter of one index returns the item, not a 1-tuple: ask for it twice
            # (a one-column screen then counts that pixel twice, which averages the same).
            self._getters.append(itemgetter(*(indices if len(indices) > 1 else indices * 2)))
        self._tallest = min(MAX_SAMPLES, max((y1 - y0 for y0, y1 in self._yb), default=1))

    def _pixel_row(self, fb: Framebuffer, out_y: int) -> list[RGB]:
        y0, y1 = self._yb[out_y]
        stride = fb.width * 3
        if self.fit.scale == 1.0:
            line = fb.pixels[y0 * stride : (y0 + 1) * stride]
            return list(zip(line[0::3], line[1::3], line[2::3], strict=True))
        # Boxes narrower (or shorter) than the widest repeat their last pixel, so every
        # box has the same number of samples and the sums stay in C (zip, map, sum).
        reds: list[tuple[int, ...]] = []
        greens: list[tuple[int, ...]] = []
        blues: list[tuple[int, ...]] = []
        for k in range(self._tallest):
            y = _sample(y0, y1, k, self._tallest)
            line = fb.pixels[y * stride : (y + 1) * stride]
            red, green, blue = line[0::3], line[1::3], line[2::3]
            for get in self._getters:
                reds.append(get(red))
                greens.append(get(green))
                blues.append(get(blue))
        mean = len(reds).__rfloordiv__  # v // samples, as a C-level callable for map()
        return list(
            zip(
                map(mean, map(sum, zip(*reds, strict=True))),
                map(mean, map(sum, zip(*greens, strict=True))),
                map(mean, map(sum, zip(*blues, strict=True))),
                strict=True,
            )
        )[: len(self._xb)]


def scale_pixels(fb: Framebuffer, max_width: int, max_height: int) -> tuple[Fit, bytes]:
    """``fb`` scaled down (never up) to fit ``max_width`` x ``max_height`` pixels, as RGB.

    The same area average as the cells; for pixel outputs (Sixel, Kitty graphics).
    """
    return HalfBlockRenderer(max(1, max_width), max(1, max_height // 2)).pixels(fb)


def render_halfblocks(fb: Framebuffer, columns: int, rows: int) -> tuple[list[list[Cell]], Fit]:
    """The whole screen as cells fitting ``columns`` x ``rows``, and how it was scaled."""
    renderer = HalfBlockRenderer(columns, rows)
    renderer.render(fb)
    return renderer.cells, renderer.fit


def cells_to_ansi(cells: list[list[Cell]]) -> str:
    """Cells as 24-bit ANSI text (one line per row), for a plain terminal or a test."""
    lines = []
    for row in cells:
        parts = []
        previous: Cell | None = None
        for cell in row:
            if cell != previous:
                (fr, fg, fb_), (br, bg, bb) = cell
                parts.append(f"\x1b[38;2;{fr};{fg};{fb_}m\x1b[48;2;{br};{bg};{bb}m")
                previous = cell
            parts.append(UPPER_HALF_BLOCK)
        lines.append("".join(parts) + "\x1b[0m")
    return "\n".join(lines)
