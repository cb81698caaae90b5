"""The console screen drawing the recorded guest with Kitty graphics or Sixel, and falling
back to half-block cells; what reaches the terminal is read from the view's rendered lines."""

from __future__ import annotations

import base64
import re
import zlib
from pathlib import Path
from typing import Any

import pytest
from console_helpers import AppFactory, wait_until
from fake_rfb import FakeRfbOpener
from test_console_screen import SIZE, open_console
from textual.geometry import Region
from textual.pilot import Pilot

from novaconsole.terminal_graphics import TerminalGraphics
from novaconsole.ui.app import NovaConsoleApp
from novaconsole.ui.console_screen import ConsoleScreen
from novaconsole.ui.framebuffer_view import FramebufferView, pixel_layout
from novaconsole.vnc import kitty


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
    await pilot.pause()
    return screen, view


def _text(view: FramebufferView) -> str:
    lines = view.render_lines(Region(0, 0, view.size.width, view.size.height))
    return "".join(segment.text for line in lines for segment in line)


@pytest.mark.asyncio
async def test_kitty_sends_the_screen_once_and_shows_placeholders(
    fake_app: AppFactory, tmp_path: Path
) -> None:
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
        # The payload went out inside the lines already written; rendering again sends
        # only the placeholder cells.
        text = _text(view)
        assert "\x1b_G" not in text
        assert text.count(kitty.PLACEHOLDER) == layout.columns * layout.rows
        # What was sent decodes back to the guest's screen, at its own size.
        shown = view._shown
        assert shown is not None
        payload = "".join(re.findall(r"\x1b_G[^;\x1b]*;([^\x1b]*)\x1b\\", shown.payload))
        assert zlib.decompress(base64.standard_b64decode(payload)) == bytes(fb.pixels)
        # An unchanged screen is not encoded or sent again.
        before = view.frames_encoded
        view.show(fb, None)
        await pilot.pause()
        assert view.frames_encoded == before
        assert view._unsent is None


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
    fake_app: AppFactory, tmp_path: Path
) -> None:
    app, opener = _app(fake_app, tmp_path, TerminalGraphics("sixel", 4, 8))
    async with app.run_test(size=SIZE) as pilot:
        screen, view = await _encoded_view(pilot, opener)
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
        assert height % 6 == 0
        assert height <= expected.rows * 8
        text = _text(view)
        # Saved cursor, absolute move to the image's top-left, the image, restored cursor;
        # written every time Textual repaints it (the terminal forgets pixels painted over).
        assert text.count("\x1bPq") == 1
        assert re.search(r"\x1b7\x1b\[\d+;\d+H\x1bPq", text)
        assert text.endswith("\x1b\\\x1b8")
        assert screen.frames_drawn >= 1


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
