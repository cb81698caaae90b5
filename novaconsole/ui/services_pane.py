"""The Services pane: ``compute service list`` with enable/disable/force-down."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from textual.binding import Binding, BindingType

from novaconsole.sources.base import CloudSource
from novaconsole.sources.rows import ServiceRow
from novaconsole.ui.format import age
from novaconsole.ui.pane import ResourcePane
from novaconsole.ui.table import Column


class ServicesPane(ResourcePane):
    """Compute services; down rows in the error colour, disabled ones in the warning colour."""

    pane_name = "services"
    title = "Services"
    MUTATING = frozenset({"enable", "disable", "force_down", "unset_force_down"})
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("e", "enable", "Enable"),
        Binding("d", "disable", "Disable"),
        Binding("f", "force_down", "Force down"),
        Binding("u", "unset_force_down", "Unset forced-down"),
    ]

    def build_columns(self) -> list[Column]:
        clock = self.clock
        return [
            Column("binary", "Binary", lambda r: r.binary),
            Column("host", "Host", lambda r: r.host),
            Column("zone", "Zone", lambda r: r.zone),
            Column("status", "Status", lambda r: r.status),
            Column("state", "State", lambda r: r.state),
            Column("updated_at", "Updated at", lambda r: r.updated_at),
            Column("heartbeat", "Heartbeat", lambda r: r.heartbeat_age(clock()), age, numeric=True),
            Column("forced_down", "Forced down", lambda r: r.forced_down),
            Column("disabled_reason", "Disabled reason", lambda r: r.disabled_reason),
        ]

    def fetch(self, source: CloudSource) -> Iterator[Sequence[Any]]:
        yield source.services()

    def row_style(self, row: Any) -> str | None:
        if row.is_down:
            return "error"
        return "warning" if row.is_disabled else None

    def _selected(self) -> ServiceRow | None:
        row = self.table.current_row
        return row if isinstance(row, ServiceRow) else None

    def action_enable(self) -> None:
        if (row := self._selected()) is not None:
            self.run_mutation(
                f"enable {row.binary} on {row.host}",
                f"Enable {row.binary} on {row.host}?",
                lambda source, _reason: source.enable_service(row),
            )

    def action_disable(self) -> None:
        if (row := self._selected()) is not None:
            self.run_mutation(
                f"disable {row.binary} on {row.host}",
                f"Disable {row.binary} on {row.host}? The scheduler stops placing servers there.",
                lambda source, reason: source.disable_service(row, reason),
                ask_reason=True,
            )

    def action_force_down(self) -> None:
        if (row := self._selected()) is not None:
            self.run_mutation(
                f"force down {row.binary} on {row.host}",
                f"Force {row.binary} on {row.host} down? Only do this once the host is fenced.",
                lambda source, _reason: source.set_forced_down(row, True),
            )

    def action_unset_force_down(self) -> None:
        if (row := self._selected()) is not None:
            self.run_mutation(
                f"unset forced-down of {row.binary} on {row.host}",
                f"Unset forced-down of {row.binary} on {row.host}?",
                lambda source, _reason: source.set_forced_down(row, False),
            )
