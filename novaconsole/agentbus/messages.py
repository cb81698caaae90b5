"""Typed bodies of agent bus messages, each with ``to_dict``/``from_dict``.

``from_dict`` takes what a verified envelope carried and raises :class:`BodyError` (a
``ValueError``) on a body of the wrong shape; fields a newer agent adds are ignored, so a
console reads agents one version ahead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


class BodyError(ValueError):
    """A message body that does not have the shape its kind promises."""


def _get(data: dict[str, Any], name: str, types: type | tuple[type, ...], default: Any) -> Any:
    if name not in data or data[name] is None:
        return default
    value = data[name]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise BodyError(f"field {name!r}: expected {types}, got a boolean")
    if not isinstance(value, types):
        raise BodyError(f"field {name!r}: expected {types}, got {type(value).__name__}")
    return value


def _table(data: object, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BodyError(f"{what}: expected an object")
    return data


def _list_of(data: dict[str, Any], name: str, cls: type[T]) -> list[T]:
    raw = _get(data, name, list, [])
    return [cls.from_dict(_table(item, f"{name}[{i}]")) for i, item in enumerate(raw)]  # type: ignore[attr-defined]


class _Body:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload,no-any-return]


@dataclass
class ServiceStatus(_Body):
    """One node service (nova-compute, libvirtd): running or not, since when."""

    name: str
    running: bool
    pid: int | None = None
    #: Unix time the running process started (or None).
    since: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServiceStatus:
        return cls(
            name=_get(d, "name", str, ""),
            running=_get(d, "running", bool, False),
            pid=_get(d, "pid", int, None),
            since=_get(d, "since", (int, float), None),
        )


@dataclass
class Heartbeat(_Body):
    """The agent is alive: a summary fit for one row of the Agents pane."""

    agent_version: str
    started: float
    interval: float
    libvirt_connected: bool
    libvirt_uri: str
    domains: int
    services: list[ServiceStatus] = field(default_factory=list)
    #: How many recent ERROR lines nova-compute's log holds (the lines: in Inventory).
    errors: int = 0
    libvirt_error: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Heartbeat:
        return cls(
            agent_version=_get(d, "agent_version", str, ""),
            started=float(_get(d, "started", (int, float), 0.0)),
            interval=float(_get(d, "interval", (int, float), 0.0)),
            libvirt_connected=_get(d, "libvirt_connected", bool, False),
            libvirt_uri=_get(d, "libvirt_uri", str, ""),
            domains=_get(d, "domains", int, 0),
            services=_list_of(d, "services", ServiceStatus),
            errors=_get(d, "errors", int, 0),
            libvirt_error=_get(d, "libvirt_error", str, None),
        )


@dataclass
class HostFacts(_Body):
    """The hypervisor host as libvirt sees it."""

    hostname: str
    #: The host name as Nova knows it (``[DEFAULT] host``), from the agent's config.
    nova_host: str
    libvirt_version: str = ""
    hypervisor_version: str = ""
    #: libvirt's hypervisor type (``QEMU``; with ``virt_type`` kvm or qemu from capabilities).
    hypervisor_type: str = ""
    virt_type: str = ""
    arch: str = ""
    cpus: int = 0
    memory_mib: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HostFacts:
        return cls(
            hostname=_get(d, "hostname", str, ""),
            nova_host=_get(d, "nova_host", str, ""),
            libvirt_version=_get(d, "libvirt_version", str, ""),
            hypervisor_version=_get(d, "hypervisor_version", str, ""),
            hypervisor_type=_get(d, "hypervisor_type", str, ""),
            virt_type=_get(d, "virt_type", str, ""),
            arch=_get(d, "arch", str, ""),
            cpus=_get(d, "cpus", int, 0),
            memory_mib=_get(d, "memory_mib", int, 0),
        )


@dataclass
class NovaMetadata(_Body):
    """What Nova wrote into the domain XML (namespace ``.../libvirt/nova/1.1``)."""

    #: The server's display name (``<nova:name>``); the instance name is the domain's name.
    display_name: str = ""
    flavor: str = ""
    project_id: str = ""
    project_name: str = ""
    user_id: str = ""
    user_name: str = ""
    created: str = ""
    package: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NovaMetadata:
        return cls(**{f.name: _get(d, f.name, str, "") for f in dataclasses.fields(cls)})


@dataclass
class Graphics(_Body):
    """A graphical console (VNC, SPICE) of a domain."""

    type: str
    port: int | None = None
    listen: str = ""
    autoport: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Graphics:
        return cls(
            type=_get(d, "type", str, ""),
            port=_get(d, "port", int, None),
            listen=_get(d, "listen", str, ""),
            autoport=_get(d, "autoport", bool, False),
        )


@dataclass
class SerialConsole(_Body):
    """A serial console: a TCP port (host/port), a pty or a log file."""

    type: str
    host: str = ""
    port: int | None = None
    path: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SerialConsole:
        return cls(
            type=_get(d, "type", str, ""),
            host=_get(d, "host", str, ""),
            port=_get(d, "port", int, None),
            path=_get(d, "path", str, ""),
        )


@dataclass
class Disk(_Body):
    target: str
    device: str = "disk"
    source: str = ""
    driver_type: str = ""
    bus: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Disk:
        return cls(**{f.name: _get(d, f.name, str, "") for f in dataclasses.fields(cls)})


@dataclass
class Domain(_Body):
    """One libvirt domain: identity, state with reason, Nova's metadata, consoles, disks."""

    uuid: str
    name: str
    #: libvirt's state in virsh's words: running, paused, shut off, crashed, ...
    state: str
    reason: str = ""
    #: None when the domain carries no Nova metadata (not a Nova guest).
    nova: NovaMetadata | None = None
    graphics: list[Graphics] = field(default_factory=list)
    serials: list[SerialConsole] = field(default_factory=list)
    disks: list[Disk] = field(default_factory=list)
    #: libvirt's flat statistics of one bulk call (``state.state``, ``cpu.time``, ...).
    stats: dict[str, Any] = field(default_factory=dict)
    persistent: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Domain:
        nova = d.get("nova")
        return cls(
            uuid=_get(d, "uuid", str, ""),
            name=_get(d, "name", str, ""),
            state=_get(d, "state", str, ""),
            reason=_get(d, "reason", str, ""),
            nova=NovaMetadata.from_dict(_table(nova, "nova")) if nova is not None else None,
            graphics=_list_of(d, "graphics", Graphics),
            serials=_list_of(d, "serials", SerialConsole),
            disks=_list_of(d, "disks", Disk),
            stats=_get(d, "stats", dict, {}),
            persistent=_get(d, "persistent", bool, True),
        )

    def vnc(self) -> Graphics | None:
        return next((g for g in self.graphics if g.type == "vnc"), None)


@dataclass
class Inventory(_Body):
    """A full snapshot of the hypervisor: host facts, every domain, services, errors."""

    host: HostFacts
    domains: list[Domain] = field(default_factory=list)
    services: list[ServiceStatus] = field(default_factory=list)
    #: The last ERROR lines of nova-compute's log (oldest first).
    errors: list[str] = field(default_factory=list)
    libvirt_connected: bool = True
    libvirt_error: str | None = None
    #: Why this snapshot was sent: start, change, request, resync, interval.
    cause: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Inventory:
        errors = _get(d, "errors", list, [])
        return cls(
            host=HostFacts.from_dict(_table(d.get("host"), "host")),
            domains=_list_of(d, "domains", Domain),
            services=_list_of(d, "services", ServiceStatus),
            errors=[str(e) for e in errors],
            libvirt_connected=_get(d, "libvirt_connected", bool, True),
            libvirt_error=_get(d, "libvirt_error", str, None),
            cause=_get(d, "cause", str, ""),
        )


@dataclass
class DomainEvent(_Body):
    """A libvirt domain event: ``event`` is its family (lifecycle, reboot, watchdog,
    io-error, graphics, control-error, device-added, device-removed, job-completed,
    metadata-change), ``detail`` and ``reason`` libvirt's words for what happened."""

    uuid: str
    name: str
    event: str
    detail: str = ""
    reason: str = ""
    ts: float = 0.0
    #: The domain's state after the event, when the agent read it (lifecycle events).
    state: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DomainEvent:
        return cls(
            uuid=_get(d, "uuid", str, ""),
            name=_get(d, "name", str, ""),
            event=_get(d, "event", str, ""),
            detail=_get(d, "detail", str, ""),
            reason=_get(d, "reason", str, ""),
            ts=float(_get(d, "ts", (int, float), 0.0)),
            state=_get(d, "state", str, ""),
            extra=_get(d, "extra", dict, {}),
        )


@dataclass
class CommandRequest(_Body):
    """A console's command to one agent; the reply goes to ``reply_to``."""

    command: str
    args: dict[str, Any] = field(default_factory=dict)
    reply_to: str = ""
    correlation_id: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CommandRequest:
        command = _get(d, "command", str, "")
        if not command:
            raise BodyError("field 'command' missing")
        return cls(
            command=command,
            args=_get(d, "args", dict, {}),
            reply_to=_get(d, "reply_to", str, ""),
            correlation_id=_get(d, "correlation_id", str, ""),
        )


@dataclass
class CommandReply(_Body):
    """An agent's answer: ``ok`` with ``result``, or not with a one-line ``error``."""

    correlation_id: str
    ok: bool
    command: str = ""
    error: str | None = None
    result: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CommandReply:
        return cls(
            correlation_id=_get(d, "correlation_id", str, ""),
            ok=_get(d, "ok", bool, False),
            command=_get(d, "command", str, ""),
            error=_get(d, "error", str, None),
            result=_get(d, "result", dict, None),
        )


#: The body class of each message kind.
BODY_TYPES: dict[str, Any] = {
    "heartbeat": Heartbeat,
    "inventory": Inventory,
    "event": DomainEvent,
    "command": CommandRequest,
    "reply": CommandReply,
}


def parse_body(kind: str, body: dict[str, Any]) -> Any:
    """The typed body of a message of ``kind`` (raises :class:`BodyError`)."""
    cls = BODY_TYPES.get(kind)
    if cls is None:
        raise BodyError(f"no body type for kind {kind!r}")
    return cls.from_dict(body)
