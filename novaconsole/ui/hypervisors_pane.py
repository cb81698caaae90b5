"""The Hypervisors pane: compute nodes with Placement usage and what is wrong with them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from novaconsole.sources.base import CloudSource
from novaconsole.ui.format import usage, usage_ratio
from novaconsole.ui.pane import ResourcePane
from novaconsole.ui.table import Column


class HypervisorsPane(ResourcePane):
    """vCPU/RAM/disk are ``used/capacity`` from Placement (compute API 2.88 dropped them)."""

    pane_name = "hypervisors"
    title = "Hypervisors"
    PURE_COLUMNS = True

    def build_columns(self) -> list[Column]:
        return [
            Column("name", "Name", lambda r: r.name),
            Column("type", "Type", lambda r: r.hypervisor_type),
            Column("state", "State", lambda r: r.state),
            Column("status", "Status", lambda r: r.status),
            Column("host_ip", "Host IP", lambda r: r.host_ip),
            Column("running_vms", "VMs", lambda r: r.running_vms, numeric=True),
            Column(
                "vcpu", "vCPU used/total", lambda r: r.vcpu, usage, numeric=True,
                sort=lambda r: usage_ratio(r.vcpu),
            ),
            Column(
                "ram", "RAM GiB used/total", lambda r: r.memory_mb,
                lambda v: usage(v, 1024.0), numeric=True, sort=lambda r: usage_ratio(r.memory_mb),
            ),
            Column(
                "disk", "Disk GB used/total", lambda r: r.disk_gb, usage, numeric=True,
                sort=lambda r: usage_ratio(r.disk_gb),
            ),
            Column("flags", "Problems", lambda r: "; ".join(r.flags), max_width=70),
        ]  # fmt: skip

    def fetch(self, source: CloudSource) -> Iterator[Sequence[Any]]:
        yield source.hypervisors()

    def row_style(self, row: Any) -> str | None:
        serious = [f for f in row.flags if f != "compute service disabled"]
        if serious:
            return "error"
        return "warning" if row.flags else None
