"""``ResourcePane``: a status line over a :class:`ResourceTable`, fed by a thread worker.

Each pane loads independently: its worker runs the source's blocking calls, prepares the
table off the UI thread and posts the result; a failure shows the error and when it was seen
while the last good rows stay on screen. Refreshes never overlap: a refresh asked for while
one runs is queued and runs once when the current one ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static
from textual.worker import get_current_worker

from novaconsole.errors import NovaconsoleError
from novaconsole.sources.base import CloudSource
from novaconsole.sources.console_api import ConsoleAction, ConsoleColumn
from novaconsole.ui.filtering import RowFilter
from novaconsole.ui.table import Column, ResourceTable, TableData, prepare_table

#: Where mutating actions are recorded (the console also writes this logger to a file).
ACTION_LOG = logging.getLogger("novaconsole.console.actions")

Clock = Callable[[], datetime]
#: The longest a refresh waits for the UI at one step (so steady typing slows it, never stops it).
PACE_WAIT = 0.25
#: A refresh waits while the operator has pressed a key (or clicked) this recently.
QUIET = 0.15


def describe_exception(exc: BaseException) -> str:
    """One line for any failure a worker meets."""
    if isinstance(exc, NovaconsoleError):
        return exc.one_line()
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


@dataclass(frozen=True, slots=True)
class PaneAction:
    """A key a pane offers, for the help screen (built-ins and plugins alike)."""

    key: str
    description: str
    mutating: bool


class PaneStatus(Static):
    """The line above a pane's table: counts, filter, sort, refresh time or the error."""

    DEFAULT_CSS = """
    PaneStatus {
        height: 1;
        padding: 0 1;
        background: $boost;
        color: $text-muted;
    }
    PaneStatus.-error {
        background: $error-muted;
        color: $text-error;
    }
    """


class ResourcePane(Vertical):
    """Base class of every pane; subclasses say what to fetch and how to show it."""

    DEFAULT_CSS = """
    ResourcePane {
        height: 1fr;
    }
    """

    #: Name used by ``:`` commands, hooks and tests.
    pane_name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    #: Column whose repeated values are blanked (the catalog groups by service).
    group_column: ClassVar[int | None] = None
    #: Actions (method names without ``action_``) that change the cloud.
    MUTATING: ClassVar[frozenset[str]] = frozenset()
    #: How many times :meth:`fetch` yields rows; the last one completes a refresh.
    STAGES: ClassVar[int] = 1
    #: Whether every cell depends only on its row, so a refresh may reuse the texts of an
    #: unchanged row (plugin columns may read anything: a pane with them never reuses).
    PURE_COLUMNS: ClassVar[bool] = False

    class Loaded(Message):
        """A worker's result (``final`` is False for a first stage, e.g. before probing)."""

        def __init__(
            self, pane: ResourcePane, generation: int, data: TableData, at: datetime, final: bool
        ) -> None:
            super().__init__()
            self.pane = pane
            self.generation = generation
            self.data = data
            self.at = at
            self.final = final

    class Pace(Message):
        """A worker waits for ``done`` until the pane reaches this message (see :meth:`pace`)."""

        def __init__(self, done: threading.Event) -> None:
            super().__init__()
            self.done = done

    class Failed(Message):
        """A worker's failure, as one line."""

        def __init__(self, pane: ResourcePane, generation: int, error: str, at: datetime) -> None:
            super().__init__()
            self.pane = pane
            self.generation = generation
            self.error = error
            self.at = at

    class ActionDone(Message):
        """A mutating action finished (``ok`` or not); the pane refreshes after it."""

        def __init__(self, pane: ResourcePane, ok: bool, text: str) -> None:
            super().__init__()
            self.pane = pane
            self.ok = ok
            self.text = text

    def __init__(
        self,
        *,
        clock: Clock,
        readonly: bool = False,
        extra_columns: Sequence[ConsoleColumn] = (),
        extra_actions: Sequence[ConsoleAction] = (),
    ) -> None:
        super().__init__(id=f"pane-{self.pane_name}")
        self.clock = clock
        self.readonly = readonly
        self.extra_columns = list(extra_columns)
        self.extra_actions = list(extra_actions)
        self.source: CloudSource | None = None
        self.generation = 0
        self.is_loading = False
        self.pending = False
        self.loaded_at: datetime | None = None
        self.error: str | None = None
        self.error_at: datetime | None = None
        self.filter_text = ""
        self.refresh_count = 0
        self._previous: TableData | None = None
        self._reusable: list[Any] = []
        #: When the app last saw a key or click (``time.monotonic``), read by :meth:`pace`.
        self._last_input: Callable[[], float] = lambda: 0.0
        self.columns: list[Column] = [*self.build_columns(), *self._plugin_columns()]
        for index, action in enumerate(self.extra_actions):
            if readonly and action.mutating:
                continue
            self._bindings.bind(action.key, f"plugin_action({index})", action.description)

    # -- what subclasses provide -----------------------------------------------------

    def build_columns(self) -> list[Column]:
        raise NotImplementedError

    def fetch(self, source: CloudSource) -> Iterator[Sequence[Any]]:
        """Blocking: yield the rows (more than once for staged loads). Runs in a thread."""
        raise NotImplementedError

    def reusable_rows(self) -> list[Any]:
        """In :meth:`fetch`: the rows shown before this refresh, when the pane's cells depend
        on the row alone (``PURE_COLUMNS``); a source may return those unchanged."""
        rows, self._reusable = self._reusable, []
        return rows

    def pace(self) -> None:
        """Blocking, in a worker: while the operator is typing (a key or click within
        :data:`QUIET` seconds), wait until the pane has handled what is queued before and
        the input has gone quiet, for at most :data:`PACE_WAIT` seconds; otherwise return
        at once. A long refresh then takes its turns between keystrokes instead of
        competing with the UI thread for the interpreter (slowed by typing, never stopped).
        """
        last_input = self._last_input
        if time.monotonic() - last_input() >= QUIET:
            return
        deadline = time.monotonic() + PACE_WAIT
        done = threading.Event()
        self.post_message(self.Pace(done))  # thread-safe, and never blocks
        done.wait(PACE_WAIT)
        while time.monotonic() < deadline and time.monotonic() - last_input() < QUIET:
            time.sleep(0.01)

    def row_id(self, row: Any) -> str:
        return str(getattr(row, "id", id(row)))

    def row_style(self, row: Any) -> str | None:
        return None

    def pane_actions(self) -> list[PaneAction]:
        """Keys this pane offers (for help), plugin actions included."""
        actions = []
        for binding in self._bindings.key_to_bindings.values():
            for b in binding:
                if not b.show or b.action.startswith("plugin_action"):
                    continue
                mutating = b.action.split("(")[0] in self.MUTATING
                actions.append(PaneAction(b.key_display or b.key, b.description, mutating))
        for action in self.extra_actions:
            actions.append(PaneAction(action.key, action.description, action.mutating))
        return [a for a in actions if not (self.readonly and a.mutating)]

    def _plugin_columns(self) -> list[Column]:
        return [
            Column(c.key, c.title, c.value, numeric=c.numeric, max_width=c.max_width)
            for c in self.extra_columns
        ]

    # -- layout ------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield PaneStatus(self._status_text(), id=f"status-{self.pane_name}")
        yield ResourceTable(
            self.columns,
            group_column=self.group_column,
            empty_text="(loading…)",
            id=f"table-{self.pane_name}",
        )

    @property
    def table(self) -> ResourceTable:
        return self.query_one(ResourceTable)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Read-only hides mutating keys from the footer and help, and they do nothing.
        return not (self.readonly and action in self.MUTATING)

    # -- loading -----------------------------------------------------------------------

    def attach(self, source: CloudSource | None) -> None:
        """Point the pane at a (new) cloud: forget old rows and errors, then load."""
        self.source = source
        self.generation += 1
        self.loaded_at = None
        self.error = self.error_at = None
        self.is_loading = self.pending = False
        if self.is_mounted:
            self.table.empty_text = "(loading…)"
            self.table.set_data(TableData(columns=self.columns, widths=self.table.data.widths))
            self._update_status()
        if source is not None:
            self.refresh_data()

    def refresh_data(self) -> None:
        """Load now, or once more after the load that is running (never two at once)."""
        if self.source is None:
            return
        if self.is_loading:
            self.pending = True
            return
        self.is_loading = True
        self.pending = False
        self._update_status()
        table = next(iter(self.query(ResourceTable)), None) if self.is_mounted else None
        if self.is_mounted:
            app = self.app
            self._last_input = lambda: float(getattr(app, "last_input_at", 0.0))
        # Handed over through an attribute the worker clears: Textual keeps a finished
        # worker's arguments, and old rows must not outlive the refresh that replaced them.
        pure = self.PURE_COLUMNS and not self.extra_columns
        self._previous = table.data if table is not None and pure else None
        sort = None
        if table is not None and table.sort_column is not None:
            sort = (table.sort_column, table.sort_reverse)
        self._load(self.source, self.generation, list(self.columns), sort)

    @work(thread=True, exclusive=True, exit_on_error=False, group="load")
    def _load(
        self,
        source: CloudSource,
        generation: int,
        columns: list[Column],
        sort: tuple[int, bool] | None = None,
    ) -> None:
        worker = get_current_worker()
        previous, self._previous = self._previous, None
        self._reusable = previous.rows if previous is not None else []
        try:
            # Stages are posted as each completes (the catalog shows rows before probing).
            for number, rows in enumerate(self.fetch(source)):
                if worker.is_cancelled:
                    return
                data = prepare_table(
                    columns,
                    rows,
                    self.row_id,
                    self.row_style,
                    previous=previous,
                    sort=sort,
                    pace=self.pace,
                )
                del rows
                final = number == self.STAGES - 1
                self.post_message(self.Loaded(self, generation, data, self.clock(), final))
        except Exception as exc:
            if not worker.is_cancelled:
                self.post_message(
                    self.Failed(self, generation, describe_exception(exc), self.clock())
                )

    def on_resource_pane_loaded(self, message: Loaded) -> None:
        # Not stopped: the app updates the header's "refreshed" time from it.
        if message.generation != self.generation:
            return
        self.table.empty_text = "(no rows)"
        self.table.set_data(message.data)
        # The table owns the rows now; Textual's message loops keep their last message
        # referenced, which must not keep a replaced refresh's rows alive.
        message.data = TableData(columns=message.data.columns)
        if message.final:
            self.loaded_at = message.at
            self.error = self.error_at = None
            self.refresh_count += 1
            self._finish_load()
        self._update_status()

    def on_resource_pane_pace(self, message: Pace) -> None:
        message.stop()
        # Handled in turn after what was queued before it (keys, redraws): then go on.
        message.done.set()

    def on_resource_pane_failed(self, message: Failed) -> None:
        if message.generation != self.generation:
            return
        self.error, self.error_at = message.error, message.at
        if self.loaded_at is None:
            self.table.empty_text = "(no data: see the error above)"
            self.table.refresh()
        self._finish_load()
        self._update_status()

    def _finish_load(self) -> None:
        self.is_loading = False
        if self.pending:
            self.refresh_data()

    # -- filter and sort ---------------------------------------------------------------

    def set_filter(self, text: str) -> None:
        self.filter_text = text
        self.table.set_filter(RowFilter.parse(text))
        self._update_status()

    def cycle_sort(self, reverse_only: bool = False) -> None:
        table = self.table
        if reverse_only:
            table.sort_by(
                table.sort_column if table.sort_column is not None else 0, not table.sort_reverse
            )
        else:
            column = 0 if table.sort_column is None else (table.sort_column + 1) % len(self.columns)
            table.sort_by(column, False)
        self._update_status()

    def on_resource_table_sort_changed(self, message: ResourceTable.SortChanged) -> None:
        message.stop()
        self._update_status()

    # -- status line -------------------------------------------------------------------

    def _status_text(self) -> str:
        parts = [self.title]
        if self.is_mounted:
            table = self.table
            total, shown = len(table.data.rows), len(table.shown)
            noun = "row" if total == 1 else "rows"
            parts.append(f"{total} {noun}" if shown == total else f"{shown} of {total} {noun}")
            if self.filter_text:
                parts.append(f"filter /{self.filter_text}/")
            if table.sort_column is not None:
                arrow = "↓" if table.sort_reverse else "↑"
                parts.append(f"sorted by {self.columns[table.sort_column].title} {arrow}")
        if self.loaded_at is not None:
            parts.append(f"refreshed {self.loaded_at:%H:%M:%S}")
        if self.is_loading:
            parts.append("loading…")
        if self.readonly:
            parts.append("read-only")
        if self.error is not None and self.error_at is not None:
            return f"{self.title}: ERROR (seen {self.error_at:%H:%M:%S}): {self.error}"
        return " · ".join(parts)

    def _update_status(self) -> None:
        if not self.is_mounted:
            return
        status = next(iter(self.query(PaneStatus)), None)
        if status is None:  # a timer's last tick while the app closes and removes it
            return
        # One line, as wide as the pane whatever it says: no layout pass (one per keystroke).
        status.update(self._status_text(), layout=False)
        status.set_class(self.error is not None, "-error")

    # -- actions -----------------------------------------------------------------------

    def run_mutation(
        self,
        description: str,
        question: str,
        do: Callable[[CloudSource, str | None], object],
        *,
        ask_reason: bool = False,
    ) -> None:
        """Confirm, then run ``do(source, reason)`` in a thread, then report and refresh."""
        from novaconsole.ui.confirm import ConfirmScreen

        if self.readonly:
            self.app.notify(f"read-only mode: refused to {description}", severity="warning")
            ACTION_LOG.info("refused (read-only): %s", description)
            return
        source = self.source
        if source is None:
            return

        def answered(result: str | None) -> None:
            if result is None:
                self.app.notify(f"cancelled: {description}")
                return
            self._mutate(source, description, do, result or None)

        self.app.push_screen(ConfirmScreen(question, ask_reason=ask_reason), answered)

    @work(thread=True, exit_on_error=False, group="action")
    def _mutate(
        self,
        source: CloudSource,
        description: str,
        do: Callable[[CloudSource, str | None], object],
        reason: str | None,
    ) -> None:
        try:
            do(source, reason)
        except Exception as exc:
            text = f"failed to {description}: {describe_exception(exc)}"
            ACTION_LOG.warning("cloud=%s %s", source.name, text)
            self.post_message(self.ActionDone(self, False, text))
            return
        suffix = f" (reason: {reason})" if reason else ""
        ACTION_LOG.info("cloud=%s done: %s%s", source.name, description, suffix)
        self.post_message(self.ActionDone(self, True, f"done: {description}{suffix}"))

    def on_resource_pane_action_done(self, message: ActionDone) -> None:
        message.stop()
        self.app.notify(message.text, severity="information" if message.ok else "error", timeout=8)
        self.refresh_data()

    def action_plugin_action(self, index: int) -> None:
        action = self.extra_actions[index]
        row = self.table.current_row
        if row is None:
            return
        label = f"{action.description} on {self.row_id(row)}"
        if action.mutating:
            self.run_mutation(
                label, f"{action.description} {self.row_id(row)}?", lambda s, _r: action.run(s, row)
            )
        else:
            self._plugin_read(action, row)

    @work(thread=True, exit_on_error=False, group="action")
    def _plugin_read(self, action: ConsoleAction, row: Any) -> None:
        source = self.source
        if source is None:
            return
        try:
            result = action.run(source, row)
        except Exception as exc:
            self.post_message(
                self.ActionDone(self, False, f"{action.description}: {describe_exception(exc)}")
            )
            return
        self.post_message(self.ActionDone(self, True, f"{action.description}: {result or 'done'}"))
