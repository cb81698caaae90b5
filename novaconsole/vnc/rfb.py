"""A sans-I/O RFB (VNC) client: bytes in, events and bytes to send out (h11/wsproto style).

:class:`RfbClient` runs :class:`~novaconsole.vnc.probe.RfbClientHandshake` and then the
normal protocol: it asks for 32 bpp true colour (SetPixelFormat), announces its encodings
(SetEncodings), requests framebuffer updates, decodes them into a
:class:`~novaconsole.vnc.framebuffer.Framebuffer`, and encodes key and pointer events.

Encodings decoded: Raw, CopyRect, Zlib and ZRLE (QEMU's compressed ones that need no JPEG
decoder), plus the DesktopSize and QEMU Extended Key Event pseudo-encodings. Zlib is asked
for first: it is cheapest to decode in Python (zlib plus byte slicing), while ZRLE saves more
bytes but decodes tile by tile in Python. QEMU picks the first encoding in the client's list
that it supports, so the order of :data:`DEFAULT_ENCODINGS` is the preference.

The client never blocks and owns no socket: :meth:`RfbClient.receive` takes whatever bytes
arrived (split anywhere) and returns events; :meth:`RfbClient.data_to_send` returns what to
write. :mod:`novaconsole.vnc.session` is the thread adapter over a transport.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from novaconsole.vnc.encodings import PixelCodec, ZrleDecoder
from novaconsole.vnc.framebuffer import Framebuffer, Rect
from novaconsole.vnc.keys import Key
from novaconsole.vnc.probe import (
    HandshakeState,
    PixelFormat,
    RfbClientHandshake,
    RfbError,
    RfbHandshake,
)

# -- protocol numbers ------------------------------------------------------------------------

ENCODING_RAW = 0
ENCODING_COPYRECT = 1
ENCODING_HEXTILE = 5
ENCODING_ZLIB = 6
ENCODING_TIGHT = 7
ENCODING_ZRLE = 16
ENCODING_DESKTOP_SIZE = -223
ENCODING_QEMU_EXTENDED_KEY = -258

ENCODING_NAMES: dict[int, str] = {
    ENCODING_RAW: "Raw",
    ENCODING_COPYRECT: "CopyRect",
    ENCODING_HEXTILE: "Hextile",
    ENCODING_ZLIB: "Zlib",
    ENCODING_TIGHT: "Tight",
    ENCODING_ZRLE: "ZRLE",
    ENCODING_DESKTOP_SIZE: "DesktopSize",
    ENCODING_QEMU_EXTENDED_KEY: "QEMU Extended Key Event",
}

#: What we announce, most preferred first (the server uses the first one it supports).
DEFAULT_ENCODINGS: tuple[int, ...] = (
    ENCODING_ZLIB,
    ENCODING_ZRLE,
    ENCODING_COPYRECT,
    ENCODING_RAW,
    ENCODING_DESKTOP_SIZE,
    ENCODING_QEMU_EXTENDED_KEY,
)

#: 32 bits per pixel, depth 24, little endian, true colour, red in bits 16-23.
TRUE_COLOUR_32 = PixelFormat(32, 24, False, True, 255, 255, 255, 16, 8, 0)

# Client -> server message types.
_SET_PIXEL_FORMAT = 0
_SET_ENCODINGS = 2
_FRAMEBUFFER_UPDATE_REQUEST = 3
_KEY_EVENT = 4
_POINTER_EVENT = 5
_QEMU_CLIENT_MESSAGE = 255
_QEMU_EXTENDED_KEY_EVENT = 0

# Server -> client message types.
_FRAMEBUFFER_UPDATE = 0
_SET_COLOUR_MAP_ENTRIES = 1
_BELL = 2
_SERVER_CUT_TEXT = 3

#: Cut text or compressed rectangles larger than this are treated as a protocol error.
MAX_MESSAGE_BYTES = 64 << 20


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """The handshake finished; SetPixelFormat, SetEncodings and a full update request are queued."""

    handshake: RfbHandshake


@dataclass(frozen=True, slots=True)
class FramebufferUpdated:
    """One FramebufferUpdate message was applied; ``rects`` are the areas it painted."""

    rects: tuple[Rect, ...]


@dataclass(frozen=True, slots=True)
class DesktopResized:
    """The guest changed resolution (DesktopSize); the framebuffer is now black at that size."""

    width: int
    height: int


@dataclass(frozen=True, slots=True)
class ExtendedKeysSupported:
    """The server acknowledged QEMU Extended Key Event: keys now go as scancodes."""


@dataclass(frozen=True, slots=True)
class Bell:
    """The guest rang the bell."""


@dataclass(frozen=True, slots=True)
class ServerCutText:
    """The guest's clipboard (Latin-1 per RFC 6143)."""

    text: str


RfbEvent = (
    Connected | FramebufferUpdated | DesktopResized | ExtendedKeysSupported | Bell | ServerCutText
)


# -- the client ------------------------------------------------------------------------------


class _State(enum.Enum):
    HANDSHAKE = "the handshake"
    MESSAGE = "a server message"
    UPDATE_HEADER = "a FramebufferUpdate header"
    RECT_HEADER = "a rectangle header"
    RECT_BODY = "rectangle data"
    COLOUR_MAP = "SetColourMapEntries"
    CUT_TEXT = "ServerCutText"


class RfbClient:
    """The RFB client protocol after (and including) the handshake, without I/O.

    ``pixel_format`` is what we ask the server for (32 bpp true colour by default);
    ``encodings`` is the SetEncodings list, most preferred first.
    """

    def __init__(
        self,
        *,
        shared: bool = True,
        pixel_format: PixelFormat = TRUE_COLOUR_32,
        encodings: Sequence[int] = DEFAULT_ENCODINGS,
    ) -> None:
        self.codec = PixelCodec(pixel_format)
        self._cpixel = PixelCodec(pixel_format, compact=True)
        self.encodings = tuple(encodings)
        self._handshake = RfbClientHandshake(shared=shared)
        self._state = _State.HANDSHAKE
        self._buffer = bytearray()
        self._outgoing = bytearray()
        self.framebuffer = Framebuffer(0, 0)
        self.handshake: RfbHandshake | None = None
        #: True once the server acknowledged QEMU Extended Key Event.
        self.extended_keys = False
        self._rects_left = 0
        self._rect: tuple[Rect, int] | None = None
        self._painted: list[Rect] = []
        self._need_full_update = True
        #: Encodings seen in updates, by name, with their rectangle counts (diagnostics).
        self.encoding_counts: dict[str, int] = {}
        # Zlib and ZRLE each keep one zlib stream for the whole connection (RFC 6143 7.7).
        self._zlib = zlib.decompressobj()
        self._zrle = zlib.decompressobj()

    @property
    def connected(self) -> bool:
        return self.handshake is not None

    # -- bytes in ------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[RfbEvent]:
        """Consume server bytes (any split); return the events they completed.

        Raises :class:`RfbError` on a protocol violation; the connection is then unusable.
        """
        events: list[RfbEvent] = []
        if self._state is _State.HANDSHAKE:
            reply = self._handshake.receive(data)
            self._outgoing += reply
            if self._handshake.state is not HandshakeState.DONE:
                return events
            self._on_connected(events)
            data = self._handshake.unconsumed
        self._buffer += data
        while self._step(events):
            pass
        return events

    def data_to_send(self) -> bytes:
        """Bytes queued for the server since the last call (may be empty)."""
        out, self._outgoing = bytes(self._outgoing), bytearray()
        return out

    def _on_connected(self, events: list[RfbEvent]) -> None:
        result = self._handshake.result
        self.handshake = result
        self.framebuffer.resize(result.width, result.height)
        self._state = _State.MESSAGE
        self.set_pixel_format(self.codec.format)
        self.set_encodings(self.encodings)
        self.request_update(incremental=False)
        events.append(Connected(result))

    def _take(self, n: int) -> bytes | None:
        if len(self._buffer) < n:
            return None
        chunk = bytes(self._buffer[:n])
        del self._buffer[:n]
        return chunk

    def _step(self, events: list[RfbEvent]) -> bool:
        state = self._state
        if state is _State.MESSAGE:
            return self._on_message(events)
        if state is _State.UPDATE_HEADER:
            return self._on_update_header(events)
        if state is _State.RECT_HEADER:
            return self._on_rect_header(events)
        if state is _State.RECT_BODY:
            return self._on_rect_body(events)
        if state is _State.COLOUR_MAP:
            return self._on_colour_map()
        if state is _State.CUT_TEXT:
            return self._on_cut_text(events)
        return False

    def _on_message(self, events: list[RfbEvent]) -> bool:
        if not self._buffer:
            return False
        kind = self._buffer[0]
        if kind == _FRAMEBUFFER_UPDATE:
            self._state = _State.UPDATE_HEADER
        elif kind == _SET_COLOUR_MAP_ENTRIES:
            self._state = _State.COLOUR_MAP
        elif kind == _BELL:
            del self._buffer[:1]
            events.append(Bell())
            return True
        elif kind == _SERVER_CUT_TEXT:
            self._state = _State.CUT_TEXT
        else:
            raise RfbError(f"unknown RFB server message type {kind}")
        return True

    def _on_update_header(self, events: list[RfbEvent]) -> bool:
        header = self._take(4)
        if header is None:
            return False
        (self._rects_left,) = struct.unpack_from(">H", header, 2)
        self._painted = []
        return self._end_of_update(events)

    def _end_of_update(self, events: list[RfbEvent]) -> bool:
        if self._rects_left == 0:
            self._state = _State.MESSAGE
            events.append(FramebufferUpdated(tuple(self._painted)))
            self._painted = []
        else:
            self._state = _State.RECT_HEADER
        return True

    def _on_rect_header(self, events: list[RfbEvent]) -> bool:
        header = self._take(12)
        if header is None:
            return False
        x, y, w, h, encoding = struct.unpack(">HHHHi", header)
        rect = Rect(x, y, w, h)
        name = ENCODING_NAMES.get(encoding, str(encoding))
        self.encoding_counts[name] = self.encoding_counts.get(name, 0) + 1
        if encoding == ENCODING_DESKTOP_SIZE:
            self.framebuffer.resize(w, h)
            self._need_full_update = True
            self._painted.append(Rect(0, 0, w, h))
            events.append(DesktopResized(w, h))
            return self._rect_done(events)
        if encoding == ENCODING_QEMU_EXTENDED_KEY:
            if not self.extended_keys:
                self.extended_keys = True
                events.append(ExtendedKeysSupported())
            return self._rect_done(events)
        if encoding not in (ENCODING_RAW, ENCODING_COPYRECT, ENCODING_ZLIB, ENCODING_ZRLE):
            raise RfbError(f"server sent a rectangle in encoding {name} that we did not ask for")
        fb = self.framebuffer
        if x + w > fb.width or y + h > fb.height:
            raise RfbError(
                f"server sent a {w}x{h}+{x}+{y} rectangle outside its "
                f"{fb.width}x{fb.height} framebuffer"
            )
        self._rect = (rect, encoding)
        self._state = _State.RECT_BODY
        return True

    def _rect_done(self, events: list[RfbEvent]) -> bool:
        self._rects_left -= 1
        self._rect = None
        return self._end_of_update(events)

    def _on_rect_body(self, events: list[RfbEvent]) -> bool:
        assert self._rect is not None
        rect, encoding = self._rect
        if encoding == ENCODING_RAW:
            data = self._take(rect.width * rect.height * self.codec.bytes_per_pixel)
            if data is None:
                return False
            if not rect.empty:
                self.framebuffer.put(rect, self.codec.to_rgb(data))
        elif encoding == ENCODING_COPYRECT:
            data = self._take(4)
            if data is None:
                return False
            src_x, src_y = struct.unpack(">HH", data)
            if not rect.empty:
                try:
                    self.framebuffer.copy(src_x, src_y, rect)
                except ValueError as exc:
                    raise RfbError(f"CopyRect from outside the framebuffer: {exc}") from None
        else:
            compressed = self._take_counted()
            if compressed is None:
                return False
            if encoding == ENCODING_ZLIB:
                self._apply_zlib(rect, compressed)
            else:
                self._apply_zrle(rect, compressed)
        if not rect.empty:
            self._painted.append(rect)
        return self._rect_done(events)

    def _take_counted(self) -> bytes | None:
        """A U32 length and that many bytes, once all of them are here."""
        if len(self._buffer) < 4:
            return None
        (length,) = struct.unpack_from(">I", self._buffer, 0)
        if length > MAX_MESSAGE_BYTES:
            raise RfbError(f"compressed rectangle of {length} bytes is implausible")
        if len(self._buffer) < 4 + length:
            return None
        data = bytes(self._buffer[4 : 4 + length])
        del self._buffer[: 4 + length]
        return data

    def _inflate(self, stream: zlib._Decompress, data: bytes, expected: int | None) -> bytes:
        try:
            out = stream.decompress(data)
        except zlib.error as exc:
            raise RfbError(f"corrupt zlib data in a framebuffer update: {exc}") from None
        if expected is not None and len(out) != expected:
            raise RfbError(f"Zlib rectangle inflated to {len(out)} bytes, expected {expected}")
        return out

    def _apply_zlib(self, rect: Rect, compressed: bytes) -> None:
        size = rect.width * rect.height * self.codec.bytes_per_pixel
        pixels = self._inflate(self._zlib, compressed, size)
        if size:
            self.framebuffer.put(rect, self.codec.to_rgb(pixels))

    def _apply_zrle(self, rect: Rect, compressed: bytes) -> None:
        data = self._inflate(self._zrle, compressed, None)
        try:
            ZrleDecoder(self._cpixel, data).paint(self.framebuffer, rect)
        except IndexError:
            raise RfbError("ZRLE rectangle ended before its tiles did") from None

    def _on_colour_map(self) -> bool:
        # We always ask for true colour, so colour map entries carry nothing we use; skip them.
        if len(self._buffer) < 6:
            return False
        (count,) = struct.unpack_from(">H", self._buffer, 4)
        if len(self._buffer) < 6 + count * 6:
            return False
        del self._buffer[: 6 + count * 6]
        self._state = _State.MESSAGE
        return True

    def _on_cut_text(self, events: list[RfbEvent]) -> bool:
        if len(self._buffer) < 8:
            return False
        (length,) = struct.unpack_from(">I", self._buffer, 4)
        if length > MAX_MESSAGE_BYTES:
            raise RfbError(f"ServerCutText of {length} bytes is implausible")
        if len(self._buffer) < 8 + length:
            return False
        text = bytes(self._buffer[8 : 8 + length]).decode("latin-1")
        del self._buffer[: 8 + length]
        events.append(ServerCutText(text))
        self._state = _State.MESSAGE
        return True

    # -- bytes out -----------------------------------------------------------------------

    def set_pixel_format(self, pf: PixelFormat) -> None:
        """Queue SetPixelFormat (the client decodes updates in this format from now on)."""
        self.codec = PixelCodec(pf)
        self._cpixel = PixelCodec(pf, compact=True)
        self._outgoing += struct.pack(">Bxxx", _SET_PIXEL_FORMAT) + pf.pack()

    def set_encodings(self, encodings: Sequence[int]) -> None:
        """Queue SetEncodings."""
        self.encodings = tuple(encodings)
        self._outgoing += struct.pack(">BxH", _SET_ENCODINGS, len(encodings))
        self._outgoing += b"".join(struct.pack(">i", e) for e in encodings)

    def request_update(self, *, incremental: bool | None = None, rect: Rect | None = None) -> None:
        """Queue FramebufferUpdateRequest for ``rect`` (default: the whole screen).

        ``incremental=None`` means incremental unless the screen is new (connect, resize).
        """
        fb = self.framebuffer
        area = rect or Rect(0, 0, fb.width, fb.height)
        if incremental is None:
            incremental = not self._need_full_update
        if not incremental:
            self._need_full_update = False
        self._outgoing += struct.pack(
            ">BBHHHH",
            _FRAMEBUFFER_UPDATE_REQUEST,
            int(incremental),
            area.x,
            area.y,
            area.width,
            area.height,
        )

    def key_event(self, key: Key, down: bool) -> None:
        """Queue one key press or release: QEMU's scancode event when acknowledged, else keysym."""
        if self.extended_keys and key.scancode:
            self._outgoing += struct.pack(
                ">BBHII",
                _QEMU_CLIENT_MESSAGE,
                _QEMU_EXTENDED_KEY_EVENT,
                int(down),
                key.keysym,
                key.scancode,
            )
        else:
            self._outgoing += struct.pack(">BBxxI", _KEY_EVENT, int(down), key.keysym)

    def pointer_event(self, x: int, y: int, buttons: int = 0) -> None:
        """Queue PointerEvent (``buttons``: bit 0 left, 1 middle, 2 right, 3/4 wheel)."""
        fb = self.framebuffer
        x = max(0, min(x, max(fb.width - 1, 0)))
        y = max(0, min(y, max(fb.height - 1, 0)))
        self._outgoing += struct.pack(">BBHH", _POINTER_EVENT, buttons & 0xFF, x, y)
