"""The site file: a TOML description of one deployment, plus secrets from the environment.

Secrets never live in the site file. They come from environment variables named after the
install guide's placeholders (``NOVA_DBPASS``, ``NOVA_PASS``, ``RABBIT_PASS``, ...), or, for
the lab, from a generated file of mode 0600 that is loaded into :attr:`Site.secrets`.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from novaconsole.errors import ConfigError

#: Values of ``service_manager``.
SERVICE_MANAGERS = ("auto", "systemd", "supervisord")

#: Secret names (the guide's placeholders) that a site may need.
SECRET_NAMES = (
    "ADMIN_PASS",
    "NOVA_DBPASS",
    "NOVA_PASS",
    "PLACEMENT_DBPASS",
    "PLACEMENT_PASS",
    "GLANCE_DBPASS",
    "GLANCE_PASS",
    "KEYSTONE_DBPASS",
    "NEUTRON_DBPASS",
    "NEUTRON_PASS",
    "RABBIT_PASS",
    "METADATA_SECRET",
)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_HOST = re.compile(r"^[A-Za-z0-9.\-:\[\]]{1,253}$")


def valid_identifier(value: str, what: str) -> str:
    """A database or user name safe to put in SQL as an identifier; else ConfigError."""
    if not _IDENT.match(value):
        raise ConfigError(f"invalid {what} {value!r}: use letters, digits and _ (max 64)")
    return value


def valid_host(value: str, what: str) -> str:
    """A host name or IP address; else ConfigError."""
    if not _HOST.match(value):
        raise ConfigError(f"invalid {what} {value!r}: not a host name or IP address")
    return value


@dataclass
class Site:
    """Everything provisioning needs to know about one deployment.

    Defaults describe the all-in-one lab on 127.0.0.1; a real site file overrides them.
    """

    #: Host name used in endpoint URLs and connection strings (the guide's ``controller``).
    controller_host: str = "127.0.0.1"
    #: The management IP of this node (``[DEFAULT] my_ip``).
    my_ip: str = "127.0.0.1"
    region: str = "RegionOne"
    #: Admin URL of the database server (no password; ``DB_ROOT_PASS`` env if it needs one),
    #: e.g. ``mysql+pymysql://root@127.0.0.1``; ``None`` means the SQLite embedded default.
    database_url: str | None = None
    #: A database server for one service instead of ``database_url`` (service name ->
    #: admin URL, as ``database_url``): e.g. Neutron with ML2/OVN on MariaDB while the
    #: rest stays on SQLite (Neutron's OVN driver deadlocks on SQLite's one write lock).
    service_database_urls: dict[str, str] = field(default_factory=dict)
    #: Where SQLite databases live when ``database_url`` is ``None``.
    sqlite_dir: Path = field(default_factory=lambda: Path("/var/lib/nova"))
    rabbit_host: str = "127.0.0.1"
    rabbit_port: int = 5672
    rabbit_user: str = "openstack"
    keystone_url: str = "http://127.0.0.1:5000"
    memcached_servers: str = "127.0.0.1:11211"
    glance_url: str = "http://127.0.0.1:9292"
    placement_url: str = "http://127.0.0.1:8778"
    neutron_url: str | None = None
    nova_api_port: int = 8774
    novncproxy_port: int = 6080
    #: Nova's metadata API (``nova.wsgi.metadata``) on the controller, and ``[neutron]
    #: service_metadata_proxy`` with the ``METADATA_SECRET`` Neutron's metadata agent
    #: shares (the guide's "Configure the metadata agent" and nova.conf ``[neutron]``).
    metadata_api: bool = False
    metadata_port: int = 8775
    #: noVNC's web files for nova-novncproxy ``--web`` (Debian package ``novnc``).
    novnc_web: Path = field(default_factory=lambda: Path("/usr/share/novnc"))
    #: nova.conf to write, and where Nova keeps state and locks.
    nova_conf: Path = field(default_factory=lambda: Path("/etc/nova/nova.conf"))
    state_path: Path = field(default_factory=lambda: Path("/var/lib/nova"))
    lock_path: Path = field(default_factory=lambda: Path("/var/lib/nova/tmp"))
    #: Directory with nova-manage, nova-compute, ... (``None``: from ``PATH``).
    nova_bin_dir: Path | None = None
    #: Compute node settings.
    compute_host: str = field(default_factory=socket.gethostname)
    virt_type: str = "auto"  # auto | kvm | qemu
    compute_driver: str = "auto"  # auto | libvirt | fake
    #: ``[libvirt] cpu_mode`` / ``cpu_model_extra_flags`` ("" leaves Nova's default). The
    #: defaults boot on nested KVM whose default CPU model is rejected (ARCHITECTURE.md).
    libvirt_cpu_mode: str = "host-model"
    libvirt_cpu_model_extra_flags: str = "-arch-capabilities"
    #: Run our libvirtd with ``--listen``, so that it takes the TCP/TLS connections its
    #: libvirtd.conf enables (another compute node's libvirtd live-migrating a guest here).
    #: Since libvirt 5.6 libvirtd ignores ``listen_tcp``/``listen_tls`` without it.
    libvirtd_listen: bool = False
    #: ``[vnc] server_listen``; ``None``: my_ip on an all-in-one node, else 0.0.0.0 (guide).
    vnc_server_listen: str | None = None
    #: ``[vnc] novncproxy_base_url``; ``None``: http://CONTROLLER:PORT/vnc_auto.html.
    novncproxy_base_url: str | None = None
    #: Nova's serial console: ``[serial_console]`` on the compute node (enabled,
    #: port_range, base_url, proxyclient_address) and nova-serialproxy on the controller.
    #: Off by default, as in Nova and the install guide.
    serial_console: bool = False
    serialproxy_port: int = 6083
    #: ``[serial_console] port_range``: TCP ports guests' serial backends listen on.
    serial_port_range: str = "10000:20000"
    #: ``[serial_console] base_url``; ``None``: ws://CONTROLLER:SERIALPROXY_PORT/.
    serialproxy_base_url: str | None = None
    #: Seconds to wait for the compute host to register and be mapped to a cell.
    discover_timeout: int = 120
    #: Admin cloud (clouds.yaml name) for Keystone steps; ``None``: the ``OS_*`` environment.
    os_cloud: str | None = None
    #: Services besides Nova that provisioning sets up databases and identities for
    #: (the guide's own chapters for them; the lab uses keystone, glance, placement, neutron).
    extra_services: list[str] = field(default_factory=list)
    #: SQLite URLs name the ``novaconsole_sqlite_immediate`` SQLAlchemy plugin, so that
    #: transactions take the write lock up front (the lab installs the plugin into its
    #: venvs; a site must install ``novaconsole/lab/sqlite_plugin`` itself to use it).
    sqlite_begin_immediate: bool = False
    #: Where the service keeper keeps its state and one log file per service.
    services_dir: Path = field(default_factory=lambda: Path("/var/lib/novaconsole/services"))
    #: Who keeps the services running: ``systemd`` units, ``supervisord``, or ``auto``
    #: (systemd where it is PID 1, supervisord otherwise; a services_dir that already
    #: holds a supervisord setup keeps it).
    service_manager: str = "auto"
    #: Where systemd units are written, and the prefix of their names.
    systemd_unit_dir: Path = field(default_factory=lambda: Path("/etc/systemd/system"))
    systemd_unit_prefix: str = "novaconsole-"
    #: Directory with ``supervisord``/``supervisorctl`` (``None``: next to ``nova_bin_dir``).
    supervisor_bin_dir: Path | None = None
    #: The compute agent and its bus (``novaconsole --plugin compute-agent``): the
    #: controller sets up the vhost, users and console key; a compute node its agent.
    compute_agent: bool = False
    #: The console's side (keys, broker passwords, agents.toml), on the controller.
    bus_dir: Path = field(default_factory=lambda: Path("/etc/novaconsole/bus"))
    #: The agent's side (its key, config, command journal), on each compute node.
    agent_dir: Path = field(default_factory=lambda: Path("/etc/novaconsole/agent"))
    #: Hosts the controller makes broker users for (default: ``compute_host``).
    agent_hosts: list[str] = field(default_factory=list)
    #: The Python that has ``novaconsole[agent]`` installed (``None``: this one).
    agent_python: Path | None = None
    agent_heartbeat_interval: int = 10
    #: Extra nova.conf options by section; the guide's old names are accepted and translated.
    nova_options: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Secrets by guide placeholder name; filled from the environment, never from the file.
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    #: Where this site came from (for error messages).
    source: str = "<defaults>"

    def secret(self, name: str) -> str:
        """A secret by its placeholder name, or a ConfigError naming the variable to set."""
        value = self.secrets.get(name)
        if not value:
            raise ConfigError(
                f"secret {name} is not set (from {self.source})", hint=f"export {name}=..."
            )
        return value

    @property
    def uses_sqlite(self) -> bool:
        return self.database_url is None

    def database_url_for(self, service: str) -> str | None:
        """The database server ``service`` uses (``None``: SQLite)."""
        return self.service_database_urls.get(service, self.database_url)


_SCALARS: dict[str, type] = {
    "controller_host": str,
    "my_ip": str,
    "region": str,
    "database_url": str,
    "sqlite_dir": Path,
    "rabbit_host": str,
    "rabbit_port": int,
    "rabbit_user": str,
    "keystone_url": str,
    "memcached_servers": str,
    "glance_url": str,
    "placement_url": str,
    "neutron_url": str,
    "nova_api_port": int,
    "novncproxy_port": int,
    "metadata_api": bool,
    "metadata_port": int,
    "novnc_web": Path,
    "nova_conf": Path,
    "state_path": Path,
    "lock_path": Path,
    "nova_bin_dir": Path,
    "compute_host": str,
    "virt_type": str,
    "compute_driver": str,
    "libvirt_cpu_mode": str,
    "libvirt_cpu_model_extra_flags": str,
    "libvirtd_listen": bool,
    "vnc_server_listen": str,
    "novncproxy_base_url": str,
    "serial_console": bool,
    "serialproxy_port": int,
    "serial_port_range": str,
    "serialproxy_base_url": str,
    "discover_timeout": int,
    "os_cloud": str,
    "services_dir": Path,
    "service_manager": str,
    "systemd_unit_dir": Path,
    "systemd_unit_prefix": str,
    "supervisor_bin_dir": Path,
    "compute_agent": bool,
    "bus_dir": Path,
    "agent_dir": Path,
    "agent_python": Path,
    "agent_heartbeat_interval": int,
}

_KNOWN_EXTRA_SERVICES = ("keystone", "glance", "placement", "neutron")


def site_from_mapping(
    data: dict[str, Any], source: str, environ: dict[str, str] | None = None
) -> Site:
    """Build a Site from parsed TOML (flat keys plus an optional ``[nova_options.SECTION]``)."""
    site = Site(source=source)
    for key, value in data.items():
        if key == "nova_options":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ConfigError(
                    f"{source}: [nova_options] must hold one table per nova.conf section"
                )
            site.nova_options = {
                s: {str(k): str(v) for k, v in opts.items()} for s, opts in value.items()
            }
            continue
        if key == "service_database_urls":
            if not isinstance(value, dict) or any(
                k not in (*_KNOWN_EXTRA_SERVICES, "nova") or not isinstance(v, str)
                for k, v in value.items()
            ):
                raise ConfigError(
                    f"{source}: [service_database_urls] maps a service "
                    f"(nova, {', '.join(_KNOWN_EXTRA_SERVICES)}) to a database server URL"
                )
            site.service_database_urls = {str(k): str(v) for k, v in value.items()}
            continue
        if key == "agent_hosts":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{source}: agent_hosts must be a list of host names")
            site.agent_hosts = [valid_host(v, f"agent_hosts in {source}") for v in value]
            continue
        if key == "extra_services":
            if not isinstance(value, list) or any(v not in _KNOWN_EXTRA_SERVICES for v in value):
                raise ConfigError(
                    f"{source}: extra_services must be a list drawn from "
                    f"{list(_KNOWN_EXTRA_SERVICES)}"
                )
            site.extra_services = [str(v) for v in value]
            continue
        kind = _SCALARS.get(key)
        if kind is None:
            raise ConfigError(f"{source}: unknown setting {key!r}")
        if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"{source}: {key} must be an integer, not {value!r}")
        if kind is bool and not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, not {value!r}")
        if kind not in (int, bool) and not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, not {value!r}")
        setattr(site, key, kind(value))
    for key in ("controller_host", "my_ip", "rabbit_host"):
        valid_host(getattr(site, key), f"{key} in {source}")
    if site.virt_type not in ("auto", "kvm", "qemu"):
        raise ConfigError(f"{source}: virt_type must be auto, kvm or qemu, not {site.virt_type!r}")
    if not re.fullmatch(r"\d+:\d+", site.serial_port_range) or int(
        site.serial_port_range.split(":")[0]
    ) > int(site.serial_port_range.split(":")[1]):
        raise ConfigError(
            f"{source}: serial_port_range must be LOW:HIGH (e.g. 10000:20000), "
            f"not {site.serial_port_range!r}"
        )
    if site.compute_driver not in ("auto", "libvirt", "fake"):
        raise ConfigError(f"{source}: compute_driver must be auto, libvirt or fake")
    if site.service_manager not in SERVICE_MANAGERS:
        raise ConfigError(
            f"{source}: service_manager must be one of {', '.join(SERVICE_MANAGERS)}, "
            f"not {site.service_manager!r}"
        )
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", site.systemd_unit_prefix):
        raise ConfigError(
            f"{source}: systemd_unit_prefix {site.systemd_unit_prefix!r} is not a valid "
            "unit name prefix (lower-case letters, digits, - and _)"
        )
    env = os.environ if environ is None else environ
    site.secrets = {name: env[name] for name in SECRET_NAMES if env.get(name)}
    return site


def load_site(path: Path, environ: dict[str, str] | None = None) -> Site:
    """Read and validate a site file; every problem is one ConfigError naming the file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"site file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"site file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read site file {path}: {exc.strerror}") from exc
    return site_from_mapping(data, str(path), environ)
