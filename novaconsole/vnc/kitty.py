"""The Kitty terminal graphics protocol: transmit a screen once, show it with placeholder cells.

An image goes to the terminal as zlib-compressed RGB (``f=24,o=z``), base64 in chunks of
4096 characters, with a *virtual* placement (``U=1``) of ``columns`` x ``rows`` cells:
the terminal scales it into those cells. It appears wherever the text holds Unicode
placeholder cells (U+10EEEE) whose foreground colour is the image id and whose
diacritics name the cell's row and column, so a TUI draws it as ordinary text and
anything painted over those cells hides it. ``q=2`` keeps the terminal from answering
(answers would reach the TUI's key input). No Textual here.
"""

from __future__ import annotations

import base64
import zlib

PLACEHOLDER = "\U0010eeee"
CHUNK = 4096

#: Row/column numbers as combining diacritics (kitty's rowcolumn-diacritics.txt, in order).
# fmt: off
DIACRITICS = [chr(c) for c in (
    0x0305, 0x030D, 0x030E, 0x0310, 0x0312, 0x033D, 0x033E, 0x033F, 0x0346, 0x034A, 0x034B,
    0x034C, 0x0350, 0x0351, 0x0352, 0x0357, 0x035B, 0x0363, 0x0364, 0x0365, 0x0366, 0x0367,
    0x0368, 0x0369, 0x036A, 0x036B, 0x036C, 0x036D, 0x036E, 0x036F, 0x0483, 0x0484, 0x0485,
    0x0486, 0x0487, 0x0592, 0x0593, 0x0594, 0x0595, 0x0597, 0x0598, 0x0599, 0x059C, 0x059D,
    0x059E, 0x059F, 0x05A0, 0x05A1, 0x05A8, 0x05A9, 0x05AB, 0x05AC, 0x05AF, 0x05C4, 0x0610,
    0x0611, 0x0612, 0x0613, 0x0614, 0x0615, 0x0616, 0x0617, 0x0657, 0x0658, 0x0659, 0x065A,
    0x065B, 0x065D, 0x065E, 0x06D6, 0x06D7, 0x06D8, 0x06D9, 0x06DA, 0x06DB, 0x06DC, 0x06DF,
    0x06E0, 0x06E1, 0x06E2, 0x06E4, 0x06E7, 0x06E8, 0x06EB, 0x06EC, 0x0730, 0x0732, 0x0733,
    0x0735, 0x0736, 0x073A, 0x073D, 0x073F, 0x0740, 0x0741, 0x0743, 0x0745, 0x0747, 0x0749,
    0x074A, 0x07EB, 0x07EC, 0x07ED, 0x07EE, 0x07EF, 0x07F0, 0x07F1, 0x07F3, 0x0816, 0x0817,
    0x0818, 0x0819, 0x081B, 0x081C, 0x081D, 0x081E, 0x081F, 0x0820, 0x0821, 0x0822, 0x0823,
    0x0825, 0x0826, 0x0827, 0x0829, 0x082A, 0x082B, 0x082C, 0x082D, 0x0951, 0x0953, 0x0954,
    0x0F82, 0x0F83, 0x0F86, 0x0F87, 0x135D, 0x135E, 0x135F, 0x17DD, 0x193A, 0x1A17, 0x1A75,
    0x1A76, 0x1A77, 0x1A78, 0x1A79, 0x1A7A, 0x1A7B, 0x1A7C, 0x1B6B, 0x1B6D, 0x1B6E, 0x1B6F,
    0x1B70, 0x1B71, 0x1B72, 0x1B73, 0x1CD0, 0x1CD1, 0x1CD2, 0x1CDA, 0x1CDB, 0x1CE0, 0x1DC0,
    0x1DC1, 0x1DC3, 0x1DC4, 0x1DC5, 0x1DC6, 0x1DC7, 0x1DC8, 0x1DC9, 0x1DCB, 0x1DCC, 0x1DD1,
    0x1DD2, 0x1DD3, 0x1DD4, 0x1DD5, 0x1DD6, 0x1DD7, 0x1DD8, 0x1DD9, 0x1DDA, 0x1DDB, 0x1DDC,
    0x1DDD, 0x1DDE, 0x1DDF, 0x1DE0, 0x1DE1, 0x1DE2, 0x1DE3, 0x1DE4, 0x1DE5, 0x1DE6, 0x1DFE,
    0x20D0, 0x20D1, 0x20D4, 0x20D5, 0x20D6, 0x20D7, 0x20DB, 0x20DC, 0x20E1, 0x20E7, 0x20E9,
    0x20F0, 0x2CEF, 0x2CF0, 0x2CF1, 0x2DE0, 0x2DE1, 0x2DE2, 0x2DE3, 0x2DE4, 0x2DE5, 0x2DE6,
    0x2DE7, 0x2DE8, 0x2DE9, 0x2DEA, 0x2DEB, 0x2DEC, 0x2DED, 0x2DEE, 0x2DEF, 0x2DF0, 0x2DF1,
    0x2DF2, 0x2DF3, 0x2DF4, 0x2DF5, 0x2DF6, 0x2DF7, 0x2DF8, 0x2DF9, 0x2DFA, 0x2DFB, 0x2DFC,
    0x2DFD, 0x2DFE, 0x2DFF, 0xA66F, 0xA67C, 0xA67D, 0xA6F0, 0xA6F1, 0xA8E0, 0xA8E1, 0xA8E2,
    0xA8E3, 0xA8E4, 0xA8E5, 0xA8E6, 0xA8E7, 0xA8E8, 0xA8E9, 0xA8EA, 0xA8EB, 0xA8EC, 0xA8ED,
    0xA8EE, 0xA8EF, 0xA8F0, 0xA8F1, 0xAAB0, 0xAAB2, 0xAAB3, 0xAAB7, 0xAAB8, 0xAABE, 0xAABF,
    0xAAC1, 0xFE20, 0xFE21, 0xFE22, 0xFE23, 0xFE24, 0xFE25, 0xFE26, 0x10A0F, 0x10A38,
    0x1D185, 0x1D186, 0x1D187, 0x1D188, 0x1D189, 0x1D1AA, 0x1D1AB, 0x1D1AC, 0x1D1AD,
    0x1D242, 0x1D243, 0x1D244,
)]
# fmt: on

#: Most rows or columns a placement can have (one diacritic per row/column number).
MAX_CELLS = len(DIACRITICS)

#: Image ids fit the 24-bit foreground colour of the placeholder cells.
MAX_IMAGE_ID = 0xFFFFFF


def _command(keys: str, payload: str = "") -> str:
    return f"\x1b_G{keys};{payload}\x1b\\" if payload else f"\x1b_G{keys}\x1b\\"


def transmit(
    image_id: int, width: int, height: int, rgb: bytes | bytearray, columns: int, rows: int
) -> str:
    """Escape sequences that (re)place image ``image_id`` with these pixels, shown scaled
    into ``columns`` x ``rows`` placeholder cells (a replaced image keeps its cells)."""
    if not 0 < image_id <= MAX_IMAGE_ID:
        raise ValueError(f"kitty image id {image_id} is out of range")
    if width <= 0 or height <= 0 or len(rgb) != width * height * 3:
        raise ValueError(f"{len(rgb)} bytes of RGB for a {width}x{height} image")
    if not (0 < columns <= MAX_CELLS and 0 < rows <= MAX_CELLS):
        raise ValueError(f"a kitty placement of {columns}x{rows} cells is out of range")
    data = base64.standard_b64encode(zlib.compress(bytes(rgb), 1)).decode("ascii")
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [""]
    first = (
        f"a=T,U=1,i={image_id},f=24,o=z,s={width},v={height},c={columns},r={rows},q=2,"
        f"m={1 if len(chunks) > 1 else 0}"
    )
    out = [_command(first, chunks[0])]
    out.extend(
        _command(f"m={1 if n < len(chunks) - 1 else 0}", chunk)
        for n, chunk in enumerate(chunks[1:], start=1)
    )
    return "".join(out)


def delete(image_id: int) -> str:
    """Free image ``image_id`` (its virtual placement and its data) in the terminal."""
    return _command(f"a=d,d=I,i={image_id},q=2")


def hide(image_id: int) -> str:
    """Delete image ``image_id``'s placements but keep its data (``d=i``, lower case), so
    :func:`place` shows it again without sending the pixels. Placeholder cells of an image
    without a placement show nothing."""
    return _command(f"a=d,d=i,i={image_id},q=2")


def place(image_id: int, columns: int, rows: int) -> str:
    """A new virtual placement (``a=p,U=1``) of the image ``image_id`` already sent, scaled
    into ``columns`` x ``rows`` placeholder cells (after :func:`hide`)."""
    if not (0 < columns <= MAX_CELLS and 0 < rows <= MAX_CELLS):
        raise ValueError(f"a kitty placement of {columns}x{rows} cells is out of range")
    return _command(f"a=p,U=1,i={image_id},c={columns},r={rows},q=2")


def placeholder_row(row: int, columns: int) -> str:
    """Row ``row`` of a placement: one placeholder per column, each naming its row and
    column (so a row cut short by an overlay still shows the right part of the image)."""
    mark = DIACRITICS[row]
    return "".join(PLACEHOLDER + mark + DIACRITICS[c] for c in range(columns))


def colour_of(image_id: int) -> tuple[int, int, int]:
    """The 24-bit foreground colour that names ``image_id`` in placeholder cells."""
    return (image_id >> 16) & 0xFF, (image_id >> 8) & 0xFF, image_id & 0xFF
