"""The half-block renderer on constructed framebuffers."""

from __future__ import annotations

from collections.abc import Callable

from novaconsole.vnc.framebuffer import Framebuffer, Rect
from novaconsole.vnc.render import (
    UPPER_HALF_BLOCK,
    HalfBlockRenderer,
    cells_to_ansi,
    fit,
    render_halfblocks,
)


def _fb(width: int, height: int, colour: Callable[[int, int], tuple[int, int, int]]) -> Framebuffer:
    fb = Framebuffer(width, height)
    pixels = b"".join(bytes(colour(x, y)) for y in range(height) for x in range(width))
    fb.put(Rect(0, 0, width, height), pixels)
    return fb


def test_unscaled_cells_pair_upper_and_lower_pixels() -> None:
    fb = _fb(3, 4, lambda x, y: (x * 10, y * 10, 7))
    cells, how = render_halfblocks(fb, 80, 24)
    assert (how.scale, how.columns, how.rows, how.scaled) == (1.0, 3, 2, False)
    assert cells[0][2] == ((20, 0, 7), (20, 10, 7))
    assert cells[1][0] == ((0, 20, 7), (0, 30, 7))
    assert how.describe() == "3x4 at 100%"


def test_odd_height_leaves_the_last_lower_half_black() -> None:
    fb = _fb(2, 3, lambda x, y: (255, 255, 255))
    cells, how = render_halfblocks(fb, 10, 10)
    assert how.rows == 2
    assert cells[1][0] == ((255, 255, 255), (0, 0, 0))


def test_downscaling_averages_each_box() -> None:
    # 4x4: left half white, right half black, a red pixel top-left -> 2x2 output, 1 row.
    def colour(x: int, y: int) -> tuple[int, int, int]:
        if (x, y) == (0, 0):
            return (255, 0, 0)
        return (255, 255, 255) if x < 2 else (0, 0, 0)

    cells, how = render_halfblocks(_fb(4, 4, colour), 2, 1)
    assert (how.width, how.height, how.scale) == (2, 2, 0.5)
    assert how.scaled
    # Upper-left box: red + 3 white -> (255, 191, 191); upper-right: black.
    assert cells == [[((255, 191, 191), (255, 255, 255)), ((0, 0, 0), (0, 0, 0))]]


def test_fit_keeps_the_aspect_and_never_enlarges() -> None:
    how = fit(720, 400, 140, 34)
    assert how.scale == 68 / 400
    assert (how.width, how.height) == (122, 68)
    assert how.describe() == "720x400 at 17%"
    assert fit(100, 50, 400, 100).scale == 1.0
    assert fit(0, 0, 10, 10).columns == 0


def test_dirty_rectangle_rerenders_only_its_rows() -> None:
    fb = _fb(8, 8, lambda x, y: (0, 0, 0))
    renderer = HalfBlockRenderer(80, 24)
    assert renderer.render(fb) == range(4)
    fb.fill(Rect(5, 5, 1, 1), b"\xff\x00\x00")
    changed = renderer.render(fb, Rect(5, 5, 1, 1))
    assert changed == range(2, 3)
    assert renderer.cells[2][5] == ((0, 0, 0), (255, 0, 0))
    # A new grid size redraws everything at the new scale.
    renderer.resize(4, 2)
    assert renderer.render(fb, Rect(5, 5, 1, 1)) == range(2)
    assert renderer.fit.scale == 0.5
    assert renderer.cells[1][2] == ((63, 0, 0), (0, 0, 0))


def test_ansi_output() -> None:
    text = cells_to_ansi([[((1, 2, 3), (4, 5, 6)), ((1, 2, 3), (4, 5, 6))]])
    assert text == f"\x1b[38;2;1;2;3m\x1b[48;2;4;5;6m{UPPER_HALF_BLOCK * 2}\x1b[0m"


def test_a_one_column_grid_still_averages() -> None:
    cells, how = render_halfblocks(_fb(4, 4, lambda x, y: (x * 60, 0, 0)), 1, 1)
    assert (how.columns, how.rows) == (1, 1)
    assert len(cells[0]) == 1
    assert cells[0][0][0][0] in range(60, 121)  # a mean of the reds 0, 60, 120, 180
