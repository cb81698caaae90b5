"""``ResourceTable``: a virtual table that renders only the lines on screen.

Textual's DataTable measures every cell on insert (about 3 s for 10,000 rows here), so the
console prepares rows off the UI thread (:func:`prepare_table`: texts, sort keys, search
text, widths) and this widget only filters and sorts index lists and paints visible lines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from novaconsole.ui.filtering import RowFilter

#: Row styles a pane may give a row (each is a component class of the table).
ROW_STYLES = ("error", "warning", "muted")
GAP = "  "
#: Rows prepared between two calls of a worker's ``pace``.
PACE_ROWS = 1000


def format_value(value: object) -> str:
    """How a typed cell value is shown."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True, slots=True)
class Column:
    """One column: a title and how to get a (sortable) value from a row."""

    key: str
    title: str
    value: Callable[[Any], object]
    format: Callable[[object], str] = format_value
    max_width: int = 40
    #: Right-align (numbers) and sort numerically.
    numeric: bool = False
    #: What to sort on when the shown value is not (e.g. "used/total" sorts by usage).
    sort: Callable[[Any], object] | None = None


def _sort_key(value: object) -> tuple[int, Any]:
    if value is None or value == "":
        return (2, "")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value)
    if isinstance(value, datetime):
        return (0, value.timestamp())
    return (1, str(value).lower())


@dataclass(slots=True)
class TableData:
    """Rows made ready for display; built in a worker thread by :func:`prepare_table`.

    Sort keys are computed per column when the table is first sorted on it (or in the
    worker, for the column the table is sorted by), not for every cell of every row: at
    100,000 rows keys for all columns cost more memory than the rows themselves.
    """

    columns: Sequence[Column]
    rows: list[Any] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    texts: list[tuple[str, ...]] = field(default_factory=list)
    #: Every row's keys for every column: kept only by :func:`update_table` (small tables
    #: updated live reuse them cell by cell); otherwise see :meth:`column_keys`.
    sort_keys: list[tuple[tuple[int, Any], ...]] = field(default_factory=list)
    haystacks: list[str] = field(default_factory=list)
    styles: list[str | None] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    #: Each row's column values (and sort values), kept only by :func:`update_table` so
    #: the next update can tell which cells changed.
    values: list[tuple[object, ...]] = field(default_factory=list)
    _keys: dict[int, list[tuple[int, Any]]] = field(default_factory=dict, repr=False)
    _orders: dict[tuple[int, bool], list[int]] = field(default_factory=dict, repr=False)

    def column_keys(self, column: int) -> list[tuple[int, Any]]:
        """Every row's sort key for ``column`` (computed once per data)."""
        keys = self._keys.get(column)
        if keys is None:
            if self.sort_keys:
                keys = [row_keys[column] for row_keys in self.sort_keys]
            else:
                col = self.columns[column]
                get = col.sort if col.sort is not None else col.value
                keys = [_sort_key(get(row)) for row in self.rows]
            self._keys[column] = keys
        return keys

    def order(self, column: int, reverse: bool) -> list[int]:
        """Row indices sorted on ``column`` (stable; computed once per data and direction)."""
        found = self._orders.get((column, reverse))
        if found is None:
            keys = self.column_keys(column)
            found = sorted(range(len(self.rows)), key=keys.__getitem__, reverse=reverse)
            self._orders[(column, reverse)] = found
        return found


def prepare_table(
    columns: Sequence[Column],
    rows: Sequence[Any],
    row_id: Callable[[Any], str],
    row_style: Callable[[Any], str | None] = lambda row: None,
    *,
    previous: TableData | None = None,
    sort: tuple[int, bool] | None = None,
    pace: Callable[[], None] | None = None,
) -> TableData:
    """Compute everything the table needs per row, once per refresh (thread-safe, pure).

    ``previous`` (the data shown now) lets a row equal to the row shown with its id (rows
    compare their fields, not their raw bodies) reuse that row's texts and search text
    instead of formatting them again; panes pass it only when their cells depend on nothing
    but the row. ``sort``
    (column, reverse) orders the rows here, off the UI thread, for a table sorted that way.
    ``pace`` is called every :data:`PACE_ROWS` rows (a worker waits there while the UI is
    busy).
    """
    data = TableData(columns=columns)
    widths = [len(c.title) + 2 for c in columns]
    old: dict[str, int] = {}
    if previous is not None and list(previous.columns) == list(columns):
        old = {key: index for index, key in enumerate(previous.ids)}
    # Cells formatted from a non-string value that repeats (a timestamp, a usage) share
    # one text; strings are shown as they are, already shared with the row.
    shared: dict[tuple[int, object], str] = {}

    def text_of(position: int, column: Column, value: object) -> str:
        if value is None or isinstance(value, str):
            return column.format(value)
        try:
            return shared[(position, value)]
        except KeyError:
            text = shared[(position, value)] = column.format(value)
            return text
        except TypeError:  # unhashable values are formatted every time
            return column.format(value)

    for count, row in enumerate(rows):
        if pace is not None and count % PACE_ROWS == PACE_ROWS - 1:
            pace()
        key = row_id(row)
        index = old.get(key)
        shown = previous.rows[index] if index is not None and previous is not None else None
        if index is not None and previous is not None and (shown is row or shown == row):
            texts = previous.texts[index]
            haystack = previous.haystacks[index]
        else:
            texts = tuple(text_of(i, c, c.value(row)) for i, c in enumerate(columns))
            haystack = "\t".join(texts).lower()
        data.rows.append(row)
        data.ids.append(key)
        data.texts.append(texts)
        data.haystacks.append(haystack)
        data.styles.append(row_style(row))
        for i, text in enumerate(texts):
            if len(text) > widths[i]:
                widths[i] = len(text)
        if len(shared) > 100_000:
            shared.clear()
    data.widths = [min(w, c.max_width) for w, c in zip(widths, columns, strict=True)]
    if sort is not None and 0 <= sort[0] < len(columns):
        data.order(*sort)
    return data


def update_table(
    previous: TableData | None,
    columns: Sequence[Column],
    rows: Sequence[Any],
    row_id: Callable[[Any], str],
    row_style: Callable[[Any], str | None] = lambda row: None,
) -> tuple[TableData, bool]:
    """:func:`prepare_table` for live updates: only the cells whose values changed since
    ``previous`` (an earlier result of this function) are formatted again.

    Returns the data and whether it differs from ``previous`` in anything the table shows
    (rows, order, texts, sort keys, styles); a caller may then skip posting it. The
    values are compared, so a row object may be new while its cells are reused.
    """
    old: dict[str, int] = {}
    if previous is not None and previous.values and list(previous.columns) == list(columns):
        old = {rid: i for i, rid in enumerate(previous.ids)}
    sorts = [c.sort for c in columns]
    count = len(columns)
    data = TableData(columns=columns)
    changed = previous is None or len(rows) != len(previous.ids)
    for position, row in enumerate(rows):
        rid = row_id(row)
        values = tuple(c.value(row) for c in columns) + tuple(
            sort(row) for sort in sorts if sort is not None
        )
        style = row_style(row)
        j = old.get(rid)
        if j is not None and previous is not None and previous.values[j] == values:
            texts, keys, haystack = previous.texts[j], previous.sort_keys[j], previous.haystacks[j]
            if j != position or previous.styles[j] != style:
                changed = True
        else:
            changed = True
            sort_values = iter(values[count:])
            if j is not None and previous is not None:
                was, old_texts, old_keys = (
                    previous.values[j],
                    previous.texts[j],
                    previous.sort_keys[j],
                )
                # Sort values sit after the column values: a changed one redoes its key.
                same_sorts = was[count:] == values[count:]
            else:
                was, old_texts, old_keys, same_sorts = (), (), (), False
            text_list, key_list = [], []
            for i, column in enumerate(columns):
                sort_value = next(sort_values) if column.sort is not None else values[i]
                if was and was[i] == values[i] and (column.sort is None or same_sorts):
                    text_list.append(old_texts[i])
                    key_list.append(old_keys[i])
                else:
                    text_list.append(column.format(values[i]))
                    key_list.append(_sort_key(sort_value))
            texts, keys = tuple(text_list), tuple(key_list)
            haystack = "\t".join(texts).lower()
        data.rows.append(row)
        data.ids.append(rid)
        data.texts.append(texts)
        data.sort_keys.append(keys)
        data.haystacks.append(haystack)
        data.styles.append(style)
        data.values.append(values)
    widths = [len(c.title) + 2 for c in columns]
    for texts in data.texts:
        for i, text in enumerate(texts):
            if len(text) > widths[i]:
                widths[i] = len(text)
    data.widths = [min(w, c.max_width) for w, c in zip(widths, columns, strict=True)]
    return data, changed


@dataclass(frozen=True, slots=True)
class _Paint:
    """What every line of one paint shares: asked of Textual once, not once per line.

    (``rich_style`` walks every ancestor's styles; per line it was most of a repaint.)
    """

    width: int
    scroll_x: int
    scroll_y: int
    base: Style
    header: Style
    cursor: Style
    rows: dict[str, Style]


def _fit(text: str, width: int, right: bool) -> str:
    if len(text) > width:
        return text[: width - 1] + "…"
    return text.rjust(width) if right else text.ljust(width)


class ResourceTable(ScrollView, can_focus=True):
    """A header line plus one line per visible row, with a cursor, filter and sort."""

    DEFAULT_CSS = """
    ResourceTable {
        height: 1fr;
        background: $surface;
        color: $foreground;
    }
    ResourceTable > .resource-table--header {
        background: $panel;
        color: $text;
        text-style: bold;
    }
    ResourceTable > .resource-table--cursor {
        background: $block-cursor-blurred-background;
        color: $block-cursor-blurred-foreground;
    }
    ResourceTable:focus > .resource-table--cursor {
        background: $block-cursor-background;
        color: $block-cursor-foreground;
        text-style: $block-cursor-text-style;
    }
    ResourceTable > .resource-table--error { color: $text-error; }
    ResourceTable > .resource-table--warning { color: $text-warning; }
    ResourceTable > .resource-table--muted { color: $text-muted; }
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "resource-table--header",
        "resource-table--cursor",
        "resource-table--error",
        "resource-table--warning",
        "resource-table--muted",
    }

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup,ctrl+b", "page(-1)", "Page up", show=False),
        Binding("pagedown,ctrl+f", "page(1)", "Page down", show=False),
        Binding("home,g", "jump(0)", "Top", show=False),
        Binding("end,G", "jump(-1)", "Bottom", show=False),
        Binding("enter", "choose", "Details"),
    ]

    cursor: reactive[int] = reactive(0, layout=False)
    """Position of the cursor among the visible (filtered, sorted) rows."""

    class Chosen(Message):
        """Enter (or a double click) on a row."""

        def __init__(self, table: ResourceTable, row: Any) -> None:
            super().__init__()
            self.table = table
            self.row = row

    class SortChanged(Message):
        """The sort column or direction changed (the pane shows it in its status)."""

    def __init__(
        self,
        columns: Sequence[Column],
        *,
        group_column: int | None = None,
        empty_text: str = "(no rows)",
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.data = TableData(columns=columns)
        self.data.widths = [len(c.title) + 2 for c in columns]
        self.shown: list[int] = []
        self.row_filter: RowFilter | None = None
        self.sort_column: int | None = None
        self.sort_reverse = False
        self.group_column = group_column
        self.empty_text = empty_text
        self._lines: dict[int, str] = {}
        #: Styles and geometry for the lines of one paint (see :meth:`render_lines`).
        self._paint: _Paint | None = None
        self._sizes: tuple[Size, Size, Size] | None = None

    # -- data --------------------------------------------------------------------------

    @property
    def columns(self) -> Sequence[Column]:
        return self.data.columns

    @property
    def current_row(self) -> Any:
        """The row under the cursor (``None`` when nothing is shown)."""
        if 0 <= self.cursor < len(self.shown):
            return self.data.rows[self.shown[self.cursor]]
        return None

    @property
    def shown_rows(self) -> list[Any]:
        return [self.data.rows[i] for i in self.shown]

    def set_data(self, data: TableData) -> None:
        """Show new rows, keeping the filter, the sort and the cursor's row."""
        current = self.data.ids[self.shown[self.cursor]] if self.current_row is not None else None
        before = self._on_screen()
        self.data = data
        self._recompute(keep_id=current, before=before)

    def set_filter(self, row_filter: RowFilter | None) -> None:
        previous, self.row_filter = self.row_filter, row_filter
        before = self._on_screen()
        if row_filter is not None and row_filter.narrows(previous):
            # Typing on: only the rows shown now can still match (same order, same sort).
            self._show(row_filter.select(self.data.haystacks, self.shown), None, before)
        else:
            self._recompute(keep_id=None, before=before)

    def sort_by(self, column: int | None, reverse: bool = False) -> None:
        self.sort_column = column
        self.sort_reverse = reverse
        current = self.data.ids[self.shown[self.cursor]] if self.current_row is not None else None
        self._recompute(keep_id=current)
        self.post_message(self.SortChanged())

    def _recompute(self, keep_id: str | None, before: object = None) -> None:
        if self.sort_column is not None:
            indices = list(self.data.order(self.sort_column, self.sort_reverse))
        else:
            indices = list(range(len(self.data.rows)))
        if self.row_filter is not None:
            indices = self.row_filter.select(self.data.haystacks, indices)
        self._show(indices, keep_id, before)

    def _on_screen(self) -> tuple[object, ...]:
        """What the visible lines show: scroll, cursor, widths, and each row's cells."""
        top = self.scroll_offset.y
        height = max(1, self.scrollable_content_region.height)
        data = self.data
        # The row above the window too: a grouped column blanks against it.
        window = self.shown[max(0, top - 1) : top + height]
        rows = [(data.texts[i], data.styles[i]) for i in window]
        return (top, self.scroll_offset.x, self.cursor, self.empty_text, data.columns,
                data.widths, rows)  # fmt: skip

    def _show(self, indices: list[int], keep_id: str | None, before: object = None) -> None:
        """Show ``indices``; ``before`` (from :meth:`_on_screen`) lets a change that leaves
        every visible line as it was (a filter, rows changing off screen) skip the repaint."""
        self.shown = indices
        self._lines.clear()
        position = 0
        if keep_id is not None:
            ids = self.data.ids
            # List searches in C: a generator over 100,000 rows was ~6 ms of each refresh.
            try:
                position = indices.index(ids.index(keep_id))
            except ValueError:
                position = self.cursor
                if ids.count(keep_id) > 1:  # the same id twice, the first one filtered out
                    shown = (p for p, i in enumerate(indices) if ids[i] == keep_id)
                    position = next(shown, self.cursor)
        size = Size(self._total_width(), len(self.shown) + 1)
        if size != self.virtual_size:
            self.virtual_size = size
        self.set_reactive(ResourceTable.cursor, max(0, min(position, len(self.shown) - 1)))
        self._scroll_cursor_into_view()
        if before is None or self._on_screen() != before:
            # (Typing that narrows 1,000 rows often keeps the first screenful as it was,
            # and a live update mostly changes rows off screen.)
            self.refresh()

    def _total_width(self) -> int:
        return sum(self.data.widths) + len(GAP) * max(0, len(self.data.widths) - 1)

    def _size_updated(
        self, size: Size, virtual_size: Size, container_size: Size, layout: bool = True
    ) -> bool:
        # Textual's ScrollView compares the compositor's virtual size (the viewport, for a
        # widget without children) with ours (the rows), so every layout pass anywhere on
        # the screen (the prompt's input on each keystroke) repaints the scrollbars, the
        # dearest lines of a frame. Pass it on only when something it uses changed.
        sizes = (size, self.virtual_size, container_size)
        if sizes == self._sizes:
            return False
        self._sizes = sizes
        return super()._size_updated(size, virtual_size, container_size, layout)

    # -- cursor ------------------------------------------------------------------------

    def validate_cursor(self, value: int) -> int:
        return max(0, min(value, len(self.shown) - 1))

    def watch_cursor(self) -> None:
        self._scroll_cursor_into_view()
        self.refresh()

    def _scroll_cursor_into_view(self) -> None:
        rows_on_screen = max(1, self.scrollable_content_region.height - 1)
        top = self.scroll_offset.y
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, force=True)
        elif self.cursor >= top + rows_on_screen:
            self.scroll_to(y=self.cursor - rows_on_screen + 1, animate=False, force=True)

    def action_cursor(self, delta: int) -> None:
        self.cursor += delta

    def action_page(self, direction: int) -> None:
        self.cursor += direction * max(1, self.scrollable_content_region.height - 1)

    def action_jump(self, where: int) -> None:
        self.cursor = 0 if where == 0 else len(self.shown) - 1

    def action_choose(self) -> None:
        row = self.current_row
        if row is not None:
            self.post_message(self.Chosen(self, row))

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            self._sort_at(event.x + self.scroll_offset.x)
            return
        position = self.scroll_offset.y + event.y - 1
        if 0 <= position < len(self.shown):
            self.cursor = position
            if event.chain == 2:
                self.action_choose()

    def _sort_at(self, x: int) -> None:
        start = 0
        for index, width in enumerate(self.data.widths):
            if start <= x < start + width + len(GAP):
                reverse = self.sort_column == index and not self.sort_reverse
                self.sort_by(index, reverse)
                return
            start += width + len(GAP)

    # -- painting ----------------------------------------------------------------------

    def _header_text(self) -> str:
        cells = []
        for index, (column, width) in enumerate(
            zip(self.data.columns, self.data.widths, strict=True)
        ):
            title = column.title.upper()
            if index == self.sort_column:
                title += " ↓" if self.sort_reverse else " ↑"
            cells.append(_fit(title, width, column.numeric))
        return GAP.join(cells)

    def _row_text(self, position: int) -> str:
        text = self._lines.get(position)
        if text is None:
            index = self.shown[position]
            texts = self.data.texts[index]
            group = self.group_column
            blank_group = (
                group is not None
                and self.sort_column in (None, group)
                and position > 0
                and self.data.texts[self.shown[position - 1]][group] == texts[group]
            )
            cells = []
            for col, (column, width) in enumerate(
                zip(self.data.columns, self.data.widths, strict=True)
            ):
                value = "" if blank_group and col == group else texts[col]
                cells.append(_fit(value, width, column.numeric))
            text = GAP.join(cells)
            self._lines[position] = text
        return text

    def _paint_styles(self) -> _Paint:
        base = self.rich_style
        component = self.get_component_rich_style
        scroll_x, scroll_y = self.scroll_offset
        return _Paint(
            width=self.scrollable_content_region.width,
            scroll_x=scroll_x,
            scroll_y=scroll_y,
            base=base,
            header=base + component("resource-table--header"),
            cursor=component("resource-table--cursor"),
            rows={name: base + component(f"resource-table--{name}") for name in ROW_STYLES},
        )

    def render_lines(self, crop: Region) -> list[Strip]:
        # Textual asks for the lines of one paint here, then calls render_line for each.
        self._paint = self._paint_styles()
        try:
            return super().render_lines(crop)
        finally:
            self._paint = None

    def render_line(self, y: int) -> Strip:
        paint = self._paint or self._paint_styles()
        width, scroll_x, scroll_y, base = paint.width, paint.scroll_x, paint.scroll_y, paint.base
        if y == 0:
            style = pad_style = paint.header
            line = self._header_text()
        else:
            position = scroll_y + y - 1
            if position >= len(self.shown):
                if position == 0 and y == 1:
                    muted = paint.rows["muted"]
                    return Strip([Segment(self.empty_text, muted)]).crop_extend(0, width, base)
                return Strip.blank(width, base)
            line = self._row_text(position)
            row_style = self.data.styles[self.shown[position]]
            style = paint.rows.get(row_style, base) if row_style else base
            if position == self.cursor:
                style = style + paint.cursor
            pad_style = style
        if line.isascii():
            # One cell per character: slice instead of measuring a 200-cell line per paint.
            visible = line[scroll_x : scroll_x + width].ljust(width)
            return Strip([Segment(visible, pad_style)], width)
        strip = Strip([Segment(line, style)])
        return strip.crop_extend(scroll_x, scroll_x + width, pad_style or Style())
