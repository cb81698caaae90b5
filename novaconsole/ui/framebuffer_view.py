"""``FramebufferView``: a guest's screen in the terminal, as half blocks (two pixels per cell,
any terminal) or as pixels (Kitty graphics or Sixel, where the terminal draws them).

Pixel frames are encoded in one thread of the view's own (latest frame only, never two
at once) and written to the terminal once each, on the event loop, through the app's
driver as Textual writes its own raw sequences (the bell, the clipboard), so they stay in
order with the screen updates around them; the widget's lines carry only cells. Kitty:
the image is sent once per frame and shown by placeholder cells (the terminal scales it
into them). Sixel: the image is drawn at the widget's place after the screen update that
leaves its cells alone, and drawn again only when the frame or the cells it covers
change. A frame whose encoding did not change is not sent again.

While another screen is over the view's (a modal dialog shows it dimmed beneath) the
pixels are hidden: blank cells instead, and Kitty's placement deleted (its data kept),
placed again when the screen is back on top. When the view goes, Kitty's image is
deleted from the terminal.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from rich.color import Color
from rich.control import Control
from rich.segment import ControlType, Segment
from rich.style import Style
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget

from novaconsole.terminal_graphics import TerminalGraphics
from novaconsole.vnc import kitty
from novaconsole.vnc.framebuffer import Framebuffer, Rect
from novaconsole.vnc.render import (
    UPPER_HALF_BLOCK,
    Cell,
    Fit,
    HalfBlockRenderer,
    scale_pixels,
)
from novaconsole.vnc.sixel import encode_sixel

#: A control segment: written as is, zero cells wide.
_CONTROL = ((ControlType.CURSOR_FORWARD, 0),)


@dataclass(frozen=True, slots=True)
class PixelLayout:
    """Where a pixel frame goes: ``columns`` x ``rows`` cells, and how the screen was scaled."""

    columns: int
    rows: int
    fit: Fit


def pixel_layout(
    width: int, height: int, columns: int, rows: int, cell: tuple[int, int], protocol: str
) -> PixelLayout:
    """The cells a ``width`` x ``height`` screen takes in a ``columns`` x ``rows`` widget.

    Kitty scales the image in the terminal, so it fills the widget (enlarged too,
    aspect kept); Sixel is drawn pixel for pixel, so it is only ever scaled down.
    """
    cell_w, cell_h = cell
    avail_w, avail_h = columns * cell_w, rows * cell_h
    if width <= 0 or height <= 0 or avail_w <= 0 or avail_h <= 0:
        return PixelLayout(0, 0, Fit(width, height, 0, 0, 0.0))
    scale = min(avail_w / width, avail_h / height)
    if protocol == "sixel":
        scale = min(1.0, scale)
    out_w = max(1, min(avail_w, int(width * scale)))
    out_h = max(1, min(avail_h, int(height * scale)))
    used_columns = min(columns, kitty.MAX_CELLS, max(1, math.ceil(out_w / cell_w)))
    used_rows = min(rows, kitty.MAX_CELLS, max(1, math.ceil(out_h / cell_h)))
    return PixelLayout(used_columns, used_rows, Fit(width, height, out_w, out_h, scale))


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One frame ready for the terminal."""

    layout: PixelLayout
    payload: str


def encode_frame(
    fb: Framebuffer, layout: PixelLayout, protocol: str, image_id: int, cell: tuple[int, int]
) -> EncodedFrame:
    """The escape sequences that show ``fb`` in ``layout`` (heavy: run it in a thread)."""
    if protocol == "kitty":
        # The terminal scales; send the screen as it is unless it is larger than shown.
        if layout.fit.scale < 1.0:
            _, pixels = scale_pixels(fb, layout.fit.width, layout.fit.height)
            width, height = layout.fit.width, layout.fit.height
        else:
            pixels, width, height = bytes(fb.pixels), fb.width, fb.height
        payload = kitty.transmit(image_id, width, height, pixels, layout.columns, layout.rows)
        return EncodedFrame(layout, payload)
    # Sixel: whole bands of six pixel rows inside the cells, so nothing spills below.
    max_h = layout.rows * cell[1]
    scaled, pixels = scale_pixels(fb, layout.fit.width, max_h - max_h % 6 or max_h)
    return EncodedFrame(layout, encode_sixel(scaled.width, scaled.height, pixels))


class _Encoder:
    """One thread encoding the latest frame handed to it; results go to ``deliver``."""

    def __init__(self, deliver: Callable[[EncodedFrame], None]) -> None:
        self._deliver = deliver
        self._wake = threading.Condition()
        self._job: Callable[[], EncodedFrame] | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="framebuffer-encoder", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], EncodedFrame]) -> None:
        with self._wake:
            self._job = job  # an older job not started yet is dropped: only the latest counts
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while self._job is None and not self._stopped:
                    self._wake.wait()
                job, self._job = self._job, None
                if self._stopped or job is None:
                    return
            try:
                frame = job()
            except Exception:  # a frame that cannot be encoded is skipped; the next may work
                continue
            with contextlib.suppress(Exception):  # the app may be gone
                self._deliver(frame)


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

    def __init__(self, *, id: str | None = None, graphics: TerminalGraphics | None = None) -> None:
        super().__init__(id=id)
        self.graphics = graphics or TerminalGraphics("cells")
        self.renderer = HalfBlockRenderer(1, 1)
        self._lines: list[Strip] = []
        self._styles: dict[Cell, Style] = {}
        self._framebuffer: Framebuffer | None = None
        self._pixel_fit = Fit(0, 0, 0, 0, 0.0)
        #: The latest frame (pixel protocols): on screen unless covered.
        self._shown: EncodedFrame | None = None
        self._image_id = random.randint(1, kitty.MAX_IMAGE_ID)
        #: Kitty: the terminal holds our image's data / a placement of it; a frame came
        #: while covered (sent when uncovered).
        self._transmitted = False
        self._placed = False
        self._kitty_stale = False
        #: Sixel: the cells (on screen) the shown frame was last drawn into; None: not drawn.
        self._sixel_at: Region | None = None
        #: Another screen is over this one: pixels hidden (see :meth:`cover`).
        self._covered = False
        #: Sixel: a notification was seen over the drawn image (see :meth:`_check_toasts`).
        self._toasted = False
        self._gone = False
        self._encoder: _Encoder | None = None
        #: Pixel frames encoded, and how many were dropped as unchanged (tests read them).
        self.frames_encoded = 0
        self.frames_unchanged = 0

    @property
    def protocol(self) -> str:
        return self.graphics.protocol

    @property
    def fit(self) -> Fit:
        return self.renderer.fit if self.protocol == "cells" else self._pixel_fit

    #: Keys left to the screen's own bindings; every other key is the guest's.
    reserved_keys: frozenset[str] = frozenset({"ctrl+right_square_bracket"})

    def check_consume_key(self, key: str, character: str | None) -> bool:
        return key not in self.reserved_keys

    def show(self, fb: Framebuffer, dirty: Rect | None = None) -> Fit:
        """Draw ``fb`` (only the rows ``dirty`` touches when the layout is unchanged)."""
        self._framebuffer = fb
        if self.protocol != "cells":
            return self._show_pixels(fb, dirty)
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

    # -- pixels (Kitty, Sixel) -----------------------------------------------------------

    def _cell(self) -> tuple[int, int]:
        return self.graphics.cell_width, self.graphics.cell_height

    def _show_pixels(self, fb: Framebuffer, dirty: Rect | None) -> Fit:
        layout = pixel_layout(
            fb.width, fb.height, self.size.width, self.size.height, self._cell(), self.protocol
        )
        same_layout = self._shown is not None and self._shown.layout == layout
        if same_layout and (dirty is None or dirty.empty):  # nothing changed since
            return layout.fit
        self._pixel_fit = layout.fit
        if layout.columns == 0:
            return layout.fit
        if self._encoder is None:
            app = self.app
            self._encoder = _Encoder(lambda frame: app.call_from_thread(self._encoded, frame))
        # fb is the session's copy (RfbSession.take_dirty): nobody writes into it.
        protocol, image_id, cell = self.protocol, self._image_id, self._cell()
        self._encoder.submit(lambda: encode_frame(fb, layout, protocol, image_id, cell))
        return layout.fit

    def _encoded(self, frame: EncodedFrame) -> None:
        """On the event loop: a frame is ready; write it unless it is what is shown."""
        if self._gone:  # encoded after the view went: the terminal must not get it
            return
        self.frames_encoded += 1
        if self._shown is not None and self._shown == frame:
            self.frames_unchanged += 1
            return
        relayout = self._shown is None or self._shown.layout != frame.layout
        self._shown = frame
        if self.protocol == "kitty":
            # Same id: the placeholder cells already on screen show the new image.
            self._send_kitty()
            if relayout:
                self.refresh()
        else:
            self._sixel_at = None
            self.refresh()
            self.call_after_refresh(self._send_sixel)

    def _write_to_terminal(self, data: str) -> None:
        """Raw escape sequences to the terminal, the way Textual writes its own (bell,
        clipboard): through the app's driver, on the event loop, so they reach the
        terminal after the screen updates already written and before the next."""
        app = self.app
        driver = app._driver
        if driver is None or app.is_headless:
            return
        driver.write(data)
        driver.flush()

    def _send_kitty(self) -> None:
        """Transmit the shown frame (it replaces our image and makes its placement)."""
        if self._shown is None:
            return
        if self._covered:
            self._kitty_stale = True
            return
        self._write_to_terminal(self._shown.payload)
        self._transmitted = self._placed = True
        self._kitty_stale = False

    def _send_sixel(self) -> None:
        """After a screen update: draw the shown frame at the image's cells, unless it is
        already there (the cells Textual paints there move over the pixels, see
        :meth:`_pixel_line`) or the view is covered. Saved cursor, absolute move, the
        image, restored cursor."""
        shown = self._shown
        if self.protocol != "sixel" or shown is None or self._covered or self._gone:
            return
        if not self.is_attached:
            return
        region, image = self.content_region, self._image_region()
        at = Region(region.x + image.x, region.y + image.y, image.width, image.height)
        if at == self._sixel_at or not at:
            return
        self._sixel_at = at
        move = Control.move_to(at.x, at.y).segment.text
        self._write_to_terminal("\x1b7" + move + shown.payload + "\x1b8")

    #: Seconds between two looks for notifications over a Sixel image.
    TOAST_CHECK = 0.25

    def on_mount(self) -> None:
        if self.protocol == "sixel":
            self.set_interval(self.TOAST_CHECK, self._check_toasts, name="sixel-toasts")

    def _check_toasts(self) -> None:
        """Sixel: a notification (toast) over the image paints over its pixels, and when
        it goes Textual repaints the view's cells, which move over the pixels rather than
        paint them; so once no toast is over the image any more, draw it again."""
        at = self._sixel_at
        if at is None or self._covered:
            return
        if any(toast.region.overlaps(at) for toast in self.screen.query("Toast")):
            self._toasted = True
        elif self._toasted:
            self._toasted = False
            self._sixel_at = None
            self.refresh()
            self.call_after_refresh(self._send_sixel)

    def cover(self) -> None:
        """Another screen is over this one (a modal draws it dimmed beneath): hide the
        pixels. Kitty's placeholder cells would turn another colour (another image id),
        Sixel's pixels would stay over the dialog; blank cells instead, and Kitty's
        placement deleted (its data kept for :meth:`uncover`)."""
        if self._covered:
            return
        self._covered = True
        if self._placed:
            self._write_to_terminal(kitty.hide(self._image_id))
            self._placed = False
        self.refresh()

    def uncover(self) -> None:
        """This view's screen is on top again: show the pixels again (Kitty: a new
        placement of the image kept, or the newer frame that came meanwhile; Sixel: drawn
        again, as whatever covered it painted over its pixels)."""
        if not self._covered:
            return
        self._covered = False
        shown = self._shown
        if self.protocol == "kitty" and shown is not None:
            if self._kitty_stale or not self._transmitted:
                self._send_kitty()
            else:
                self._write_to_terminal(
                    kitty.place(self._image_id, shown.layout.columns, shown.layout.rows)
                )
                self._placed = True
        self._sixel_at = None
        self.refresh()
        if self.protocol == "sixel":
            self.call_after_refresh(self._send_sixel)

    def release(self) -> None:
        """The view is going (the operator left the console): delete Kitty's image, its
        placement and its data, from the terminal; nothing is sent after this."""
        self._gone = True
        if self._encoder is not None:
            self._encoder.stop()
        if self._transmitted:
            self._write_to_terminal(kitty.delete(self._image_id))
            self._transmitted = self._placed = False

    def _image_region(self) -> Region:
        """The cells the pixel frame covers, relative to the widget."""
        if self._shown is None:
            return Region(0, 0, 0, 0)
        layout = self._shown.layout
        left = max(0, (self.size.width - layout.columns) // 2)
        top = max(0, (self.size.height - layout.rows) // 2)
        return Region(left, top, layout.columns, layout.rows)

    def _pixel_line(self, y: int) -> Strip:
        width = self.size.width
        image = self._image_region()
        if self._covered or self._shown is None or not image.y <= y < image.bottom:
            return Strip.blank(width, self.rich_style)
        left = Segment(" " * image.x, self.rich_style)
        right = Segment(" " * max(0, width - image.right), self.rich_style)
        if self.protocol == "kitty":
            style = Style(color=Color.from_rgb(*kitty.colour_of(self._image_id)))
            middle = Segment(kitty.placeholder_row(y - image.y, image.width), style)
        else:  # Sixel pixels lie there: move over them instead of painting blanks
            middle = Segment(f"\x1b[{image.width}C", None, _CONTROL)
        return Strip([left, middle, right], width)

    def on_unmount(self) -> None:
        self.release()

    # -- half blocks ---------------------------------------------------------------------

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
        if self.protocol == "sixel":  # the same frame may now sit elsewhere on screen
            self.call_after_refresh(self._send_sixel)

    def render_line(self, y: int) -> Strip:
        if self.protocol != "cells":
            return self._pixel_line(y)
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
