"""The lab's settings (ports, state directory, database) and its generated secrets."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from novaconsole.errors import ConfigError
from novaconsole.fileutil import atomic_write
from novaconsole.lab.venvs import default_state_dir
from novaconsole.site import SECRET_NAMES

DEFAULT_PORTS: dict[str, int] = {
    "keystone": 5000,
    "glance": 9292,
    "placement": 8778,
    "neutron": 9696,
    "nova-api": 8774,
    "novncproxy": 6080,
    "serialproxy": 6083,
    "memcached": 11211,
    "nova-metadata": 8775,
    "ovn-nb": 6641,
    "ovn-sb": 6642,
    "glusterd": 24007,
}

#: How the lab's Neutron moves packets: ``ovn`` (ML2/OVN over Open vSwitch's userspace
#: datapath: this kernel has no openvswitch module) or ``none`` (the API server only).
NETWORKING_CHOICES = ("ovn", "none")

#: The database server Neutron uses when the rest of the lab is on SQLite and networking
#: is on: ML2/OVN deadlocks on SQLite (the OVSDB thread queries the hash ring while a
#: request thread holds SQLite's one write lock and waits for that thread).
LOCAL_DB_SERVER = "mysql+pymysql://root@127.0.0.1"

#: The RabbitMQ account the lab creates for OpenStack (the guide's ``openstack`` user).
RABBIT_USER = "novaconsole-lab"


@dataclass
class LabConfig:
    """Where the lab lives and how it is reached. Everything listens on 127.0.0.1."""

    state_dir: Path = field(default_factory=default_state_dir)
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    #: Admin URL of a database server; ``None`` means SQLite files under the state dir.
    db_url: str | None = None
    rabbit_host: str = "127.0.0.1"
    rabbit_port: int = 5672
    region: str = "RegionOne"
    #: auto, systemd or supervisord (see :func:`novaconsole.services.choose_service_manager`).
    service_manager: str = "auto"
    #: One of :data:`NETWORKING_CHOICES`.
    networking: str = "ovn"
    #: Compute nodes: 1 is this machine's own; more are hosts of their own on it
    #: (:mod:`novaconsole.lab.nodes`).
    computes: int = 1

    @property
    def neutron_db_url(self) -> str | None:
        """The database server Neutron's database lives on (``None``: SQLite)."""
        if self.db_url is None and self.networking == "ovn":
            return LOCAL_DB_SERVER
        return self.db_url

    @property
    def ovs_dir(self) -> Path:
        """Open vSwitch's and OVN's databases (conf.db, ovnnb.db, ovnsb.db)."""
        return self.data_dir / "ovs"

    @property
    def venvs_dir(self) -> Path:
        """Shared by every lab on the machine (a second lab's state dir reuses them)."""
        return default_state_dir() / "venvs"

    @property
    def guest_cache_dir(self) -> Path:
        """Downloaded Debian packages of the lab's guest; shared like the venvs."""
        return default_state_dir() / "cache" / "debs"

    @property
    def guest_dir(self) -> Path:
        """The lab's guest as built (kernel, initramfs, root disk, build.json)."""
        return self.data_dir / "guest"

    @property
    def etc(self) -> Path:
        return self.state_dir / "etc"

    @property
    def services_dir(self) -> Path:
        return self.state_dir / "services"

    @property
    def log_dir(self) -> Path:
        return self.services_dir / "logs"

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def instances_dir(self) -> Path:
        """Where guests' disks live. QEMU runs as libvirt-qemu and must traverse every
        parent directory, which /root (0700) and the 0700 state directory forbid, so a
        root lab keeps them under /var/lib (one directory per state directory)."""
        if os.geteuid() != 0:
            return self.data_dir / "nova" / "instances"
        digest = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:12]
        return Path("/var/lib/novaconsole/instances") / digest

    @property
    def secrets_file(self) -> Path:
        return self.state_dir / "secrets.json"

    @property
    def rabbit_marker(self) -> Path:
        """Present when this lab started the RabbitMQ broker (so down stops it)."""
        return self.state_dir / "rabbitmq-started-by-lab"

    @property
    def ready_file(self) -> Path:
        return self.state_dir / "READY"

    @property
    def settings_file(self) -> Path:
        return self.state_dir / "lab.json"

    def url(self, service: str, path: str = "") -> str:
        return f"http://{self.host}:{self.ports[service]}{path}"

    def save(self) -> None:
        """Remember ports and database choice so ``status``/``down`` find the same lab."""
        data = {
            "ports": self.ports,
            "db_url": self.db_url,
            "host": self.host,
            "service_manager": self.service_manager,
            "networking": self.networking,
            "computes": self.computes,
        }
        atomic_write(self.settings_file, json.dumps(data, indent=2) + "\n", mode=0o600)

    @classmethod
    def load(cls, state_dir: Path) -> LabConfig:
        """The saved settings of the lab in ``state_dir`` (defaults if it has none)."""
        config = cls(state_dir=state_dir)
        try:
            data = json.loads(config.settings_file.read_text())
        except FileNotFoundError:
            return config
        except ValueError as exc:
            raise ConfigError(f"lab settings {config.settings_file} are corrupt: {exc}") from exc
        config.ports.update({k: int(v) for k, v in data.get("ports", {}).items()})
        config.db_url = data.get("db_url")
        config.host = data.get("host", config.host)
        config.service_manager = data.get("service_manager", config.service_manager)
        config.networking = data.get("networking", config.networking)
        if config.networking not in NETWORKING_CHOICES:
            raise ConfigError(
                f"lab settings {config.settings_file}: networking {config.networking!r} "
                f"is not one of {', '.join(NETWORKING_CHOICES)}"
            )
        config.computes = int(data.get("computes", config.computes))
        return config


def load_or_create_secrets(path: Path, *, write: bool = True) -> dict[str, str]:
    """The lab's passwords: generated once, kept in a 0600 file, never printed.

    With ``write=False`` (dry runs) missing ones are generated in memory only.
    """
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        stored = {}
    except ValueError as exc:
        raise ConfigError(f"lab secrets file {path} is corrupt: {exc}") from exc
    if not isinstance(stored, dict):
        raise ConfigError(f"lab secrets file {path} is corrupt: not a JSON object")
    missing = [name for name in SECRET_NAMES if not stored.get(name)]
    if missing:
        for name in missing:
            stored[name] = secrets.token_urlsafe(18)
        if write:
            atomic_write(path, json.dumps(stored, indent=2) + "\n", mode=0o600)
    return {str(k): str(v) for k, v in stored.items()}
