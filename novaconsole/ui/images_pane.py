"""The Images pane: Glance images, filterable by visibility."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from textual.binding import Binding, BindingType

from novaconsole.sources.base import CloudSource
from novaconsole.ui.format import size
from novaconsole.ui.pane import ResourcePane
from novaconsole.ui.table import Column

#: ``v`` cycles through these (``None`` is Glance's default listing).
VISIBILITIES: tuple[str | None, ...] = (None, "public", "private", "shared", "community")


class ImagesPane(ResourcePane):
    """Images; the visibility filter is asked of Glance (community images need it)."""

    pane_name = "images"
    title = "Images"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("v", "cycle_visibility", "Visibility")]

    visibility: str | None = None

    def build_columns(self) -> list[Column]:
        return [
            Column("name", "Name", lambda r: r.name),
            Column("status", "Status", lambda r: r.status),
            Column("visibility", "Visibility", lambda r: r.visibility),
            Column("disk_format", "Disk format", lambda r: r.disk_format),
            Column("container_format", "Container", lambda r: r.container_format),
            Column("size", "Size", lambda r: r.size, size, numeric=True),
            Column("created_at", "Created", lambda r: r.created_at),
            Column("id", "ID", lambda r: r.id),
        ]

    def fetch(self, source: CloudSource) -> Iterator[Sequence[Any]]:
        yield source.images(self.visibility)

    def row_style(self, row: Any) -> str | None:
        if row.status in ("killed", "deleted", "pending_delete"):
            return "error"
        return None if row.status == "active" else "warning"

    def set_visibility(self, visibility: str | None) -> None:
        self.visibility = visibility
        self.refresh_data()

    def action_cycle_visibility(self) -> None:
        index = VISIBILITIES.index(self.visibility)
        self.set_visibility(VISIBILITIES[(index + 1) % len(VISIBILITIES)])

    def _status_text(self) -> str:
        text = super()._status_text()
        if self.visibility and self.error is None:
            text += f" · visibility {self.visibility}"
        return text
