"""``lab up``, ``lab status`` and ``lab down``: the all-in-one lab's life-cycle."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from novaconsole.errors import NovaconsoleError
from novaconsole.lab import steps as lab
from novaconsole.lab.config import RABBIT_USER, LabConfig, load_or_create_secrets
from novaconsole.lab.generic import http_health
from novaconsole.lab.guest import guest_status, guest_steps
from novaconsole.lab.venvs import lab_venvs
from novaconsole.plugins import PluginManager
from novaconsole.services import (
    ServiceKeeper,
    Supervisor,
    SystemdUnits,
    choose_service_manager,
)
from novaconsole.site import Site
from novaconsole.steps import Reporter, RunContext, RunReport, Step, order_by_phase, run_steps

#: Health URL of each API service, by service name.
HEALTH_PATHS = {
    "keystone": ("keystone", "/v3"),
    "glance-api": ("glance", "/healthcheck"),
    "placement-api": ("placement", "/"),
    "neutron-api": ("neutron", "/"),
    "nova-api": ("nova-api", "/"),
    "nova-novncproxy": ("novncproxy", "/vnc_lite.html"),
    # websockify answers a plain GET with 405 without web files (below 500: it is up).
    "nova-serialproxy": ("serialproxy", "/"),
}


def lab_site(config: LabConfig, secrets: dict[str, str]) -> Site:
    """The Site the controller and compute plugins provision for the lab."""
    venvs = lab_venvs(config.venvs_dir)
    venv = venvs["openstack"]
    data = config.data_dir
    return Site(
        controller_host=config.host,
        my_ip=config.host,
        region=config.region,
        database_url=config.db_url,
        sqlite_dir=data / "db",
        sqlite_begin_immediate=True,
        rabbit_host=config.rabbit_host,
        rabbit_port=config.rabbit_port,
        rabbit_user=RABBIT_USER,
        keystone_url=config.url("keystone"),
        memcached_servers=f"{config.host}:{config.ports['memcached']}",
        glance_url=config.url("glance"),
        placement_url=config.url("placement"),
        neutron_url=config.url("neutron"),
        nova_api_port=config.ports["nova-api"],
        novncproxy_port=config.ports["novncproxy"],
        # The lab's guest has a shell on ttyS0: its serial console is the way in.
        serial_console=True,
        serialproxy_port=config.ports["serialproxy"],
        serial_port_range=LAB_SERIAL_PORT_RANGE,
        nova_conf=config.etc / "nova" / "nova.conf",
        state_path=data / "nova",
        lock_path=data / "nova" / "tmp",
        nova_bin_dir=venv.bin,
        os_cloud="novaconsole-lab",
        extra_services=["keystone", "glance", "placement", "neutron"],
        services_dir=config.services_dir,
        service_manager=config.service_manager,
        systemd_unit_prefix=LAB_UNIT_PREFIX,
        supervisor_bin_dir=venv.bin,
        nova_options={"DEFAULT": {"instances_path": str(config.instances_dir)}},
        # The compute agent on the lab's compute node, and the console's end of its bus.
        compute_agent=True,
        bus_dir=config.state_dir / "bus",
        agent_dir=config.state_dir / "agent",
        agent_python=agent.python if (agent := venvs.get("agent")) else None,
        secrets=secrets,
        source=f"lab at {config.state_dir}",
    )


#: TCP ports the guests' serial consoles listen on (127.0.0.1 only: proxyclient_address).
LAB_SERIAL_PORT_RANGE = "10000:10099"

#: The lab's systemd units are ``novaconsole-lab-SERVICE.service``.
LAB_UNIT_PREFIX = "novaconsole-lab-"


def keeper_for(config: LabConfig) -> ServiceKeeper:
    """The lab's service keeper; the same one :func:`lab_site` gives the plugins."""
    if choose_service_manager(config.service_manager, config.services_dir) == "systemd":
        return SystemdUnits(config.services_dir, prefix=LAB_UNIT_PREFIX)
    return Supervisor(config.services_dir, lab_venvs(config.venvs_dir)["openstack"].bin)


def lab_steps(config: LabConfig, pm: PluginManager, site: Site) -> list[Step[Any]]:
    """Every step of ``lab up``: the lab's own and the plugins', ordered by phase."""
    keeper = keeper_for(config)
    venvs = lab_venvs(config.venvs_dir)
    ours: list[Step[Any]] = [
        lab.SystemPackagesStep(),
        lab.VenvsStep(config),
        lab.RabbitStep(config, site.secret("RABBIT_PASS")),
        *lab.memcached_steps(config, keeper),
        lab.NoVNCStep(config),
        lab.InstancesDirStep(config),
        *lab.keystone_steps(config, site, venvs["openstack"], keeper),
        *lab.glance_steps(config, site, venvs["openstack"], keeper),
        *lab.placement_steps(config, site, venvs["openstack"], keeper),
        *lab.neutron_steps(config, site, venvs["neutron"], keeper),
        lab.TestImageStep(),
        lab.TestFlavorStep(),
        *guest_steps(config),
        lab.ComputeServicesUpStep(),
    ]
    theirs: list[Step[Any]] = []
    for role in ("controller", "compute"):
        for result in reversed(pm.hook.novaconsole_provision_steps(role=role, site=site)):
            theirs.extend(result)
    steps = order_by_phase([*ours, *theirs])
    for role in ("controller", "compute"):
        pm.hook.novaconsole_order_steps(role=role, steps=steps)
    return steps


#: Service that owns each lab port (a port held by it is ours, not "taken").
PORT_OWNERS = {
    "keystone": "keystone",
    "glance": "glance-api",
    "placement": "placement-api",
    "neutron": "neutron-api",
    "nova-api": "nova-api",
    "novncproxy": "nova-novncproxy",
    "serialproxy": "nova-serialproxy",
    "memcached": "memcached",
}


def preflight(config: LabConfig) -> None:
    """Refuse bad input before anything is written: ports, database login, broker.

    Raises a one-line ConfigError/ConnectionFailure (exit 2).
    """
    from novaconsole.errors import ConfigError, ConnectionFailure
    from novaconsole.services import port_owner

    ours = keeper_for(config).status() if config.services_dir.exists() else {}
    for key, port in config.ports.items():
        owner = PORT_OWNERS.get(key)
        if owner in ours and ours[owner].state == "RUNNING":
            continue  # our own services hold their ports
        if port_owner(config.host, port):
            raise ConfigError(
                f"port {port} on {config.host} ({key}) is already taken by another process",
                hint=f"free it or pick another: lab up --port {key}=PORT",
            )
    if config.db_url is not None:
        _check_db_login(config.db_url)
    where = f"{config.rabbit_host}:{config.rabbit_port}"
    local_default = config.rabbit_host in ("127.0.0.1", "localhost") and config.rabbit_port == 5672
    if not port_owner(config.rabbit_host, config.rabbit_port) and not (
        local_default and os.geteuid() == 0
    ):
        raise ConnectionFailure(
            f"RabbitMQ is unreachable at {where}",
            hint="start a broker there; lab up installs and starts one itself only as root on 127.0.0.1:5672",
        )


def _check_db_login(url: str) -> None:
    import pymysql

    from novaconsole.dburl import parse_server_url
    from novaconsole.errors import ConnectionFailure

    server = parse_server_url(url)
    try:
        pymysql.connect(
            host=server.host,
            port=server.port,
            user=server.user,
            password=server.password or "",
            connect_timeout=5,
        ).close()
    except pymysql.err.OperationalError as exc:
        code = exc.args[0] if exc.args else 0
        reason = "access denied (wrong user or password)" if code == 1045 else "cannot connect"
        raise ConnectionFailure(
            f"database server {server.where}: {reason} as {server.user!r}",
            hint="the admin password comes from DB_ROOT_PASS" if code == 1045 else None,
        ) from exc


def lab_up(
    config: LabConfig, pm: PluginManager, *, dry_run: bool, reporter: Reporter, log: Any
) -> RunReport:
    """Stand the lab up (or converge a running one); READY marks a lab that passed."""
    preflight(config)
    # Some machines set PYTHONDONTWRITEBYTECODE; then every nova-manage run and service
    # start would recompile nova from source (~4 s each). The lab's processes may cache
    # bytecode for the modules they actually import (cheaper than compiling whole venvs).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    if not dry_run:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(config.state_dir, 0o700)
        config.save()
    secrets = load_or_create_secrets(config.secrets_file, write=not dry_run)
    site = lab_site(config, secrets)
    ctx = RunContext(dry_run=dry_run, log=log)
    try:
        report = run_steps(lab_steps(config, pm, site), ctx, reporter)
    finally:
        for client in ctx.cache.values():
            close = getattr(client, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()
    if report.ok and not dry_run:
        config.ready_file.write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z\n"))
    elif not report.ok:
        config.ready_file.unlink(missing_ok=True)
    return report


def lab_status(config: LabConfig, pm: PluginManager) -> dict[str, Any]:
    """Each service with its pid, port and health; the compute driver and why."""
    keeper = keeper_for(config)
    states = keeper.status()
    rows = []
    for name, state in sorted(states.items()):
        port: int | None = None
        health = "running" if state.state == "RUNNING" else state.state.lower()
        if name in HEALTH_PATHS:
            key, path = HEALTH_PATHS[name]
            port = config.ports[key]
            if state.state == "RUNNING":
                problem = http_health(f"http://{config.host}:{port}{path}", timeout=3)
                health = "healthy" if problem is None else f"unhealthy: {problem}"
        elif name == "memcached":
            port = config.ports["memcached"]
        rows.append(
            {
                "service": name,
                "state": state.state,
                "pid": state.pid,
                "port": port,
                "health": health,
            }
        )
    facts: dict[str, str] = {}
    if config.secrets_file.exists():
        site = lab_site(config, load_or_create_secrets(config.secrets_file))
        for result in pm.hook.novaconsole_host_facts(site=site):
            facts.update(result)
    up = bool(rows) and all(r["health"] in ("healthy", "running") for r in rows)
    return {
        "state_dir": str(config.state_dir),
        "ready": config.ready_file.exists(),
        "up": up,
        "database": "sqlite" if config.db_url is None else _redacted_db(config.db_url),
        "services": rows,
        "compute": facts,
        "guest": guest_status(config, facts),
        "services_kept_by": keeper.describe(),
        "supervisor_pid": keeper.manager_pid(),
    }


def _redacted_db(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.username or ''}@{parts.hostname}{':' + str(parts.port) if parts.port else ''}"


def _destroy_lab_domains() -> list[str]:
    """Stop the lab's guests (nova's ``instance-*`` domains) so none outlives the lab."""
    if not shutil.which("virsh"):
        return []
    listing = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    names = [n for n in listing.stdout.split() if n.startswith("instance-")]
    for name in names:
        for cmd in (["destroy", name], ["undefine", "--nvram", name]):
            subprocess.run(
                ["virsh", "-c", "qemu:///system", *cmd],
                capture_output=True,
                timeout=30,
                check=False,
            )
    return names


def lab_down(config: LabConfig) -> dict[str, Any]:
    """Stop every process the lab started, by pid, and check none is left."""
    keeper = keeper_for(config)
    states = keeper.status()
    domains = _destroy_lab_domains() if "libvirtd" in states else []
    leftover = keeper.stop_all()
    if config.rabbit_marker.exists():
        # Only a broker this lab started itself; one that was already running stays.
        subprocess.run(["rabbitmqctl", "stop"], capture_output=True, timeout=120, check=False)
        config.rabbit_marker.unlink()
    config.ready_file.unlink(missing_ok=True)
    if leftover:
        raise NovaconsoleError(f"lab down: processes still alive after SIGKILL: {leftover}")
    return {"stopped": sorted(states), "domains_destroyed": domains}


def parse_port_overrides(values: list[str], config: LabConfig) -> None:
    """Apply ``NAME=PORT`` options to ``config.ports``."""
    for value in values:
        name, sep, port = value.partition("=")
        if not sep or name not in config.ports or not port.isdigit() or not 0 < int(port) < 65536:
            known = ", ".join(sorted(config.ports))
            raise NovaconsoleError(f"--port {value!r}: use NAME=PORT with NAME one of {known}")
        config.ports[name] = int(port)


def default_config(state_dir: str | None) -> LabConfig:
    from novaconsole.lab.venvs import default_state_dir

    return LabConfig.load(Path(state_dir) if state_dir else default_state_dir())
