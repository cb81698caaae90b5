"""``lab up``, ``lab status`` and ``lab down``: the all-in-one lab's life-cycle."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from novaconsole.errors import NovaconsoleError
from novaconsole.lab.config import RABBIT_USER, LabConfig, load_or_create_secrets
from novaconsole.lab.generic import http_health
from novaconsole.lab.guest import guest_status, guest_steps
from novaconsole.lab.nodes import (
    check_computes,
    destroy_domains,
    existing_nodes,
    node_names,
    nodes_steps,
    stop_node,
)
from novaconsole.lab.stack import gluster
from novaconsole.lab.stack import ovn as ovnlab
from novaconsole.lab.stack.finish import ComputeServicesUpStep, TestFlavorStep, TestImageStep
from novaconsole.lab.stack.glance import glance_steps
from novaconsole.lab.stack.host import (
    MARIADB_PACKAGES,
    NETWORKING_PACKAGES,
    DevKvmStep,
    InstancesDirStep,
    NoVNCStep,
    SystemPackagesStep,
    VenvsStep,
)
from novaconsole.lab.stack.keystone import keystone_steps
from novaconsole.lab.stack.mariadb import LocalMariaDBStep, StaleNeutronDatabaseStep, mariadb_marker
from novaconsole.lab.stack.memcached import memcached_steps
from novaconsole.lab.stack.neutron import LabNetworksStep, neutron_steps
from novaconsole.lab.stack.placement import placement_steps
from novaconsole.lab.stack.rabbit import RabbitStep
from novaconsole.lab.venvs import lab_venvs
from novaconsole.plugins import PluginManager
from novaconsole.services import (
    ServiceKeeper,
    Supervisor,
    SystemdUnits,
    choose_service_manager,
    describe_orphans,
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
    ovn = config.networking == "ovn"
    nova_options = {
        "DEFAULT": {
            "instances_path": str(config.instances_dir),
            # Nova's default 4.0 gives this 2-core machine 8 vCPUs: four small test
            # servers at once. The lab's guests idle at a shell, so allow 32.
            "cpu_allocation_ratio": "16.0",
        }
    }
    if ovn:
        # os-vif plugs guests' ports into br-int over this socket (its default is TCP 6640).
        nova_options["os_vif_ovs"] = {"ovsdb_connection": ovnlab.OVSDB_CONNECTION}
    neutron_db = config.neutron_db_url
    site = Site(
        controller_host=config.host,
        my_ip=config.host,
        region=config.region,
        database_url=config.db_url,
        service_database_urls=(
            {"neutron": neutron_db}
            if neutron_db is not None and neutron_db != config.db_url
            else {}
        ),
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
        metadata_api=ovn,
        metadata_port=config.ports["nova-metadata"],
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
        nova_options=nova_options,
        # The compute agent on the lab's compute node, and the console's end of its bus.
        compute_agent=True,
        bus_dir=config.state_dir / "bus",
        agent_dir=config.state_dir / "agent",
        agent_python=agent.python if (agent := venvs.get("agent")) else None,
        secrets=secrets,
        source=f"lab at {config.state_dir}",
    )
    # Broker users (and their passwords) for every node's agent, the extra nodes' too.
    site.agent_hosts = [site.compute_host, *node_names(config.computes)]
    return site


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
    ovn = config.networking == "ovn"
    local_db = ovn and config.db_url is None
    packages = {
        **(NETWORKING_PACKAGES if ovn else {}),
        **(MARIADB_PACKAGES if local_db else {}),
        **(gluster.GLUSTER_PACKAGES if gluster.wanted(config) else {}),
    }
    mariadb: list[Step[Any]] = [LocalMariaDBStep(config), StaleNeutronDatabaseStep(config)]
    ours: list[Step[Any]] = [
        SystemPackagesStep(packages),
        DevKvmStep(),
        VenvsStep(config),
        RabbitStep(config, site.secret("RABBIT_PASS")),
        *(mariadb if local_db else []),
        *memcached_steps(config, keeper),
        *(ovnlab.ovn_steps(config, keeper, site.compute_host) if ovn else []),
        NoVNCStep(config),
        InstancesDirStep(config),
        *gluster.gluster_steps(config, keeper),
        *keystone_steps(config, site, venvs["openstack"], keeper),
        *glance_steps(config, site, venvs["openstack"], keeper),
        *placement_steps(config, site, venvs["openstack"], keeper),
        *neutron_steps(config, site, venvs["neutron"], keeper),
        TestImageStep(),
        TestFlavorStep(),
        *([LabNetworksStep()] if ovn else []),
        *guest_steps(config),
        ComputeServicesUpStep(),
    ]
    theirs: list[Step[Any]] = []
    for role in ("controller", "compute"):
        for result in reversed(pm.hook.novaconsole_provision_steps(role=role, site=site)):
            theirs.extend(result)
    # The extra compute nodes join once the controller and this machine's node are up.
    steps = order_by_phase([*ours, *theirs, *nodes_steps(config, site)])
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
    "nova-metadata": "nova-metadata-api",
    "ovn-nb": "ovn-nb-db",
    "ovn-sb": "ovn-sb-db",
    "glusterd": "glusterd",
}


def preflight(config: LabConfig) -> None:
    """Refuse bad input before anything is written: ports, database login, broker.

    Raises a one-line ConfigError/ConnectionFailure (exit 2).
    """
    from novaconsole.errors import ConfigError, ConnectionFailure
    from novaconsole.services import port_owner

    keeper = keeper_for(config) if config.services_dir.exists() else None
    ours = keeper.status() if keeper else {}
    # What a killed supervisord left running holds our ports (lab up stops it first; a
    # dry run only says so): its programs' ports are not "taken by another process".
    orphaned = bool(keeper.orphans()) if isinstance(keeper, Supervisor) else False
    for key, port in config.ports.items():
        owner = PORT_OWNERS.get(key)
        if key == "glusterd" and not gluster.wanted(config):
            continue  # only a lab of several nodes runs glusterd
        if owner in ours and ours[owner].state in ("RUNNING", "STARTING"):
            continue  # our own services hold their ports
        if orphaned and owner is not None:
            continue
        if port_owner(config.host, port):
            raise ConfigError(
                f"port {port} on {config.host} ({key}) is already taken by another process",
                hint=f"free it or pick another: lab up --port {key}=PORT",
            )
    if config.db_url is not None:
        _check_db_login(config.db_url)
    elif config.neutron_db_url is not None and port_owner("127.0.0.1", 3306):
        _check_db_login(config.neutron_db_url)  # else lab up starts MariaDB itself
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


def stop_orphans(keeper: ServiceKeeper, *, dry_run: bool, log: Any) -> None:
    """Stop the lab's processes that outlived their killed supervisord (or, dry, say so)."""
    if not isinstance(keeper, Supervisor):
        return
    found = keeper.orphans() if dry_run else keeper.stop_orphans()
    if found:
        verb = "would stop" if dry_run else "stopped"
        log(f"  {verb} what a killed supervisord left running: {describe_orphans(found)}")


def lab_up(
    config: LabConfig, pm: PluginManager, *, dry_run: bool, reporter: Reporter, log: Any
) -> RunReport:
    """Stand the lab up (or converge a running one); READY marks a lab that passed."""
    if config.services_dir.exists():
        # Before the port checks: what a killed supervisord left running holds the ports.
        stop_orphans(keeper_for(config), dry_run=dry_run, log=log)
    preflight(config)
    check_computes(config.computes)
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
    bin_dir = lab_venvs(config.venvs_dir)["openstack"].bin
    for node in existing_nodes(config):
        for name, state in sorted(node.keeper(bin_dir).status().items()):
            rows.append(
                {
                    "service": f"{node.name}/{name}",
                    "state": state.state,
                    "pid": state.pid,
                    "port": None,
                    "health": "running" if state.state == "RUNNING" else state.state.lower(),
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
        "computes": 1 + len(existing_nodes(config)),
        "nodes": [
            {"name": node.name, "supervisor_pid": node.keeper(bin_dir).manager_pid()}
            for node in existing_nodes(config)
        ],
        "guest": guest_status(config, facts),
        "networking": networking_status(config, states),
        "instances_storage": gluster.storage_status(config),
        "services_kept_by": keeper.describe(),
        "supervisor_pid": keeper.manager_pid(),
        # Processes a killed supervisord left running (lab up and lab down stop them).
        "orphans": [
            {"program": o.program, "pid": o.pid}
            for o in (keeper.orphans() if isinstance(keeper, Supervisor) else [])
        ],
    }


def networking_status(config: LabConfig, states: dict[str, Any]) -> dict[str, Any]:
    """How the lab moves packets, and why (like the compute driver's row)."""
    if config.networking != "ovn":
        return {
            "mode": "none",
            "why": "--networking none: the Neutron API only; servers boot with --nic none",
        }
    running = {n: states[n].state == "RUNNING" for n in ovnlab.SERVICE_NAMES if n in states}
    return {
        "mode": "ovn",
        "datapath": "netdev (Open vSwitch userspace)",
        "why": "this kernel has no openvswitch module; the userspace datapath needs none"
        if not Path("/sys/module/openvswitch").exists()
        else "userspace datapath, as on hosts without the module",
        "provider": f"{ovnlab.PROVIDER_CIDR} on {ovnlab.PROVIDER_BRIDGE} "
        f"(host {ovnlab.PROVIDER_GATEWAY})",
        "neutron_database": "sqlite"
        if config.neutron_db_url is None
        else _redacted_db(config.neutron_db_url),
        "services_running": running,
    }


def _redacted_db(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.username or ''}@{parts.hostname}{':' + str(parts.port) if parts.port else ''}"


def _destroy_lab_domains() -> list[str]:
    """Stop the lab's guests (nova's ``instance-*`` domains) so none outlives the lab."""
    return destroy_domains("qemu:///system")


def lab_down(config: LabConfig) -> dict[str, Any]:
    """Stop every process the lab started, by pid, and check none is left."""
    keeper = keeper_for(config)
    bin_dir = lab_venvs(config.venvs_dir)["openstack"].bin
    stopped: list[str] = []
    domains: list[str] = []
    leftover: list[int] = []
    # The extra nodes first: their nova-computes talk to the controller until they stop.
    for node in existing_nodes(config):
        stopped += [f"{node.name}/{name}" for name in node.keeper(bin_dir).status()]
        node_domains, alive = stop_node(node, bin_dir)
        domains += node_domains
        leftover += alive
    states = keeper.status()
    domains += _destroy_lab_domains() if "libvirtd" in states else []
    shared_storage = gluster.unmount_shared_instances(config) if "glusterd" in states else False
    ovn = config.networking == "ovn"
    devices = ovnlab.datapath_devices() if ovn and "ovsdb-server" in states else []
    leftover += keeper.stop_all()
    namespaces: list[str] = []
    if ovn:
        ovnlab.stop_metadata_proxies(config.data_dir)
        time.sleep(0.5)  # haproxy leaves its namespace on SIGTERM
        namespaces = ovnlab.remove_namespaces()
        devices = ovnlab.remove_devices(devices)
    if mariadb_marker(config).exists():
        subprocess.run(
            ["start-stop-daemon", "--stop", "--oknodo", "--exec", "/usr/sbin/mariadbd"],
            capture_output=True,
            timeout=120,
            check=False,
        )
        mariadb_marker(config).unlink()
    if config.rabbit_marker.exists():
        # Only a broker this lab started itself; one that was already running stays.
        subprocess.run(["rabbitmqctl", "stop"], capture_output=True, timeout=120, check=False)
        config.rabbit_marker.unlink()
    config.ready_file.unlink(missing_ok=True)
    if leftover:
        raise NovaconsoleError(f"lab down: processes still alive after SIGKILL: {leftover}")
    return {
        "stopped": sorted(states) + stopped,
        "domains_destroyed": domains,
        "namespaces_removed": namespaces,
        "devices_removed": devices,
        "shared_storage_unmounted": shared_storage,
    }


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
