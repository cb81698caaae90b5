"""``FramebufferView``: a guest's screen drawn with half blocks, two pixels per cell."""

from __future__ import annotations

from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

from novaconsole.vnc.framebuffer import Framebuffer, Rect
from novaconsole.vnc.render import UPPER_HALF_BLOCK, Cell, Fit, HalfBlockRenderer


class FramebufferView(Widget, can_focus=True):
    """Shows the last framebuffer given to :meth:`show`, scaled to fit, centred.

    It consumes every key (the screen sends them to the guest), so no app binding fires
    while it has focus; the screen's priority bindings still do.
    """

    DEFAULT_CSS = """
    FramebufferView {
        width: 1fr;
        height: 1fr;
        background: $background;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.renderer = HalfBlockRenderer(1, 1)
        self._lines: list[Strip] = []
        self._styles: dict[Cell, Style] = {}
        self._framebuffer: Framebuffer | None = None

    @property
    def fit(self) -> Fit:
        return self.renderer.fit

    #: Keys left to the screen's own bindings; every other key is the guest's.
    reserved_keys: frozenset[str] = frozenset({"ctrl+right_square_bracket"})

    def check_consume_key(self, key: str, character: str | None) -> bool:
        return key not in self.reserved_keys

    def show(self, fb: Framebuffer, dirty: Rect | None = None) -> Fit:
        """Draw ``fb`` (only the rows ``dirty`` touches when the layout is unchanged)."""
        self._framebuffer = fb
        width, height = self.size.width, self.size.height
        if (width, height) != (self.renderer.columns, self.renderer.rows):
            self.renderer.resize(max(width, 1), max(height, 1))
            dirty = None
        changed = self.renderer.render(fb, dirty)
        cells = self.renderer.cells
        if len(self._lines) != len(cells):
            self._lines = [Strip.blank(0)] * len(cells)
            changed = range(len(cells))
        for row in changed:
            self._lines[row] = self._strip(cells[row])
        if changed:
            self.refresh()
        return self.renderer.fit

    def _style(self, cell: Cell) -> Style:
        style = self._styles.get(cell)
        if style is None:
            if len(self._styles) > 65536:  # a photo-like screen: do not grow without bound
                self._styles.clear()
            (fr, fg, fb), (br, bg, bb) = cell
            style = Style(color=Color.from_rgb(fr, fg, fb), bgcolor=Color.from_rgb(br, bg, bb))
            self._styles[cell] = style
        return style

    def _strip(self, row: list[Cell]) -> Strip:
        segments: list[Segment] = []
        run_start = 0
        for i in range(1, len(row) + 1):
            if i == len(row) or row[i] != row[run_start]:
                segments.append(
                    Segment(UPPER_HALF_BLOCK * (i - run_start), self._style(row[run_start]))
                )
                run_start = i
        return Strip(segments, len(row))

    def on_resize(self) -> None:
        if self._framebuffer is not None:
            self.show(self._framebuffer)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        top = max(0, (self.size.height - len(self._lines)) // 2)
        index = y - top
        if 0 <= index < len(self._lines):
            line = self._lines[index]
            left = max(0, (width - line.cell_length) // 2)
            blank = Segment(" " * left, self.rich_style)
            return Strip([blank, *line], left + line.cell_length).extend_cell_length(
                width, self.rich_style
            )
        return Strip.blank(width, self.rich_style)
