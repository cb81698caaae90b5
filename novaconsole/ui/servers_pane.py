"""The Servers pane: all projects' servers, start/stop/reboot, console log, consoles."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from textual import work
from textual.binding import Binding, BindingType

from novaconsole.sources.base import CloudSource
from novaconsole.sources.rows import ServerRow
from novaconsole.ui.console_screen import console_screen_for
from novaconsole.ui.pane import ResourcePane, describe_exception
from novaconsole.ui.serial_screen import serial_screen_for
from novaconsole.ui.table import Column
from novaconsole.ui.text_screen import TextScreen

#: Lines of console log fetched (the end of the log, like ``console log show --lines``).
CONSOLE_LOG_LINES = 200


class ServersPane(ResourcePane):
    """Servers; errored rows in the error colour, those mid-task in the warning colour."""

    pane_name = "servers"
    title = "Servers"
    PURE_COLUMNS = True
    MUTATING = frozenset({"server_action"})
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "server_action('start')", "Start"),
        Binding("x", "server_action('stop')", "Stop"),
        Binding("b", "server_action('reboot')", "Reboot"),
        Binding("B", "server_action('reboot-hard')", "Hard reboot"),
        Binding("l", "console_log", "Console log"),
        Binding("c", "open_console", "Console"),
        Binding("S", "serial_console", "Serial console"),
    ]

    def build_columns(self) -> list[Column]:
        return [
            Column("name", "Name", lambda r: r.name),
            Column("status", "Status", lambda r: r.status),
            Column("task_state", "Task", lambda r: r.task_state),
            Column("power_state", "Power", lambda r: r.power_state),
            Column("host", "Host", lambda r: r.host),
            Column("flavor", "Flavor", lambda r: r.flavor),
            Column("image", "Image", lambda r: r.image),
            Column("addresses", "Addresses", lambda r: r.addresses),
            Column("created_at", "Created", lambda r: r.created_at),
            Column("project_id", "Project", lambda r: r.project_id, max_width=12),
            Column("id", "ID", lambda r: r.id),
        ]

    def fetch(self, source: CloudSource) -> Iterator[Sequence[Any]]:
        shown = self.reusable_rows()
        reuse = {row.id: row for row in shown if isinstance(row, ServerRow)}
        del shown
        yield source.servers(pace=self.pace, reuse=reuse)

    def row_style(self, row: Any) -> str | None:
        if row.status == "ERROR":
            return "error"
        if row.task_state:
            return "warning"
        return "muted" if row.status == "SHUTOFF" else None

    def _selected(self) -> ServerRow | None:
        row = self.table.current_row
        return row if isinstance(row, ServerRow) else None

    def action_server_action(self, action: str) -> None:
        if (row := self._selected()) is None:
            return
        verb = {"reboot-hard": "hard reboot"}.get(action, action)
        self.run_mutation(
            f"{verb} server {row.name} ({row.id})",
            f"{verb.capitalize()} server {row.name} ({row.id})?",
            lambda source, _reason: source.server_action(row, action),
        )

    def action_console_log(self) -> None:
        if (row := self._selected()) is not None and self.source is not None:
            self._fetch_console_log(self.source, row)

    @work(thread=True, exit_on_error=False, group="console-log")
    def _fetch_console_log(self, source: CloudSource, row: ServerRow) -> None:
        try:
            text = source.console_output(row, CONSOLE_LOG_LINES) or "(the console log is empty)"
        except Exception as exc:
            self.app.call_from_thread(
                self.app.notify, f"console log of {row.name}: {describe_exception(exc)}",
                severity="error",
            )  # fmt: skip
            return
        title = f"Console log of {row.name} ({row.id}), last {CONSOLE_LOG_LINES} lines"
        self.app.call_from_thread(self.app.push_screen, TextScreen(title, text))

    def action_open_console(self) -> None:
        if (row := self._selected()) is not None and self.source is not None:
            self.app.push_screen(console_screen_for(self.app, self.source, row))

    def action_serial_console(self) -> None:
        if (row := self._selected()) is not None and self.source is not None:
            self.app.push_screen(serial_screen_for(self.app, self.source, row))
