"""The agent's configuration: one TOML file (see ``docs/agent.example.toml``).

Top-level keys say which hypervisor this is and how often to report; ``[bus]`` and
``[keys]`` are :class:`~novaconsole.agentbus.settings.BusSettings`; ``[commands]`` lists the
commands this agent accepts (mutating ones only when listed); ``[services]`` how to find
and restart the node's services; ``[logs]`` which log files ``log_tail`` may read.
"""

from __future__ import annotations

import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from novaconsole.agentbus.settings import (
    BusSettings,
    bounded_number,
    optional_path,
    resolve_path,
)
from novaconsole.errors import ConfigError

#: Commands that only read (the default set).
READ_ONLY_COMMANDS = ("inventory", "domain_xml", "log_tail", "screenshot", "stats", "vnc_target")
#: Commands that change the node: refused unless ``[commands] allowed`` names them.
MUTATING_COMMANDS = ("restart_service", "destroy_unknown_domain")

#: How the node's services are found among processes: an argv element's base name.
DEFAULT_SERVICES: dict[str, tuple[str, ...]] = {
    "nova-compute": ("nova-compute",),
    "libvirtd": ("libvirtd", "virtqemud"),
}


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    #: Base names of the executable (or of the script a Python runs) that is the service.
    match: tuple[str, ...]
    #: argv that restarts it (``restart_service``), run without a shell; None: not offered.
    restart: tuple[str, ...] | None = None


@dataclass(frozen=True)
class AgentConfig:
    host: str
    libvirt_uri: str = "qemu:///system"
    heartbeat_interval: float = 10.0
    #: A full inventory at least this often, besides on start, change and request.
    inventory_interval: float = 300.0
    nova_compute_log: Path | None = None
    #: Where the agent keeps its command journal (at most once across restarts).
    state_dir: Path | None = None
    allowed: frozenset[str] = frozenset(READ_ONLY_COMMANDS)
    services: tuple[ServiceConfig, ...] = ()
    logs: dict[str, Path] = field(default_factory=dict)
    #: Address a console should use for a VNC server that listens on all addresses.
    console_address: str = ""
    bus: BusSettings | None = None
    source: str = "<defaults>"

    @property
    def mutating(self) -> frozenset[str]:
        return self.allowed & frozenset(MUTATING_COMMANDS)

    def service(self, name: str) -> ServiceConfig | None:
        return next((s for s in self.services if s.name == name), None)

    @classmethod
    def defaults(cls) -> AgentConfig:
        return cls(
            host=socket.gethostname(),
            services=tuple(ServiceConfig(n, m) for n, m in DEFAULT_SERVICES.items()),
        )

    @classmethod
    def load(cls, path: Path) -> AgentConfig:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no such file") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path) -> AgentConfig:
        known = {
            "host",
            "libvirt_uri",
            "heartbeat_interval",
            "inventory_interval",
            "nova_compute_log",
            "state_dir",
            "console_address",
            "bus",
            "keys",
            "commands",
            "services",
            "logs",
        }
        for key in data:
            if key not in known:
                raise ConfigError(f"{path}: {key}: unknown setting")
        host = data.get("host", socket.gethostname())
        if not isinstance(host, str) or not host or "/" in host or " " in host:
            raise ConfigError(f"{path}: host: expected the host name as Nova knows it")
        uri = data.get("libvirt_uri", "qemu:///system")
        if not isinstance(uri, str) or ":" not in uri:
            raise ConfigError(f"{path}: libvirt_uri: expected a libvirt URI")
        commands = data.get("commands", {})
        if not isinstance(commands, dict):
            raise ConfigError(f"{path}: commands: expected a table [commands]")
        allowed_raw = commands.get("allowed", list(READ_ONLY_COMMANDS))
        if not isinstance(allowed_raw, list) or not all(isinstance(c, str) for c in allowed_raw):
            raise ConfigError(f"{path}: commands.allowed: expected a list of command names")
        for name in allowed_raw:
            if name not in READ_ONLY_COMMANDS + MUTATING_COMMANDS:
                raise ConfigError(f"{path}: commands.allowed: unknown command {name!r}")
        services = _services(data.get("services", {}), path)
        logs: dict[str, Path] = {}
        logs_raw = data.get("logs", {})
        if not isinstance(logs_raw, dict):
            raise ConfigError(f"{path}: logs: expected a table [logs] of name = path")
        for name, value in logs_raw.items():
            if not isinstance(value, str):
                raise ConfigError(f"{path}: logs.{name}: expected a path")
            logs[name] = resolve_path(value, path)
        nova_log = optional_path(data, "nova_compute_log", path)
        if nova_log is not None:
            logs.setdefault("nova-compute", nova_log)
        console_address = data.get("console_address", "")
        if not isinstance(console_address, str):
            raise ConfigError(f"{path}: console_address: expected a host name or address")
        return cls(
            host=host,
            libvirt_uri=uri,
            heartbeat_interval=bounded_number(
                data, "heartbeat_interval", path, 10.0, lo=0.2, hi=3600, unit="seconds"
            ),
            inventory_interval=bounded_number(
                data, "inventory_interval", path, 300.0, lo=1, hi=86400, unit="seconds"
            ),
            nova_compute_log=nova_log,
            state_dir=optional_path(data, "state_dir", path),
            allowed=frozenset(allowed_raw),
            services=services,
            logs=logs,
            console_address=console_address,
            bus=BusSettings.from_tables(data, path) if "bus" in data else None,
            source=str(path),
        )


def _services(raw: object, path: Path) -> tuple[ServiceConfig, ...]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: services: expected tables [services.NAME]")
    merged: dict[str, dict[str, Any]] = {n: {"match": list(m)} for n, m in DEFAULT_SERVICES.items()}
    for name, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: services.{name}: expected a table")
        merged.setdefault(name, {}).update(table)
    out = []
    for name, table in merged.items():
        match = table.get("match", [name])
        if not isinstance(match, list) or not match or not all(isinstance(m, str) for m in match):
            raise ConfigError(f"{path}: services.{name}.match: expected a list of names")
        restart = table.get("restart")
        if restart is not None and (
            not isinstance(restart, list)
            or not restart
            or not all(isinstance(a, str) for a in restart)
        ):
            raise ConfigError(f"{path}: services.{name}.restart: expected an argv list")
        for key in table:
            if key not in ("match", "restart"):
                raise ConfigError(f"{path}: services.{name}.{key}: unknown setting")
        out.append(ServiceConfig(name, tuple(match), tuple(restart) if restart else None))
    return tuple(out)
