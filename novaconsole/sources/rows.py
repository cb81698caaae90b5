"""Typed rows the console shows: one frozen dataclass per resource, plus the raw API body.

Every row keeps ``raw`` (the resource exactly as the API returned it) so the details view can
show it as YAML; the typed fields are what the panes display, sort and filter on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: Nova's ``OS-EXT-STS:power_state`` integers, as ``openstack server show`` names them.
POWER_STATES: dict[int, str] = {
    0: "NOSTATE",
    1: "Running",
    3: "Paused",
    4: "Shutdown",
    6: "Crashed",
    7: "Suspended",
}


@dataclass(frozen=True, slots=True)
class CloudInfo:
    """What the header shows about the session."""

    cloud: str
    region: str
    user: str
    project: str
    #: API versions by service type, e.g. ``{"compute": "2.1 (max 2.100)"}``.
    versions: Mapping[str, str] = field(default_factory=dict)
    is_admin: bool = False


@dataclass(frozen=True, slots=True)
class ServiceRow:
    """One compute service (``openstack compute service list``)."""

    id: str
    binary: str
    host: str
    zone: str
    status: str
    state: str
    updated_at: datetime | None
    disabled_reason: str | None
    forced_down: bool
    raw: Mapping[str, Any] = field(compare=False, repr=False)

    @property
    def is_down(self) -> bool:
        return self.state != "up"

    @property
    def is_disabled(self) -> bool:
        return self.status != "enabled"

    def heartbeat_age(self, now: datetime) -> float | None:
        """Seconds since the last heartbeat, or ``None`` if the service never reported."""
        if self.updated_at is None:
            return None
        return max(0.0, (now - self.updated_at).total_seconds())


@dataclass(frozen=True, slots=True)
class EndpointRow:
    """One endpoint of one catalog service, and whether it answered a probe."""

    service_type: str
    service_name: str
    interface: str
    region: str
    url: str
    #: ``None`` until probed; then True (any HTTP answer) or False (no answer).
    reachable: bool | None
    probe_detail: str
    raw: Mapping[str, Any]

    @property
    def id(self) -> str:
        return str(self.raw.get("id") or f"{self.service_type}/{self.interface}/{self.url}")


@dataclass(frozen=True, slots=True)
class ImageRow:
    """One Glance image (``openstack image list --long``)."""

    id: str
    name: str
    status: str
    visibility: str
    disk_format: str
    container_format: str
    size: int | None
    created_at: datetime | None
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ResourceUse:
    """Used and usable amount of one Placement resource class on one provider."""

    used: int
    #: ``(total - reserved) * allocation_ratio``: what the scheduler may hand out.
    capacity: int


@dataclass(frozen=True, slots=True)
class HypervisorRow:
    """One compute node, its Placement usage and what is wrong with it."""

    id: str
    name: str
    hypervisor_type: str
    state: str
    status: str
    host_ip: str
    running_vms: int | None
    vcpu: ResourceUse | None
    memory_mb: ResourceUse | None
    disk_gb: ResourceUse | None
    #: Human-readable problems: compute service down, host not mapped to a cell, ...
    flags: tuple[str, ...]
    raw: Mapping[str, Any] = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ServerRow:
    """One server (``openstack server list --all-projects --long``)."""

    id: str
    name: str
    status: str
    task_state: str | None
    power_state: str
    host: str | None
    flavor: str
    image: str
    addresses: str
    created_at: datetime | None
    project_id: str
    #: Not compared: two rows showing the same are equal whatever their bodies' storage.
    raw: Mapping[str, Any] = field(compare=False, repr=False)
    #: ``OS-EXT-STS:vm_state`` (drift judges by it without decoding the raw body).
    vm_state: str | None = None
