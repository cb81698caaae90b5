"""The RFB client: byte transcripts (every encoding, every split) and a real QEMU VNC server."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import rfb_bytes as rb
from qemu_guest import QEMU, seabios_guest, text_rows

from novaconsole.errors import ConfigError
from novaconsole.vnc.encodings import PixelCodec
from novaconsole.vnc.framebuffer import Framebuffer, Rect
from novaconsole.vnc.keys import NAMED_KEYS, Key, char_key, parse_combo
from novaconsole.vnc.png import encode_png, read_png_rgb, write_png
from novaconsole.vnc.probe import PixelFormat, RfbError, SocketTransport
from novaconsole.vnc.rfb import (
    DEFAULT_ENCODINGS,
    ENCODING_COPYRECT,
    ENCODING_DESKTOP_SIZE,
    ENCODING_QEMU_EXTENDED_KEY,
    ENCODING_RAW,
    ENCODING_ZLIB,
    Bell,
    Connected,
    DesktopResized,
    ExtendedKeysSupported,
    FramebufferUpdated,
    RfbClient,
    RfbEvent,
    ServerCutText,
)
from novaconsole.vnc.session import RfbSession

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)
GREY = (10, 20, 30)


def feed(client: RfbClient, data: bytes, cuts: list[int]) -> list[RfbEvent]:
    events: list[RfbEvent] = []
    last = 0
    for cut in [*cuts, len(data)]:
        events += client.receive(data[last:cut])
        last = cut
    return events


def connected_client(width: int = 8, height: int = 4) -> RfbClient:
    client = RfbClient()
    events = client.receive(rb.handshake(width, height))
    assert isinstance(events[0], Connected)
    client.data_to_send()
    return client


# -- what the client sends -----------------------------------------------------------------


def test_after_serverinit_the_client_asks_for_pixels_encodings_and_a_full_update() -> None:
    client = RfbClient()
    events = client.receive(rb.handshake(8, 4))
    assert events == [Connected(client.handshake)]  # type: ignore[arg-type]
    sent = client.data_to_send()
    assert sent.startswith(b"RFB 003.008\n\x01\x01")
    rest = sent[14:]
    # SetPixelFormat: 32 bpp, depth 24, little endian, true colour, 255 maxes, 16/8/0.
    assert rest[:20] == struct.pack(">BxxxBBBBHHHBBBxxx", 0, 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
    count = len(DEFAULT_ENCODINGS)
    assert rest[20:24] == struct.pack(">BxH", 2, count)
    encodings = struct.unpack(f">{count}i", rest[24 : 24 + 4 * count])
    assert encodings == DEFAULT_ENCODINGS
    assert ENCODING_DESKTOP_SIZE in encodings
    assert ENCODING_QEMU_EXTENDED_KEY in encodings
    # FramebufferUpdateRequest, not incremental, whole screen.
    assert rest[24 + 4 * count :] == struct.pack(">BBHHHH", 3, 0, 0, 0, 8, 4)
    assert client.data_to_send() == b""


def test_next_requests_are_incremental_until_a_resize() -> None:
    client = connected_client()
    client.request_update()
    assert client.data_to_send() == struct.pack(">BBHHHH", 3, 1, 0, 0, 8, 4)
    client.receive(rb.update(rb.desktop_size(16, 2)))
    client.request_update()
    assert client.data_to_send() == struct.pack(">BBHHHH", 3, 0, 0, 0, 16, 2)


def test_keys_are_keysyms_until_qemu_acknowledges_extended_keys() -> None:
    client = connected_client()
    enter = NAMED_KEYS["enter"]
    client.key_event(enter, True)
    assert client.data_to_send() == struct.pack(">BBxxI", 4, 1, 0xFF0D)
    events = client.receive(rb.update(rb.qemu_extended_key_ack()))
    assert ExtendedKeysSupported() in events
    client.key_event(enter, False)
    assert client.data_to_send() == struct.pack(">BBHII", 255, 0, 0, 0xFF0D, 0x1C)
    # A key without a scancode (a non-US character) still goes as a keysym.
    key, _ = char_key("é")
    client.key_event(key, True)
    assert client.data_to_send() == struct.pack(">BBxxI", 4, 1, 0xE9)


def test_pointer_events_are_clamped_to_the_screen() -> None:
    client = connected_client()
    client.pointer_event(100, -3, 1)
    assert client.data_to_send() == struct.pack(">BBHH", 5, 1, 7, 0)


def test_key_names_and_chords() -> None:
    assert parse_combo("ctrl+alt+delete") == [
        Key(0xFFE3, 0x1D),
        Key(0xFFE9, 0x38),
        Key(0xFFFF, 0xD3),  # 0xE0 0x53: the extended prefix folds into the high bit
    ]
    assert parse_combo("A") == [Key(0xFFE1, 0x2A), Key(ord("A"), 0x1E)]
    assert char_key("?") == (Key(ord("?"), 0x35), True)
    assert parse_combo("up") == [Key(0xFF52, 0xC8)]
    with pytest.raises(ValueError, match=r"'meta' in 'meta\+x' is not a modifier"):
        parse_combo("meta+x")
    with pytest.raises(ValueError, match="unknown key 'nosuch'"):
        parse_combo("nosuch")


# -- decoding, in any split ----------------------------------------------------------------


def _checker_pixels(w: int, h: int) -> list[tuple[int, int, int]]:
    return [(x * 30 % 256, y * 60 % 256, (x + y) * 17 % 256) for y in range(h) for x in range(w)]


def _transcript() -> tuple[bytes, Framebuffer]:
    """A session after the handshake exercising every message, and the screen it leaves."""
    zlib_stream = rb.ZStream()
    expect = Framebuffer(8, 4)
    raw = _checker_pixels(8, 4)
    expect.put(Rect(0, 0, 8, 4), b"".join(bytes(p) for p in raw))
    first = rb.update(rb.raw_rect(0, 0, 8, 4, raw), rb.qemu_extended_key_ack())
    # CopyRect overlapping its source, then Zlib on two rects sharing one stream.
    expect.copy(0, 0, Rect(2, 1, 4, 2))
    z1 = [RED] * 6
    z2 = [GREEN, BLUE, WHITE, BLACK]
    expect.put(Rect(5, 0, 3, 2), b"".join(bytes(p) for p in z1))
    expect.put(Rect(0, 2, 2, 2), b"".join(bytes(p) for p in z2))
    second = rb.update(
        rb.copy_rect(2, 1, 4, 2, 0, 0),
        rb.zlib_rect(zlib_stream, 5, 0, 3, 2, z1),
        rb.zlib_rect(zlib_stream, 0, 2, 2, 2, z2),
    )
    return rb.bell() + rb.colour_map_entries(2) + first + rb.cut_text("clip") + second, expect


def _zrle_transcript() -> tuple[bytes, Framebuffer]:
    """A 70x66 screen: ZRLE tiles of 64x64, 6x64, 64x2 and 6x2 with every subencoding."""
    stream = rb.ZStream()
    w, h = 70, 66
    expect = Framebuffer(w, h)
    tiles: list[bytes] = []
    # Tile (0,0) 64x64: palette RLE, runs crossing rows.
    palette = [RED, GREEN, BLUE]
    runs = [(0, 100), (1, 1), (2, 300), (0, 64 * 64 - 401)]
    tiles.append(rb.zrle_tile_palette_rle(palette, runs))
    pixels = [palette[i] for i, n in runs for _ in range(n)]
    expect.put(Rect(0, 0, 64, 64), b"".join(bytes(p) for p in pixels))
    # Tile (64,0) 6x64: packed palette, 2 colours (1 bit), rows padded to a byte.
    indices = [(x + y) % 2 for y in range(64) for x in range(6)]
    tiles.append(rb.zrle_tile_packed([BLACK, WHITE], indices, 6))
    expect.put(Rect(64, 0, 6, 64), b"".join(bytes([BLACK, WHITE][i]) for i in indices))
    # Tile (0,64) 64x2: plain RLE with a run longer than 255.
    tiles.append(rb.zrle_tile_plain_rle([(GREY, 100), (BLUE, 28)]))
    expect.put(Rect(0, 64, 64, 2), bytes(GREY) * 100 + bytes(BLUE) * 28)
    # Tile (64,64) 6x2: raw.
    raw = _checker_pixels(6, 2)
    tiles.append(rb.zrle_tile_raw(raw))
    expect.put(Rect(64, 64, 6, 2), b"".join(bytes(p) for p in raw))
    first = rb.update(rb.zrle_rect(stream, 0, 0, w, h, tiles))
    # A second rect on the same stream: a solid tile and a 5-colour (4-bit) packed tile.
    expect.fill(Rect(10, 10, 3, 3), bytes(GREEN))
    five = [RED, GREEN, BLUE, WHITE, GREY]
    idx = [i % 5 for i in range(9)]
    second_tiles = [rb.zrle_tile_solid(GREEN)]
    second = rb.update(
        rb.zrle_rect(stream, 10, 10, 3, 3, second_tiles),
        rb.zrle_rect(stream, 20, 20, 3, 3, [rb.zrle_tile_packed(five, idx, 3)]),
    )
    expect.put(Rect(20, 20, 3, 3), b"".join(bytes(five[i]) for i in idx))
    return first + second, expect


@pytest.mark.parametrize("builder", [_transcript, _zrle_transcript], ids=["raw-copy-zlib", "zrle"])
def test_transcript_decodes_the_same_in_every_split(builder: object) -> None:
    data, expect = builder()  # type: ignore[operator]
    # Every single cut point, and the whole thing one byte at a time.
    splits = [[cut] for cut in range(1, len(data))] + [list(range(1, len(data)))]
    for cuts in splits:
        client = connected_client(expect.width, expect.height)
        events = feed(client, data, cuts)
        assert client.framebuffer.pixels == expect.pixels, f"split at {cuts[:3]}"
        updates = [e for e in events if isinstance(e, FramebufferUpdated)]
        assert len(updates) == 2
    assert client.data_to_send() == b""


def test_transcript_events_in_order() -> None:
    data, _ = _transcript()
    client = connected_client()
    events = client.receive(data)
    kinds = [type(e) for e in events]
    assert kinds == [
        Bell,
        ExtendedKeysSupported,
        FramebufferUpdated,
        ServerCutText,
        FramebufferUpdated,
    ]
    assert ServerCutText("clip") in events
    last = events[-1]
    assert isinstance(last, FramebufferUpdated)
    assert last.rects == (Rect(2, 1, 4, 2), Rect(5, 0, 3, 2), Rect(0, 2, 2, 2))
    assert client.encoding_counts == {
        "Raw": 1,
        "QEMU Extended Key Event": 1,
        "CopyRect": 1,
        "Zlib": 2,
    }


def test_desktop_resize_mid_session() -> None:
    client = connected_client(8, 4)
    events = client.receive(rb.update(rb.desktop_size(3, 2), rb.raw_rect(0, 0, 3, 2, [WHITE] * 6)))
    assert events[0] == DesktopResized(3, 2)
    assert (client.framebuffer.width, client.framebuffer.height) == (3, 2)
    assert client.framebuffer.pixel(2, 1) == WHITE
    assert isinstance(events[1], FramebufferUpdated)
    assert events[1].rects == (Rect(0, 0, 3, 2), Rect(0, 0, 3, 2))


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (rb.update(rb.raw_rect(6, 0, 3, 1, [RED] * 3)), "outside its 8x4 framebuffer"),
        (rb.update(rb.rect_header(0, 0, 1, 1, 7)), "encoding Tight that we did not ask for"),
        (rb.update(rb.copy_rect(0, 0, 4, 4, 6, 0)), "CopyRect from outside the framebuffer"),
        (b"\x09", "unknown RFB server message type 9"),
        (rb.update(rb.rect_header(0, 0, 1, 1, 6) + b"\x00\x00\x00\x02xx"), "corrupt zlib data"),
        (
            rb.update(rb.zrle_rect(rb.ZStream(), 0, 0, 2, 1, [b"\x01\x00"])),
            "ZRLE rectangle ended before its tiles did",
        ),
        (
            rb.update(rb.zrle_rect(rb.ZStream(), 0, 0, 2, 1, [rb.zrle_tile_plain_rle([(RED, 3)])])),
            r"ZRLE run overflows its tile \(3 of 2 pixels\)",
        ),
    ],
)
def test_protocol_violations_are_one_line_errors(message: bytes, error: str) -> None:
    client = connected_client()
    with pytest.raises(RfbError, match=error):
        client.receive(message)


# -- pixel formats -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pf", "pixel", "rgb"),
    [
        # 32 bpp big endian, red in the top byte: the fast path with other byte indices.
        (PixelFormat(32, 24, True, True, 255, 255, 255, 24, 16, 8), b"\x11\x22\x33\x00", b"\x11\x22\x33"),
        # 16 bpp RGB565 little endian: the general path scales 5/6-bit channels to 8 bits.
        (PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0), struct.pack("<H", 0xF81F), b"\xff\x00\xff"),
        # 8 bpp BGR233.
        (PixelFormat(8, 8, False, True, 7, 7, 3, 0, 3, 6), bytes([0b11000111]), b"\xff\x00\xff"),
    ],
    ids=["32be", "rgb565", "bgr233"],
)  # fmt: skip
def test_pixel_formats(pf: PixelFormat, pixel: bytes, rgb: bytes) -> None:
    codec = PixelCodec(pf)
    assert codec.to_rgb(pixel * 3) == rgb * 3


def test_a_client_in_16_bpp_decodes_raw_rects_in_that_format() -> None:
    pf = PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0)
    client = RfbClient(pixel_format=pf, encodings=(ENCODING_RAW,))
    client.receive(rb.handshake(2, 1))
    assert client.data_to_send()[14:34] == struct.pack(
        ">BxxxBBBBHHHBBBxxx", 0, 16, 16, 0, 1, 31, 63, 31, 11, 5, 0
    )
    client.receive(rb.update(rb.rect_header(0, 0, 2, 1, 0) + struct.pack("<HH", 0x001F, 0x07E0)))
    assert client.framebuffer.pixels == bytearray(b"\x00\x00\xff\x00\xff\x00")


def test_colour_map_formats_are_refused() -> None:
    with pytest.raises(RfbError, match="need true colour"):
        PixelCodec(PixelFormat(8, 8, False, False, 0, 0, 0, 0, 0, 0))


# -- PNG -------------------------------------------------------------------------------------


def test_png_round_trip_and_structure(tmp_path: Path) -> None:
    rgb = b"".join(bytes(p) for p in _checker_pixels(5, 3))
    path = write_png(tmp_path / "shot.png", 5, 3, rgb)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (5, 3)
    assert read_png_rgb(data) == (5, 3, rgb)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    with pytest.raises(ValueError, match="12 bytes of RGB for a 5x3 image"):
        encode_png(5, 3, b"\x00" * 12)


def test_png_to_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot write screenshot .*/nowhere/shot\.png"):
        write_png(tmp_path / "nowhere" / "shot.png", 1, 1, b"\x00\x00\x00")


# -- a real QEMU VNC server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def seabios_port() -> Iterator[int]:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    with seabios_guest() as port:
        yield port


def _wait_rows(session: RfbSession, predicate: object, timeout: float = 30) -> list[int]:
    """Wait (readiness, with a deadline) until the screen's text rows satisfy ``predicate``
    in two updates in a row with the same top rows (SeaBIOS prints character by character).
    """
    seen = -1
    rows: list[int] = []
    previous: bytes | None = None
    while session.wait_for_update(timeout, after=seen):
        seen = session.update_count
        fb = session.snapshot()
        rows = text_rows(fb)
        top = fb.crop(Rect(0, 0, fb.width, min(fb.height, 48)))
        if predicate(rows):  # type: ignore[operator]
            if top == previous:
                return rows
            previous = top
        else:
            previous = None
    raise AssertionError(f"screen never matched; last text rows {rows}, error {session.error}")


ENCODING_CHOICES = {
    "zrle": DEFAULT_ENCODINGS,
    "zlib": (ENCODING_ZLIB, ENCODING_RAW, ENCODING_DESKTOP_SIZE, ENCODING_QEMU_EXTENDED_KEY),
    "raw": (ENCODING_RAW, ENCODING_COPYRECT, ENCODING_DESKTOP_SIZE),
}


def test_real_qemu_screen_decodes_the_same_in_each_encoding(
    seabios_port: int, tmp_path: Path
) -> None:
    banners: dict[str, bytes] = {}
    for label, encodings in ENCODING_CHOICES.items():
        sock = socket.create_connection(("127.0.0.1", seabios_port), timeout=10)
        session = RfbSession(SocketTransport(sock), "QEMU", client=RfbClient(encodings=encodings))
        with session:
            session.start()
            rows = _wait_rows(session, lambda r: r[:2] == [0, 2])  # banner, "Press ESC ..."
            fb = session.snapshot()
            assert (fb.width, fb.height) == (720, 400), label  # text mode, after DesktopSize
            assert not fb.is_blank()
            assert rows[:2] == [0, 2]
            used = session.client.encoding_counts
            if label == "zlib":
                assert used.get("Zlib", 0) > 0
                assert "ZRLE" not in used
            elif label == "raw":
                assert used.get("Raw", 0) > 0
                assert "Zlib" not in used
                assert "ZRLE" not in used
            else:
                # QEMU prefers ZRLE over Zlib whenever a client offers both.
                assert used.get("ZRLE", 0) > 0
                assert "Zlib" not in used
            # The screenshot is a valid PNG of exactly these pixels.
            path = session.screenshot(tmp_path / f"seabios-{label}.png")
            assert read_png_rgb(path.read_bytes()) == (720, 400, bytes(fb.pixels))
            banners[label] = fb.crop(Rect(0, 0, 720, 48))
    # SeaBIOS's banner and prompt rows are the same pixels whichever encoding carried them.
    assert banners["zrle"] == banners["zlib"] == banners["raw"]


def test_real_qemu_key_event_changes_the_screen() -> None:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    # A guest of its own: Escape opens SeaBIOS's boot menu, which no other test may do first.
    with seabios_guest("rfb-test-keys") as port, RfbSession.open_tcp("127.0.0.1", port) as s:
        _wait_rows(s, lambda r: r[:2] == [0, 2] and 6 not in r)
        assert s.client.extended_keys  # QEMU acknowledged: Escape goes as scancode 0x01
        s.press("escape")
        rows = _wait_rows(s, lambda r: 6 in r)  # "1. Legacy option rom" under the menu title
        assert rows[:3] == [0, 2, 4]
