"""Turn raw API bodies into typed rows.

The real source and the test's recorded fake both feed these functions the JSON bodies the
APIs returned, so what the snapshot tests see is parsed by the same code as the live console.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from novaconsole.sources.rows import (
    POWER_STATES,
    EndpointRow,
    HypervisorRow,
    ImageRow,
    ResourceUse,
    ServerRow,
    ServiceRow,
)

#: Flag text for a compute host that Nova's API database does not map to a cell.
UNMAPPED_FLAG = "host not mapped to a cell (nova-manage cell_v2 discover_hosts)"


def parse_time(value: Any) -> datetime | None:
    """An API timestamp (with or without zone, with or without fraction) as aware UTC."""
    if not value or not isinstance(value, str):
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC)


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def service_row(raw: Mapping[str, Any]) -> ServiceRow:
    """A row from one entry of ``GET /os-services``."""
    return ServiceRow(
        id=_str(raw.get("id")),
        binary=_str(raw.get("binary")),
        host=_str(raw.get("host")),
        zone=_str(raw.get("zone")),
        status=_str(raw.get("status")),
        state=_str(raw.get("state")),
        updated_at=parse_time(raw.get("updated_at")),
        disabled_reason=raw.get("disabled_reason") or None,
        forced_down=bool(raw.get("forced_down", False)),
        raw=raw,
    )


def endpoint_rows(
    catalog: Iterable[Mapping[str, Any]], probes: Mapping[str, tuple[bool, str]] | None = None
) -> list[EndpointRow]:
    """Rows from a token's service catalog, sorted by service type then interface.

    ``probes`` maps an endpoint URL to ``(answered, detail)``; URLs not in it stay unprobed.
    """
    probes = probes or {}
    rows: list[EndpointRow] = []
    for service in catalog:
        for endpoint in service.get("endpoints", ()):
            url = _str(endpoint.get("url"))
            probe = probes.get(url)
            rows.append(
                EndpointRow(
                    service_type=_str(service.get("type")),
                    service_name=_str(service.get("name")),
                    interface=_str(endpoint.get("interface")),
                    region=_str(endpoint.get("region") or endpoint.get("region_id")),
                    url=url,
                    reachable=None if probe is None else probe[0],
                    probe_detail="" if probe is None else probe[1],
                    raw={
                        **endpoint,
                        "service": {k: v for k, v in service.items() if k != "endpoints"},
                    },
                )
            )
    order = {"public": 0, "internal": 1, "admin": 2}
    rows.sort(key=lambda r: (r.service_type, r.region, order.get(r.interface, 9), r.url))
    return rows


def image_row(raw: Mapping[str, Any]) -> ImageRow:
    """A row from one entry of Glance's ``GET /v2/images``."""
    size = raw.get("size")
    return ImageRow(
        id=_str(raw.get("id")),
        name=_str(raw.get("name")),
        status=_str(raw.get("status")),
        visibility=_str(raw.get("visibility")),
        disk_format=_str(raw.get("disk_format")),
        container_format=_str(raw.get("container_format")),
        size=int(size) if isinstance(size, int | float) else None,
        created_at=parse_time(raw.get("created_at")),
        raw=raw,
    )


def _use(provider: Mapping[str, Any] | None, resource_class: str) -> ResourceUse | None:
    if not provider:
        return None
    inventory = (provider.get("inventories") or {}).get(resource_class)
    if not inventory:
        return None
    total = int(inventory.get("total", 0))
    reserved = int(inventory.get("reserved", 0))
    ratio = float(inventory.get("allocation_ratio", 1.0))
    used = int((provider.get("usages") or {}).get(resource_class, 0))
    return ResourceUse(used=used, capacity=int((total - reserved) * ratio))


class HypervisorJoin:
    """Joins ``os-hypervisors`` entries, as they come page by page, with ``os-services``
    and Placement (see :func:`hypervisor_rows`)."""

    def __init__(
        self, services: Sequence[Mapping[str, Any]], providers: Mapping[str, Mapping[str, Any]]
    ) -> None:
        self.computes = {
            _str(s.get("host")): s for s in services if s.get("binary") == "nova-compute"
        }
        self.providers = providers
        self.by_name = {_str(p.get("name")): (uuid, p) for uuid, p in providers.items()}
        self.seen_hosts: set[str] = set()

    def row(self, raw: Mapping[str, Any], keep: Mapping[str, Any] | None = None) -> HypervisorRow:
        """The row of one hypervisor; ``keep`` is what the row holds as ``raw`` (``raw``
        itself if None, else e.g. a :class:`~novaconsole.sources.rawstore.PagedBody`)."""
        hyp_id = _str(raw.get("id"))
        name = _str(raw.get("hypervisor_hostname"))
        host = _str((raw.get("service") or {}).get("host")) or name
        self.seen_hosts.add(host)
        provider = self.providers.get(hyp_id) or self.by_name.get(name, ("", None))[1]
        flags: list[str] = []
        service = self.computes.get(host)
        if raw.get("state") == "down" or (service is not None and service.get("state") == "down"):
            flags.append("compute service down")
        if raw.get("status") == "disabled":
            flags.append("compute service disabled")
        if provider is None:
            flags.append("no resource provider in Placement")
        servers = raw.get("servers")
        if isinstance(servers, list):
            running: int | None = len(servers)
        elif isinstance(raw.get("running_vms"), int):
            running = int(raw["running_vms"])
        else:
            running = 0 if "servers" not in raw and provider is not None else None
        return HypervisorRow(
            id=hyp_id,
            name=name,
            hypervisor_type=sys.intern(_str(raw.get("hypervisor_type"))),
            state=sys.intern(_str(raw.get("state"))),
            status=sys.intern(_str(raw.get("status"))),
            host_ip=_str(raw.get("host_ip")),
            running_vms=running,
            vcpu=_use(provider, "VCPU"),
            memory_mb=_use(provider, "MEMORY_MB"),
            disk_gb=_use(provider, "DISK_GB"),
            flags=tuple(flags),
            raw=raw if keep is None else keep,
        )

    def unmapped(self) -> list[HypervisorRow]:
        """Rows of the compute services no hypervisor was seen for (after every page)."""
        rows: list[HypervisorRow] = []
        for host, service in sorted(self.computes.items()):
            if host in self.seen_hosts:
                continue
            uuid, provider = self.by_name.get(host, ("", None))
            flags = [UNMAPPED_FLAG]
            if service.get("state") == "down":
                flags.insert(0, "compute service down")
            rows.append(
                HypervisorRow(
                    id=uuid or _str(service.get("id")),
                    name=host,
                    hypervisor_type="?",
                    state=_str(service.get("state")),
                    status=_str(service.get("status")),
                    host_ip="",
                    running_vms=None,
                    vcpu=_use(provider, "VCPU"),
                    memory_mb=_use(provider, "MEMORY_MB"),
                    disk_gb=_use(provider, "DISK_GB"),
                    flags=tuple(flags),
                    raw={"service": service, "resource_provider": provider or {}},
                )
            )
        return rows


def hypervisor_rows(
    hypervisors: Sequence[Mapping[str, Any]],
    services: Sequence[Mapping[str, Any]],
    providers: Mapping[str, Mapping[str, Any]],
) -> list[HypervisorRow]:
    """Rows joining ``os-hypervisors``, ``os-services`` and Placement.

    ``providers`` maps a resource provider UUID to ``{"name", "inventories", "usages"}``
    (the ``inventories``/``usages`` objects of Placement's answers). Since compute API 2.88
    os-hypervisors carries no vCPU/RAM/disk figures, so Placement is the only source.

    Nova's os-hypervisors skips compute nodes whose host has no host mapping, while
    os-services lists every cell's services: a ``nova-compute`` service with no hypervisor is
    therefore a host not mapped to a cell, and gets a row of its own saying so.
    """
    join = HypervisorJoin(services, providers)
    rows = [join.row(raw) for raw in hypervisors]
    return rows + join.unmapped()


def _addresses(raw: Any) -> str:
    if not isinstance(raw, Mapping):
        return ""
    parts = []
    for network, entries in raw.items():
        ips = ", ".join(_str(e.get("addr")) for e in entries if isinstance(e, Mapping))
        parts.append(f"{network}={ips}")
    return "; ".join(parts)


def _interned(value: Any) -> str | None:
    # Hosts, statuses, flavors and projects repeat across 100,000 rows: one string each.
    return sys.intern(value) if isinstance(value, str) else None if value is None else str(value)


class ServerParser:
    """Parses the servers of one listing, sharing repeated values between rows.

    Strings that repeat (host, status, flavor, project) are interned and equal timestamps
    share one ``datetime``, so a row costs its own few fields and not a copy of each.
    """

    def __init__(self, image_names: Mapping[str, str] | None = None) -> None:
        self.image_names = image_names or {}
        self._times: dict[str, datetime | None] = {}

    def _time(self, value: Any) -> datetime | None:
        if not isinstance(value, str):
            return None
        try:
            return self._times[value]
        except KeyError:
            if len(self._times) > 100_000:
                self._times.clear()
            stamp = self._times[value] = parse_time(value)
            return stamp

    def row(self, raw: Mapping[str, Any], keep: Mapping[str, Any] | None = None) -> ServerRow:
        """A row from one entry of ``GET /servers/detail``; ``keep`` is what ``raw`` holds
        (a :class:`~novaconsole.sources.rawstore.PagedBody` of it), ``raw`` itself if None."""
        flavor = raw.get("flavor") or {}
        flavor_name = _str(flavor.get("original_name") or flavor.get("id"))
        image = raw.get("image")
        image_id = _str(image.get("id")) if isinstance(image, Mapping) else ""
        image_label = self.image_names.get(image_id, image_id) if image_id else "(volume)"
        power = raw.get("OS-EXT-STS:power_state")
        return ServerRow(
            id=_str(raw.get("id")),
            name=_str(raw.get("name")),
            status=_interned(_str(raw.get("status"))) or "",
            task_state=_interned(raw.get("OS-EXT-STS:task_state") or None),
            power_state=POWER_STATES.get(power, _str(power)) if isinstance(power, int) else "",
            host=_interned(raw.get("OS-EXT-SRV-ATTR:host") or None),
            flavor=sys.intern(flavor_name),
            image=sys.intern(image_label),
            addresses=_addresses(raw.get("addresses")),
            created_at=self._time(raw.get("created")),
            project_id=sys.intern(_str(raw.get("tenant_id") or raw.get("project_id"))),
            raw=raw if keep is None else keep,
            vm_state=_interned(raw.get("OS-EXT-STS:vm_state") or None),
        )


def server_row(raw: Mapping[str, Any], image_names: Mapping[str, str] | None = None) -> ServerRow:
    """A row from one entry of ``GET /servers/detail``."""
    return ServerParser(image_names).row(raw)
