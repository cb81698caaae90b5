"""``TerminalView``: a VT100/VT220 terminal emulator widget (pyte) for serial consoles.

Bytes from the guest are fed to a ``pyte.ByteStream``; the widget draws pyte's screen
buffer with its colours and attributes, and turns key presses into the bytes a terminal
would send (:func:`key_bytes`).
"""

from __future__ import annotations

import pyte
from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

#: Textual key name -> what a VT220-style terminal sends (xterm's choices).
_KEY_BYTES: dict[str, bytes] = {
    "enter": b"\r",
    "tab": b"\t",
    "shift+tab": b"\x1b[Z",
    "backspace": b"\x7f",
    "escape": b"\x1b",
    "up": b"\x1b[A",
    "down": b"\x1b[B",
    "right": b"\x1b[C",
    "left": b"\x1b[D",
    "home": b"\x1b[H",
    "end": b"\x1b[F",
    "insert": b"\x1b[2~",
    "delete": b"\x1b[3~",
    "pageup": b"\x1b[5~",
    "pagedown": b"\x1b[6~",
    "f1": b"\x1bOP",
    "f2": b"\x1bOQ",
    "f3": b"\x1bOR",
    "f4": b"\x1bOS",
    "f5": b"\x1b[15~",
    "f6": b"\x1b[17~",
    "f7": b"\x1b[18~",
    "f8": b"\x1b[19~",
    "f9": b"\x1b[20~",
    "f10": b"\x1b[21~",
    "f11": b"\x1b[23~",
    "f12": b"\x1b[24~",
    "ctrl+space": b"\x00",
}


def key_bytes(key: str, character: str | None) -> bytes | None:
    """The bytes for a key press, or None for keys a terminal does not send."""
    if key in _KEY_BYTES:
        return _KEY_BYTES[key]
    if key.startswith("ctrl+") and len(key) == 6 and key[5].isalpha():
        return bytes([ord(key[5].lower()) & 0x1F])
    if character:
        return character.encode("utf-8")
    return None


_PYTE_COLOURS = {"brown": "yellow", "brightbrown": "bright_yellow"}


def _colour(name: str) -> str | None:
    if name == "default":
        return None
    if len(name) == 6 and all(c in "0123456789abcdefABCDEF" for c in name):
        return f"#{name}"
    name = _PYTE_COLOURS.get(name, name)
    if name.startswith("bright") and not name.startswith("bright_"):
        name = "bright_" + name[6:]
    return name


class TerminalView(Widget, can_focus=True):
    """A pyte screen the size of the widget; :meth:`feed` takes the guest's bytes."""

    DEFAULT_CSS = """
    TerminalView {
        width: 1fr;
        height: 1fr;
        background: $background;
    }
    """

    def __init__(self, *, columns: int = 80, lines: int = 24, id: str | None = None) -> None:
        super().__init__(id=id)
        self.screen_buffer = pyte.Screen(columns, lines)
        self.stream = pyte.ByteStream(self.screen_buffer)
        self._styles: dict[tuple[str, str, bool, bool, bool, bool], Style] = {}

    #: Keys left to the screen's own bindings; every other key is the guest's.
    reserved_keys: frozenset[str] = frozenset({"ctrl+right_square_bracket"})

    def check_consume_key(self, key: str, character: str | None) -> bool:
        return key not in self.reserved_keys

    def feed(self, data: bytes) -> None:
        """Interpret the guest's output."""
        self.stream.feed(data)
        self.refresh()

    def text(self) -> str:
        """The screen's text, one line per row, trailing spaces kept (tests read it)."""
        return "\n".join(self.screen_buffer.display)

    def on_resize(self) -> None:
        width, height = self.size.width, self.size.height
        if width > 0 and height > 0:
            # The guest is not told (a serial line has no size); `stty rows R cols C` does.
            self.screen_buffer.resize(height, width)
            self.refresh()

    def _style(self, char: pyte.screens.Char, cursor: bool) -> Style:
        key = (char.fg, char.bg, char.bold, char.underscore, char.reverse != cursor, char.italics)
        style = self._styles.get(key)
        if style is None:
            style = Style(
                color=_colour(char.fg),
                bgcolor=_colour(char.bg),
                bold=char.bold,
                underline=char.underscore,
                reverse=char.reverse != cursor,
                italic=char.italics,
            )
            self._styles[key] = style
        return style

    def render_line(self, y: int) -> Strip:
        screen = self.screen_buffer
        width = self.size.width
        if y >= screen.lines:
            return Strip.blank(width, self.rich_style)
        row = screen.buffer[y]
        cursor_x = screen.cursor.x if (y == screen.cursor.y and not screen.cursor.hidden) else -1
        segments: list[Segment] = []
        text: list[str] = []
        current: Style | None = None
        for x in range(min(screen.columns, width)):
            char = row[x]
            style = self._style(char, x == cursor_x)
            if style is not current and text:
                segments.append(
                    Segment("".join(text), self.rich_style + current if current else None)
                )
                text = []
            current = style
            text.append(char.data or " ")
        if text:
            segments.append(Segment("".join(text), self.rich_style + current if current else None))
        return Strip(segments).extend_cell_length(width, self.rich_style)
