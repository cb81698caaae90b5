"""The Catalog pane: services and endpoints, grouped by service, with a reachability probe."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from novaconsole.sources.base import CloudSource
from novaconsole.ui.pane import ResourcePane
from novaconsole.ui.table import Column


def _reachable(value: object) -> str:
    if value is None:
        return "…"
    return "yes" if value is True else "NO"


class CatalogPane(ResourcePane):
    """Endpoints by service; the rows come first, the probe results a moment later."""

    pane_name = "catalog"
    title = "Catalog"
    group_column = 0
    STAGES = 2

    def build_columns(self) -> list[Column]:
        return [
            Column("service_type", "Service", lambda r: r.service_type),
            Column("service_name", "Name", lambda r: r.service_name),
            Column("interface", "Interface", lambda r: r.interface),
            Column("region", "Region", lambda r: r.region),
            Column("url", "URL", lambda r: r.url, max_width=60),
            Column("reachable", "Answers", lambda r: r.reachable, _reachable),
            Column("probe", "Probe", lambda r: r.probe_detail),
        ]

    def fetch(self, source: CloudSource) -> Iterator[Sequence[Any]]:
        yield source.catalog()
        yield source.probed_catalog()

    def row_style(self, row: Any) -> str | None:
        return "error" if row.reachable is False else None
