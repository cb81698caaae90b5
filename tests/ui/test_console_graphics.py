"""The console screen drawing the recorded guest with Kitty graphics or Sixel, and falling
back to half-block cells; what reaches the terminal is read from what the app writes to its
(fake) terminal driver, or from the view's rendered lines."""

from __future__ import annotations

import base64
import re
import zlib
from pathlib import Path
from typing import Any

import pytest
from console_helpers import AppFactory, settle, wait_until
from fake_rfb import FakeRfbOpener
from fake_terminal import terminal_output, use_fake_terminal, written_since
from test_console_screen import SIZE, open_console
from textual import events
from textual.geometry import Region
from textual.message import Message
from textual.pilot import Pilot

from novaconsole.terminal_graphics import TerminalGraphics
from novaconsole.ui.app import NovaConsoleApp
from novaconsole.ui.confirm import ConfirmScreen
from novaconsole.ui.console_screen import ConsoleScreen
from novaconsole.ui.framebuffer_view import (
    EncodedFrame,
    FramebufferView,
    encode_frame,
    pixel_layout,
)
from novaconsole.vnc import kitty
from novaconsole.vnc.framebuffer import Framebuffer, Rect


def _app(
    fake_app: AppFactory, tmp_path: Path, graphics: TerminalGraphics | None
) -> tuple[NovaConsoleApp, FakeRfbOpener]:
    app = fake_app()
    opener = FakeRfbOpener()
    app.console_opener = opener
    app.screenshot_dir = tmp_path
    app.graphics = graphics
    return app, opener


async def _encoded_view(
    pilot: Pilot[Any], opener: FakeRfbOpener
) -> tuple[ConsoleScreen, FramebufferView]:
    screen = await open_console(pilot, opener)
    view = screen.query_one(FramebufferView)
    await wait_until(pilot, lambda: view._shown is not None, "a pixel frame was encoded")
    encoded = -1
    while encoded != view.frames_encoded:  # the last frame of the recording, not an earlier
        encoded = view.frames_encoded
        await pilot.pause(0.2)
    return screen, view


def _text(view: FramebufferView) -> str:
    lines = view.render_lines(Region(0, 0, view.size.width, view.size.height))
    return "".join(segment.text for line in lines for segment in line)


def _transmits(output: str, image_id: int) -> int:
    return output.count(f"\x1b_Ga=T,U=1,i={image_id},")


def _sixels(output: str) -> list[tuple[int, int]]:
    """Where (row, column, 1-based) each Sixel image written was drawn."""
    return [
        (int(row), int(column))
        for row, column in re.findall(r"\x1b7\x1b\[(\d+);(\d+)H\x1bPq", output)
    ]


async def _sixel_written(pilot: Pilot[Any], view: FramebufferView) -> None:
    """Wait until no frame has come for a while and the latest was written."""
    app = pilot.app
    encoded = -1
    while encoded != view.frames_encoded:
        encoded = view.frames_encoded
        await wait_until(
            pilot,
            lambda: view._shown is not None and view._shown.payload in terminal_output(app),
            "the image written",
        )
        await pilot.pause(0.2)


def _image_at(view: FramebufferView) -> tuple[int, int]:
    """(row, column), 1-based, of the top-left cell of the view's image on screen."""
    region, image = view.content_region, view._image_region()
    return region.y + image.y + 1, region.x + image.x + 1


def _changed(fb: Framebuffer) -> tuple[Framebuffer, Rect]:
    """A copy of ``fb`` with its top-left 16x16 pixels turned white."""
    copy = Framebuffer(fb.width, fb.height)
    copy.pixels[:] = fb.pixels
    rect = Rect(0, 0, 16, 16)
    copy.fill(rect, b"\xff\xff\xff")
    return copy, rect


@pytest.mark.asyncio
async def test_kitty_sends_the_screen_once_and_shows_placeholders(
    fake_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake_terminal(monkeypatch)
    app, opener = _app(fake_app, tmp_path, TerminalGraphics("kitty", 10, 20))
    async with app.run_test(size=SIZE) as pilot:
        screen, view = await _encoded_view(pilot, opener)
        assert view.protocol == "kitty"
        assert "kitty graphics" in str(screen.query_one("#console-status").render())
        fb = screen.session.snapshot() if screen.session else None
        assert fb is not None
        layout = view._shown.layout if view._shown else None
        assert layout is not None
        assert layout.columns <= SIZE[0]
        # 720x400 into 10x20-pixel cells: enlarged to fill the view, aspect kept.
        assert layout.fit.scale > 1
        assert abs(layout.columns * 10 / (layout.rows * 20) - 1.8) < 0.2
        # The image went to the terminal once (the recording's earlier frames may have
        # gone before it), then the placeholder cells that show it, in the image's
        # colour; the view's lines carry only the cells.
        output = terminal_output(app)
        assert view._shown is not None
        assert output.count(view._shown.payload) == 1
        assert _transmits(output, view._image_id) == view.frames_encoded - view.frames_unchanged
        colour = "38;2;{};{};{}".format(*kitty.colour_of(view._image_id))
        assert output.rindex(kitty.PLACEHOLDER) > output.index("\x1b_Ga=T")
        assert colour in output
        text = _text(view)
        assert "\x1b_G" not in text
        assert text.count(kitty.PLACEHOLDER) == layout.columns * layout.rows
        # What was sent decodes back to the guest's screen, at its own size.
        shown = view._shown
        assert shown is not None
        assert shown.payload in output
        payload = "".join(re.findall(r"\x1b_G[^;\x1b]*;([^\x1b]*)\x1b\\", shown.payload))
        assert zlib.decompress(base64.standard_b64decode(payload)) == bytes(fb.pixels)
        # An unchanged screen is not encoded or sent again.
        before = view.frames_encoded
        mark = len(terminal_output(app))
        view.show(fb, None)
        await pilot.pause()
        assert view.frames_encoded == before
        assert "\x1b_G" not in written_since(app, mark)


@pytest.mark.asyncio
async def test_kitty_image_is_deleted_when_the_operator_leaves(
    fake_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake_terminal(monkeypatch)
    app, opener = _app(fake_app, tmp_path, TerminalGraphics("kitty", 10, 20))
    async with app.run_test(size=SIZE) as pilot:
        screen, view = await _encoded_view(pilot, opener)
        image_id, frame = view._image_id, view._shown
        assert frame is not None
        mark = len(terminal_output(app))
        await pilot.press("ctrl+right_square_bracket")
        await wait_until(pilot, lambda: not screen.is_attached, "the console screen went")
        await pilot.pause()
        after = written_since(app, mark)
        # The image, its placement and its data are freed (upper-case I), once.
        assert after.count(f"\x1b_Ga=d,d=I,i={image_id},q=2\x1b\\") == 1
        assert kitty.PLACEHOLDER not in after.split("a=d,d=I")[-1]
        # A frame the encoder finishes afterwards does not bring the image back.
        view._encoded(EncodedFrame(frame.layout, frame.payload + " "))
        await pilot.pause()
        assert _transmits(written_since(app, mark), image_id) == 0


@pytest.mark.asyncio
async def test_kitty_image_hides_under_a_modal_and_is_placed_again_after(
    fake_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake_terminal(monkeypatch)
    app, opener = _app(fake_app, tmp_path, TerminalGraphics("kitty", 10, 20))
    async with app.run_test(size=SIZE) as pilot:
        screen, view = await _encoded_view(pilot, opener)
        image_id, shown = view._image_id, view._shown
        assert shown is not None
        mark = len(terminal_output(app))
        await pilot.press("ctrl+backslash")  # the confirmed Ctrl-Alt-Del's dialog
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the dialog")
        await pilot.pause()
        under = written_since(app, mark)
        # The placement is deleted, the data kept (lower-case i); the console beneath the
        # dialog is drawn without placeholder cells (dimmed, their colour would name
        # another image).
        hide = f"\x1b_Ga=d,d=i,i={image_id},q=2\x1b\\"
        assert under.count(hide) == 1
        assert kitty.PLACEHOLDER not in under
        assert "Ctrl-Alt-Del" in under
        assert kitty.PLACEHOLDER not in _text(view)
        mark = len(terminal_output(app))
        await pilot.press("n")
        await wait_until(pilot, lambda: app.screen is screen, "the console is back on top")
        await pilot.pause()
        back = written_since(app, mark)
        # Placed again from the data kept (not sent again), then its cells, in its colour.
        place = f"\x1b_Ga=p,U=1,i={image_id},c={shown.layout.columns},r={shown.layout.rows},q=2"
        assert back.count(place) == 1
        assert _transmits(back, image_id) == 0
        cells = back.count(kitty.PLACEHOLDER)  # the screen may be painted more than once
        assert cells
        assert cells % (shown.layout.columns * shown.layout.rows) == 0
        assert back.index(place) < back.index(kitty.PLACEHOLDER)
        colour = "38;2;{};{};{}".format(*kitty.colour_of(image_id))
        assert colour in back


@pytest.mark.asyncio
async def test_kitty_frame_that_comes_under_a_modal_is_sent_when_it_closes(
    fake_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake_terminal(monkeypatch)
    app, opener = _app(fake_app, tmp_path, TerminalGraphics("kitty", 10, 20))
    async with app.run_test(size=SIZE) as pilot:
        screen, view = await _encoded_view(pilot, opener)
        first = view._shown
        assert first is not None
        assert screen.session is not None
        await pilot.press("ctrl+backslash")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the dialog")
        mark = len(terminal_output(app))
        changed, rect = _changed(screen.session.snapshot())
        view.show(changed, rect)
        await wait_until(pilot, lambda: view._shown is not first, "the new frame encoded")
        await pilot.pause()
        assert "\x1b_G" not in written_since(app, mark)  # nothing while covered
        await pilot.press("n")
        await wait_until(pilot, lambda: app.screen is screen, "the console is back on top")
        await pilot.pause()
        back = written_since(app, mark)
        assert _transmits(back, view._image_id) == 1  # the newer frame, not the old one
        assert view._shown is not None
        assert view._shown.payload in back
        assert "a=p,U=1" not in back


@pytest.mark.asyncio
async def test_kitty_frame_reaches_the_terminal_despite_a_mouse_move_over_it(
    fake_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Textual renders the line under the pointer on every mouse move (get_style_at), and
    # never writes it: a frame carried in the rendered lines could be taken there.
    use_fake_terminal(monkeypatch)
    app, opener = _app(fake_app, tmp_path, TerminalGraphics("kitty", 10, 20))
    async with app.run_test(size=SIZE) as pilot:
        screen, view = await _encoded_view(pilot, opener)
        shown = view._shown
        assert shown is not None
        assert screen.session is not None
        changed, _ = _changed(screen.session.snapshot())
        frame = encode_frame(changed, shown.layout, "kitty", view._image_id, (10, 20))
        mark = len(terminal_output(app))
        view._encoded(frame)
        region = view.content_region
        screen.get_style_at(region.x + region.width // 2, region.y + region.height // 2)
        await pilot.pause()
        await pilot.pause()
        assert frame.payload in written_since(app, mark)


@pytest.mark.asyncio
async def test_kitty_resends_when_the_view_changes_size(
    fake_app: AppFactory, tmp_path: Path
) -> None:
    app, opener = _app(fake_app, tmp_path, TerminalGraphics("kitty", 10, 20))
    async with app.run_test(size=SIZE) as pilot:
        _, view = await _encoded_view(pilot, opener)
        first = view._shown
        await pilot.resize_terminal(100, 30)
        await wait_until(pilot, lambda: view._shown is not first, "a frame for the new size")
        assert view._shown is not None
        assert first is not None
        assert view._shown.layout.columns < first.layout.columns


@pytest.mark.asyncio
async def test_sixel_is_drawn_after_the_lines_at_the_view_s_place(
    fake_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake_terminal(monkeypatch)
    app, opener = _app(fake_app, tmp_path, TerminalGraphics("sixel", 4, 8))
    async with app.run_test(size=SIZE) as pilot:
        screen, view = await _encoded_view(pilot, opener)
        await _sixel_written(pilot, view)
        shown = view._shown
        assert shown is not None
        assert shown.payload.startswith("\x1bPq")
        # 720x400 in 140x34 cells of 4x8 pixels: scaled down to fit.
        expected = pixel_layout(720, 400, view.size.width, view.size.height, (4, 8), "sixel")
        assert shown.layout == expected
        assert shown.layout.fit.scale < 1
        # Whole six-row bands inside the view's cells: nothing spills onto the status line.
        match = re.match(r'\x1bPq"1;1;(\d+);(\d+)', shown.payload)
        assert match is not None
        width, height = int(match.group(1)), int(match.group(2))
        assert width <= expected.fit.width
        assert height <= expected.rows * 8
        assert height % 6 == 0
        # Saved cursor, absolute move to the image's top-left, the image, restored cursor,
        # written after the screen update that moves over the image's cells.
        output = terminal_output(app)
        region = view.content_region
        left = (view.size.width - expected.columns) // 2
        top = (view.size.height - expected.rows) // 2
        assert _sixels(output)[-1] == (region.y + top + 1, region.x + left + 1)
        drawn = output.rindex("\x1b7\x1b[")
        assert output.index(f"\x1b[{expected.columns}C") < drawn
        assert output[drawn:].startswith("\x1b7\x1b[")
        assert shown.payload + "\x1b8" in output[drawn:]
        # The view's own lines move over the pixels; they never carry the image.
        text = _text(view)
        assert "\x1bPq" not in text
        assert f"\x1b[{expected.columns}C" in text
        assert screen.frames_drawn >= 1


@pytest.mark.asyncio
async def test_sixel_is_sent_again_only_when_the_frame_or_its_cells_change(
    fake_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake_terminal(monkeypatch)
    app, opener = _app(fake_app, tmp_path, TerminalGraphics("sixel", 4, 8))
    async with app.run_test(size=SIZE) as pilot:
        screen, view = await _encoded_view(pilot, opener)
        await _sixel_written(pilot, view)
        assert screen.session is not None
        mark = len(terminal_output(app))
        # Repaints with the same frame: the view itself, the status line, the whole
        # screen, and the same framebuffer shown again.
        view.refresh()
        await pilot.pause()
        screen._status("something else")
        await pilot.pause()
        screen.refresh()
        await pilot.pause()
        fb = screen.session.snapshot()
        view.show(fb, Rect(0, 0, fb.width, fb.height))
        await wait_until(pilot, lambda: view.frames_unchanged >= 1, "the same frame encoded")
        await pilot.pause()
        assert "something else" in written_since(app, mark)  # the repaints were written
        assert _sixels(written_since(app, mark)) == []
        # A changed frame: drawn once more, at the same place.
        drawn_at = _image_at(view)
        assert _sixels(terminal_output(app))[-1] == drawn_at
        first = view._shown
        changed, rect = _changed(fb)
        view.show(changed, rect)
        await wait_until(pilot, lambda: view._shown is not first, "the changed frame encoded")
        await _sixel_written(pilot, view)
        assert _sixels(written_since(app, mark)) == [drawn_at]
        # Other cells (a smaller terminal): drawn again where the new cells are.
        mark = len(terminal_output(app))
        await pilot.resize_terminal(100, 30)
        await wait_until(pilot, lambda: _sixels(written_since(app, mark)), "drawn in new cells")
        await pilot.pause()
        await _sixel_written(pilot, view)
        assert _image_at(view) != drawn_at
        assert _sixels(written_since(app, mark))[-1] == _image_at(view)


@pytest.mark.asyncio
async def test_sixel_is_drawn_again_when_a_notification_over_it_goes(
    fake_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake_terminal(monkeypatch)
    app, opener = _app(fake_app, tmp_path, TerminalGraphics("sixel", 4, 8))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        _, view = await _encoded_view(pilot, opener)
        await _sixel_written(pilot, view)
        mark = len(terminal_output(app))
        app.notify("screenshot written to somewhere.png", timeout=1)
        await wait_until(pilot, lambda: "somewhere.png" in written_since(app, mark), "a toast")
        # The toast is painted over the image's bottom-right cells; not redrawn meanwhile.
        await pilot.pause(0.5)
        assert _sixels(written_since(app, mark)) == []
        await wait_until(pilot, lambda: not app._notifications, "the toast expired")
        await wait_until(pilot, lambda: _sixels(written_since(app, mark)), "drawn again")
        await pilot.pause(0.5)
        assert _sixels(written_since(app, mark)) == [_image_at(view)]


@pytest.mark.asyncio
async def test_sixel_hides_under_a_modal_and_is_drawn_again_after(
    fake_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake_terminal(monkeypatch)
    app, opener = _app(fake_app, tmp_path, TerminalGraphics("sixel", 4, 8))
    async with app.run_test(size=SIZE) as pilot:
        screen, view = await _encoded_view(pilot, opener)
        await _sixel_written(pilot, view)
        mark = len(terminal_output(app))
        await pilot.press("ctrl+backslash")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the dialog")
        await pilot.pause()
        under = written_since(app, mark)
        assert "Ctrl-Alt-Del" in under
        assert not _sixels(under)  # never drawn over the dialog
        assert not re.search(r"\x1b\[\d+C", _text(view))  # blank cells, not pixels
        mark = len(terminal_output(app))
        await pilot.press("n")
        await wait_until(pilot, lambda: app.screen is screen, "the console is back on top")
        await wait_until(pilot, lambda: _sixels(written_since(app, mark)), "drawn again")
        await pilot.pause()
        assert len(_sixels(written_since(app, mark))) == 1


@pytest.mark.asyncio
async def test_without_a_graphics_terminal_the_screen_uses_half_blocks(
    fake_app: AppFactory, tmp_path: Path
) -> None:
    app, opener = _app(fake_app, tmp_path, None)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_console(pilot, opener)
        view = screen.query_one(FramebufferView)
        assert view.protocol == "cells"
        assert view._encoder is None
        text = _text(view)
        assert "▀" in text
        assert "\x1b" not in text


@pytest.mark.asyncio
async def test_keys_typed_while_the_terminal_was_asked_come_first_in_order(
    fake_app: AppFactory,
) -> None:
    # What the probe read besides the terminal's answers (tests/vnc/test_graphics.py has
    # the real pty): pane keys around an arrow key's escape sequence, in one burst.
    app = fake_app()
    app.graphics = TerminalGraphics("cells", typed_ahead=b"2\x1b[B3")
    keys: list[events.Key] = []  # each event once: it is dispatched to each node it passes

    def seen(message: Message) -> None:
        if isinstance(message, events.Key) and not any(key is message for key in keys):
            keys.append(message)

    async with app.run_test(size=SIZE, message_hook=seen) as pilot:
        await settle(pilot)
        assert app.active_pane_name == app.panes[2].pane_name  # "3", after "2", took effect
        await pilot.press("4")  # typed after: read by the driver
        await settle(pilot)
        assert app.active_pane_name == app.panes[3].pane_name
    assert [key.key for key in keys] == ["2", "down", "3", "4"]


def test_graphics_setting_from_file_env_and_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from novaconsole.console import settings_from_args
    from novaconsole.errors import ConfigError
    from novaconsole.ui.settings import load_settings

    config = tmp_path / "config.toml"
    config.write_text('[console]\ngraphics = "sixel"\n', encoding="utf-8")
    base = load_settings(config)
    assert base.graphics == "sixel"
    monkeypatch.delenv("NOVACONSOLE_GRAPHICS", raising=False)
    assert settings_from_args(argparse.Namespace(), base).graphics == "sixel"
    monkeypatch.setenv("NOVACONSOLE_GRAPHICS", "cells")
    assert settings_from_args(argparse.Namespace(), base).graphics == "cells"
    assert settings_from_args(argparse.Namespace(graphics="kitty"), base).graphics == "kitty"
    monkeypatch.setenv("NOVACONSOLE_GRAPHICS", "vga")
    with pytest.raises(ConfigError, match=r"^NOVACONSOLE_GRAPHICS: graphics 'vga' is not one"):
        settings_from_args(argparse.Namespace(), base)
    config.write_text('[console]\ngraphics = "ascii"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"config.toml: \[console\]: graphics 'ascii'"):
        load_settings(config)
