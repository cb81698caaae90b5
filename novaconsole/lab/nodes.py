"""The lab's extra compute nodes (``lab up --computes N``): more hosts on this one machine.

Node K (2, 3, ...) is host ``nc-computeK``: a UTS namespace gives it its own host name
(libvirt's ``getHostname()``, Nova's hypervisor and Placement names), a mount namespace its
own ``/run``, ``/etc/libvirt``, ``/var/lib/libvirt``, ``/var/log/libvirt`` and
``/var/cache/libvirt`` (directories under ``STATE/nodes/nc-computeK`` bound over them), so
it runs a libvirtd of its own. It keeps this machine's network namespace, so it reaches the
controller on 127.0.0.1, and its libvirtd takes live migrations on 127.0.0.K.

The lab prepares a node as an operator prepares a new host (its libvirt configuration, a
nova.conf with the controller's settings, a site file) and then runs ``novaconsole
provision compute`` *inside* the node: the compute plugin does the work it does on a real
second host (nova.conf's compute options, libvirtd, nova-compute, discover_hosts). The node's
services are kept by a supervisord of its own, started inside the node, so every service
it starts shares the node's namespaces; when the last of them ends, the namespaces go too.

Instances live in the lab's one instances directory, as on compute nodes with shared
storage, and every node's ``my_ip`` is 127.0.0.1: Nova's libvirt driver then treats the
instance path as shared (``_is_path_shared_with``: the destination's address is its own), so
cold migration moves disks locally instead of over ssh (there is no ssh between the nodes).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from novaconsole.cells import host_mapping
from novaconsole.errors import ConfigError, StepFailed
from novaconsole.lab.generic import FileStep, key_error_line
from novaconsole.redact import scrub_secrets
from novaconsole.services import Supervisor
from novaconsole.steps import RunContext, Step

if TYPE_CHECKING:
    from novaconsole.lab.config import LabConfig
    from novaconsole.site import Site

#: ``--computes`` allows 1 (only the machine's own node) up to this many nodes.
MAX_COMPUTES = 8
#: Node K's host name.
NODE_PREFIX = "nc-compute"
#: Where libvirt keeps what a node must have of its own, and the node directory holding it.
PRIVATE_DIRS = {
    "/run": "run",
    "/etc/libvirt": "etc-libvirt",
    "/var/lib/libvirt": "var-lib-libvirt",
    "/var/log/libvirt": "var-log-libvirt",
    "/var/cache/libvirt": "var-cache-libvirt",
}
#: Secrets the compute role reads on a node (nova.conf's shared options).
NODE_SECRETS = ("NOVA_PASS", "RABBIT_PASS", "PLACEMENT_PASS", "NEUTRON_PASS")
#: libvirtd's TCP port (qemu+tcp://ADDRESS/system), on the node's own 127.0.0.K.
LIBVIRT_TCP_PORT = 16509


def node_names(computes: int) -> list[str]:
    """The extra nodes' host names for ``computes`` compute nodes in all (node 1 is the machine)."""
    return [f"{NODE_PREFIX}{k}" for k in range(2, computes + 1)]


def check_computes(computes: int) -> int:
    """``computes`` if the lab can have that many compute nodes here, else ConfigError."""
    if not 1 <= computes <= MAX_COMPUTES:
        raise ConfigError(f"--computes {computes}: use 1 to {MAX_COMPUTES}")
    if computes > 1 and os.geteuid() != 0:
        raise ConfigError(
            f"--computes {computes}: extra compute nodes need root (mount and UTS namespaces)"
        )
    if computes > 1 and shutil.which("unshare") is None:
        raise ConfigError(f"--computes {computes}: unshare (util-linux) is not installed")
    return computes


@dataclass(frozen=True)
class NodeLayout:
    """Where one extra node's files are, and how it is reached."""

    name: str
    root: Path

    @classmethod
    def of(cls, config: LabConfig, name: str) -> NodeLayout:
        return cls(name, config.state_dir / "nodes" / name)

    @property
    def index(self) -> int:
        return int(self.name.removeprefix(NODE_PREFIX))

    @property
    def address(self) -> str:
        """The node's own loopback address (its libvirtd's migration listener)."""
        return f"127.0.0.{self.index}"

    def private(self, path: str) -> Path:
        """The node's own copy of a private directory (``/run`` → ``ROOT/run``)."""
        return self.root / PRIVATE_DIRS[path]

    @property
    def enter(self) -> Path:
        """The script that runs a command inside the node (new namespaces each call)."""
        return self.root / "enter"

    @property
    def nova_conf(self) -> Path:
        return self.root / "etc" / "nova" / "nova.conf"

    @property
    def state_path(self) -> Path:
        return self.root / "data" / "nova"

    @property
    def services_dir(self) -> Path:
        return self.root / "services"

    @property
    def agent_dir(self) -> Path:
        """The node's compute agent: its key pair, config and state."""
        return self.root / "agent"

    @property
    def site_file(self) -> Path:
        return self.root / "site.toml"

    @property
    def libvirt_uri(self) -> str:
        """The node's libvirtd from this machine (its socket, seen from outside the node)."""
        return f"qemu:///system?socket={self.private('/run')}/libvirt/libvirt-sock"

    def keeper(self, bin_dir: Path) -> Supervisor:
        """The node's own supervisord (the node's services and their states)."""
        return Supervisor(self.services_dir, bin_dir)


def existing_nodes(config: LabConfig) -> list[NodeLayout]:
    """The extra nodes this lab has now (their directories), in order."""
    base = config.state_dir / "nodes"
    if not base.is_dir():
        return []
    found = [
        NodeLayout(p.name, p)
        for p in base.iterdir()
        if p.name.startswith(NODE_PREFIX) and p.name.removeprefix(NODE_PREFIX).isdigit()
    ]
    return sorted(found, key=lambda n: n.index)


def host_uuid(config: LabConfig, name: str) -> str:
    """A stable libvirt host UUID per node: libvirt refuses to migrate to a host with its own."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"novaconsole-lab:{config.state_dir}:{name}"))


# -- the node's "operating system": namespaces and libvirt configuration ------------------


def enter_script(layout: NodeLayout) -> str:
    """``enter CMD...``: run CMD as the node (own host name and libvirt dirs, our network).

    ``unshare`` without ``--fork`` execs in place, so the command keeps the caller's pid
    (a keeper's pid is the service's). Mounts stay inside the new namespace (private
    propagation) and vanish with its last process.
    """
    mounts = "\n".join(
        f"mount --bind {shlex.quote(str(layout.private(target)))} {target}"
        for target in PRIVATE_DIRS
    )
    inner = f'set -e\nhostname {layout.name}\n{mounts}\nexec "$@"'
    return (
        "#!/bin/sh\n"
        f"# Written by novaconsole lab: run a command on compute node {layout.name}.\n"
        "set -e\n"
        f"exec {shutil.which('unshare') or 'unshare'} --mount --uts --propagation private "
        f'-- /bin/sh -c {shlex.quote(inner)} {layout.name} "$@"\n'
    )


def libvirtd_conf(config: LabConfig, layout: NodeLayout) -> str:
    """The node's libvirtd.conf: its own host UUID; qemu+tcp on its 127.0.0.K for migrations.

    ``auth_tcp = none``: any local user may reach this libvirtd over TCP, as anyone with
    access to a root libvirt socket may; it listens on loopback only. (A real cloud would
    use TLS or SASL between its compute nodes.)
    """
    return (
        "# written by novaconsole lab; rewritten on every `lab up`\n"
        f'host_uuid = "{host_uuid(config, layout.name)}"\n'
        "listen_tls = 0\n"
        "listen_tcp = 1\n"
        f'listen_addr = "{layout.address}"\n'
        f'tcp_port = "{LIBVIRT_TCP_PORT}"\n'
        'auth_tcp = "none"\n'
        'auth_unix_rw = "none"\n'
    )


def qemu_conf(layout: NodeLayout, host_conf: Path = Path("/etc/libvirt/qemu.conf")) -> str:
    """The machine's qemu.conf, with incoming migrations on the node's own address."""
    try:
        base = host_conf.read_text()
    except FileNotFoundError:
        base = ""
    return (
        base.rstrip("\n")
        + "\n\n# novaconsole lab: incoming live migrations on this node's own address\n"
        + f'migration_address = "{layout.address}"\n'
        + f'migration_host = "{layout.address}"\n'
    )


def copied(path: Path) -> Callable[[], str]:
    def render() -> str:
        try:
            return path.read_text()
        except FileNotFoundError:
            return ""

    return render


class NodeDirsStep(Step[list[str]]):
    """The node's directories: the private ones bound over the machine's, and its state."""

    phase = "discover"

    def __init__(self, layout: NodeLayout) -> None:
        self.layout = layout
        self.name = f"lab.node.{layout.name}.dirs"
        self.description = f"compute node {layout.name}: directories in {layout.root}"

    def _wanted(self) -> list[Path]:
        return [
            *(self.layout.private(t) for t in PRIVATE_DIRS),
            self.layout.private("/run") / "lock",
            self.layout.private("/var/lib/libvirt") / "qemu",
            self.layout.private("/var/log/libvirt") / "qemu",
            self.layout.private("/var/cache/libvirt") / "qemu",
            self.layout.state_path / "tmp",
        ]

    def check(self, ctx: RunContext) -> list[str]:
        return [str(p) for p in self._wanted() if not p.is_dir()]

    def plan(self, ctx: RunContext, observed: list[str]) -> list[str]:
        return [f"create {p}" for p in observed]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        self.layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path in self._wanted():
            path.mkdir(mode=0o755, parents=True, exist_ok=True)


class NodeLibvirtFileStep(FileStep):
    """A file of the node's /etc/libvirt; a change restarts the node's libvirtd if it runs."""

    def __init__(
        self, layout: NodeLayout, bin_dir: Path, file: str, render: Callable[[], str]
    ) -> None:
        super().__init__(
            f"lab.node.{layout.name}.{file}",
            layout.private("/etc/libvirt") / file,
            render,
            mode=0o644,
            phase="discover",
        )
        self.layout = layout
        self.bin_dir = bin_dir

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        super().apply(ctx, changes)
        keeper = self.layout.keeper(self.bin_dir)
        daemon = "virtlogd" if self.path.name == "virtlogd.conf" else "libvirtd"
        state = keeper.status().get(daemon)
        if state is not None and state.state == "RUNNING":
            keeper.ctl("restart", daemon)


def node_site_toml(site: Site, layout: NodeLayout, instances_path: Path) -> str:
    """The node's site file: the lab's compute settings with the node's names and paths."""
    values: dict[str, object] = {
        "controller_host": site.controller_host,
        "my_ip": site.my_ip,
        "region": site.region,
        "rabbit_host": site.rabbit_host,
        "rabbit_port": site.rabbit_port,
        "rabbit_user": site.rabbit_user,
        "keystone_url": site.keystone_url,
        "placement_url": site.placement_url,
        "glance_url": site.glance_url,
        "neutron_url": site.neutron_url or "",
        "memcached_servers": site.memcached_servers,
        "novncproxy_port": site.novncproxy_port,
        "serial_console": site.serial_console,
        "serialproxy_port": site.serialproxy_port,
        "serial_port_range": site.serial_port_range,
        "compute_host": layout.name,
        "virt_type": site.virt_type,
        "compute_driver": site.compute_driver,
        "libvirt_cpu_mode": site.libvirt_cpu_mode,
        "libvirt_cpu_model_extra_flags": site.libvirt_cpu_model_extra_flags,
        # its libvirtd.conf's qemu+tcp listener, for guests live-migrating to this node
        "libvirtd_listen": True,
        "nova_conf": str(layout.nova_conf),
        "state_path": str(layout.state_path),
        "lock_path": str(layout.state_path / "tmp"),
        "nova_bin_dir": str(site.nova_bin_dir or ""),
        "os_cloud": site.os_cloud or "",
        "services_dir": str(layout.services_dir),
        # systemd would start the node's units outside the node's namespaces: the node's
        # own supervisord, started inside the node, keeps them there under either keeper.
        "service_manager": "supervisord",
        "supervisor_bin_dir": str(site.supervisor_bin_dir or site.nova_bin_dir or ""),
        "discover_timeout": site.discover_timeout,
        # The compute agent on this node too: its own key, broker user and service under
        # the node's keeper, on the node's libvirtd. The controller's bus directory is
        # readable from the node (the lab shares one file system), so the enrolment that
        # an operator does by copying files between hosts is done by the same steps.
        "compute_agent": site.compute_agent,
        "bus_dir": str(site.bus_dir),
        "agent_dir": str(layout.agent_dir),
        "agent_python": str(site.agent_python or ""),
        "agent_heartbeat_interval": site.agent_heartbeat_interval,
    }
    lines = [f"# written by novaconsole lab: compute node {layout.name}"]
    for key, value in values.items():
        if value == "":
            continue
        lines.append(f"{key} = {json.dumps(value)}")
    # Shared instance storage (see the module docstring); the source's libvirtd connects
    # to qemu+tcp://ADDRESS/system and QEMU streams the guest to ADDRESS.
    lines += [
        "",
        "[nova_options.DEFAULT]",
        f"instances_path = {json.dumps(str(instances_path))}",
        "",
        "[nova_options.libvirt]",
        f"live_migration_inbound_addr = {json.dumps(layout.address)}",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class NodeProvisionObserved:
    """What ``provision compute --dry-run`` inside the node plans."""

    changes: list[str]


class NodeProvisionStep(Step[NodeProvisionObserved]):
    """``novaconsole provision compute`` run inside the node, as on a real second host."""

    phase = "discover"

    def __init__(self, layout: NodeLayout, site: Site) -> None:
        self.layout = layout
        self.site = site
        self.name = f"lab.node.{layout.name}.provision"
        self.description = (
            f"compute node {layout.name}: novaconsole provision compute inside the node"
        )
        self.timeout = float(site.discover_timeout) + 300

    def argv(self, *, dry_run: bool) -> list[str]:
        return [
            str(self.layout.enter),
            sys.executable,
            "-m",
            "novaconsole",
            "provision",
            "compute",
            "--site",
            str(self.layout.site_file),
            "-f",
            "json",
            *(["--dry-run"] if dry_run else []),
        ]

    def _run(self, *, dry_run: bool) -> tuple[dict[str, Any] | None, str]:
        # What an operator exports on a new compute node: the passwords its nova.conf
        # needs (the guide's placeholders); never on the command line.
        env = {k: v for k, v in os.environ.items() if k not in self.site.secrets}
        env.update({k: v for k, v in self.site.secrets.items() if k in NODE_SECRETS})
        try:
            proc = subprocess.run(
                self.argv(dry_run=dry_run),
                capture_output=True,
                text=True,
                timeout=self.timeout,
                env=env,
                check=False,
                cwd=self.layout.root,
            )
        except subprocess.TimeoutExpired:
            raise StepFailed(
                f"provisioning compute node {self.layout.name} did not finish in "
                f"{self.timeout:.0f} s"
            ) from None
        secrets = list(self.site.secrets.values())
        log = scrub_secrets(proc.stderr, secrets)
        try:
            report = json.loads(proc.stdout)
        except ValueError:
            report = None
        if not isinstance(report, dict):
            raise StepFailed(
                f"novaconsole provision compute on node {self.layout.name} exited "
                f"{proc.returncode}: {key_error_line(log)[:300]}"
            )
        return report, log

    def check(self, ctx: RunContext) -> NodeProvisionObserved:
        if ctx.dry_run and not self.layout.site_file.exists():
            return NodeProvisionObserved(["provision compute on the new node"])
        report, _log = self._run(dry_run=True)
        assert report is not None
        failed = [s for s in report["steps"] if s["status"] == "failed"]
        if failed:
            raise StepFailed(f"node {self.layout.name}: {failed[0]['name']}: {failed[0]['error']}")
        return NodeProvisionObserved(
            [f"{s['name']}: {c}" for s in report["steps"] for c in s["changes"]]
        )

    def plan(self, ctx: RunContext, observed: NodeProvisionObserved) -> list[str]:
        return observed.changes

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        report, log = self._run(dry_run=False)
        assert report is not None
        for line in log.splitlines():
            if line.strip():
                ctx.log(f"  {self.layout.name}: {line.rstrip()}")
        failed = [s for s in report["steps"] if s["status"] == "failed"]
        if failed:
            raise StepFailed(
                f"node {self.layout.name}: {failed[0]['name']}: {failed[0]['error']}",
                hint=f"see the node's logs in {self.layout.services_dir / 'logs'}",
            )


class NodeMappedStep(Step[str | None]):
    """The controller's part: the node's compute host mapped to a cell (discover_hosts)."""

    phase = "discover"
    timeout = 120.0

    def __init__(self, layout: NodeLayout, site: Site) -> None:
        self.layout = layout
        self.site = site
        self.name = f"lab.node.{layout.name}.mapped"
        self.description = f"compute node {layout.name} mapped to a cell (on the controller)"

    def _mapping(self) -> str | None:
        from novaconsole.dburl import connection_url

        return host_mapping(connection_url(self.site, "nova", "nova_api"), self.layout.name)

    def check(self, ctx: RunContext) -> str | None:
        return None if ctx.dry_run and not self.site.nova_conf.exists() else self._mapping()

    def plan(self, ctx: RunContext, observed: str | None) -> list[str]:
        if observed is not None:
            return []
        return [f"nova-manage cell_v2 discover_hosts (maps {self.layout.name})"]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        nova_manage = (self.site.nova_bin_dir or Path("/usr/bin")) / "nova-manage"
        argv = [str(nova_manage), "--config-file", str(self.site.nova_conf)]
        argv += ["cell_v2", "discover_hosts", "--verbose"]
        deadline = time.monotonic() + self.timeout
        while True:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
            # 2: a concurrent run mapped the same host first.
            if proc.returncode not in (0, 2):
                text = scrub_secrets(proc.stdout + proc.stderr, list(self.site.secrets.values()))
                raise StepFailed(
                    f"nova-manage cell_v2 discover_hosts failed (exit {proc.returncode}): "
                    f"{key_error_line(text)[:300]}"
                )
            cell = self._mapping()
            if cell is not None:
                ctx.log(f"  compute host {self.layout.name} is mapped to cell {cell}")
                return
            if time.monotonic() > deadline:
                raise StepFailed(
                    f"compute host {self.layout.name} is not mapped to a cell after "
                    f"{self.timeout:.0f} s of discover_hosts (has its nova-compute created "
                    "its compute node?)",
                    hint=f"see {self.layout.services_dir / 'logs' / 'nova-compute.log'}",
                )
            time.sleep(3)


def keeper_bin_dir(site: Site) -> Path:
    """Where the nodes' supervisord comes from (the lab's OpenStack venv)."""
    return site.supervisor_bin_dir or site.nova_bin_dir or Path(sys.executable).parent


def nodes_steps(config: LabConfig, site: Site) -> list[Step[Any]]:
    """The steps for ``config.computes`` nodes: each wanted node's, then each removal."""
    wanted = node_names(config.computes)
    steps: list[Step[Any]] = []
    for name in wanted:
        steps += node_steps(config, site, NodeLayout.of(config, name))
    for layout in existing_nodes(config):
        if layout.name not in wanted:
            steps.append(NodeRemovalStep(layout, keeper_bin_dir(site), site.bus_dir))
    return steps


def node_steps(config: LabConfig, site: Site, layout: NodeLayout) -> list[Step[Any]]:
    """Everything one extra node needs, in order (all in phase ``discover``)."""
    bin_dir = keeper_bin_dir(site)
    return [
        NodeDirsStep(layout),
        FileStep(
            f"lab.node.{layout.name}.enter",
            layout.enter,
            lambda: enter_script(layout),
            mode=0o755,
            phase="discover",
        ),
        NodeLibvirtFileStep(
            layout, bin_dir, "libvirtd.conf", lambda: libvirtd_conf(config, layout)
        ),
        NodeLibvirtFileStep(layout, bin_dir, "qemu.conf", lambda: qemu_conf(layout)),
        NodeLibvirtFileStep(
            layout, bin_dir, "virtlogd.conf", copied(Path("/etc/libvirt/virtlogd.conf"))
        ),
        FileStep(
            f"lab.node.{layout.name}.site",
            layout.site_file,
            lambda: node_site_toml(site, layout, config.instances_dir),
            mode=0o600,
            phase="discover",
        ),
        NodeProvisionStep(layout, site),
        NodeMappedStep(layout, site),
    ]


def lab_cloud(ctx: RunContext) -> Any:
    """The run's admin connection to the lab (shared with the lab's other steps)."""
    conn = ctx.cache.get("lab-cloud")
    if conn is None:
        from novaconsole.cloud import LAB_CLOUD, connect

        conn = connect(LAB_CLOUD, timeout=60)
        ctx.cache["lab-cloud"] = conn
    return conn


# -- removing a node ----------------------------------------------------------------------


def domain_names(uri: str) -> list[str]:
    """Nova's ``instance-*`` domains defined at ``uri`` (running or not)."""
    if not shutil.which("virsh"):
        return []
    listing = subprocess.run(
        ["virsh", "-c", uri, "list", "--all", "--name"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return [n for n in listing.stdout.split() if n.startswith("instance-")]


def destroy_domains(uri: str) -> list[str]:
    """Destroy and undefine Nova's ``instance-*`` domains at ``uri``; return their names."""
    names = domain_names(uri)
    for name in names:
        for cmd in (["destroy", name], ["undefine", "--nvram", name]):
            subprocess.run(["virsh", "-c", uri, *cmd], capture_output=True, timeout=30, check=False)
    return names


def stop_node(layout: NodeLayout, bin_dir: Path) -> tuple[list[str], list[int]]:
    """Stop a node: its guests, then its services. Returns (domains destroyed, pids alive)."""
    keeper = layout.keeper(bin_dir)
    states = keeper.status()
    domains = destroy_domains(layout.libvirt_uri) if "libvirtd" in states else []
    return domains, keeper.stop_all()


@dataclass
class RemovalObserved:
    node: str
    directory: bool
    services: list[str]  #: ids of the node's Nova service records
    servers: list[str]  #: servers Nova still places on the node


class NodeRemovalStep(Step[RemovalObserved]):
    """A node beyond ``--computes``: stopped, its Nova service deleted, its directory gone.

    What an operator does to retire a compute host (``openstack compute service delete``,
    which also removes its compute node, host mapping and resource provider); refused
    while Nova still has servers on the node.
    """

    phase = "discover"

    def __init__(self, layout: NodeLayout, bin_dir: Path, bus_dir: Path) -> None:
        self.layout = layout
        self.bin_dir = bin_dir
        #: The node agent's enrolled key and broker password on the controller's side.
        self.agent_files = (
            bus_dir / "agent-keys" / f"{layout.name}.pub",
            bus_dir / "agents" / f"{layout.name}.password",
        )
        self.name = f"lab.node.{layout.name}.remove"
        self.description = f"compute node {layout.name} removed (beyond --computes)"

    def check(self, ctx: RunContext) -> RemovalObserved:
        conn = lab_cloud(ctx)
        services = [
            str(s.id)
            for s in conn.compute.services(binary="nova-compute", host=self.layout.name)
            if s.host == self.layout.name
        ]
        servers = [
            f"{s.name} ({s.id})"
            for s in conn.compute.servers(all_projects=True, host=self.layout.name)
        ]
        return RemovalObserved(self.layout.name, self.layout.root.exists(), services, servers)

    def plan(self, ctx: RunContext, observed: RemovalObserved) -> list[str]:
        plan = []
        if observed.directory:
            plan.append(f"stop compute node {observed.node} and remove {self.layout.root}")
        plan += [f"delete compute service {sid} of {observed.node}" for sid in observed.services]
        if self.agent_files[0].exists():
            from novaconsole.agentbus.bus import agent_user

            plan.append(
                f"un-enrol {observed.node}'s agent: remove its key from the console's "
                f"trusted keys and its broker user {agent_user(observed.node)}"
            )
        return plan

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        observed = self.check(ctx)
        if observed.servers:
            raise StepFailed(
                f"compute node {observed.node} still hosts {len(observed.servers)} server(s): "
                f"{', '.join(observed.servers[:3])}",
                hint=f"migrate or delete them first (openstack server list --all-projects "
                f"--host {observed.node}), or keep --computes {self.layout.index}",
            )
        if observed.directory:
            domains, alive = stop_node(self.layout, self.bin_dir)
            if domains:
                ctx.log(f"  {observed.node}: destroyed domains {', '.join(domains)}")
            if alive:
                raise StepFailed(f"compute node {observed.node}: pids still alive: {alive}")
        conn = lab_cloud(ctx)
        for sid in observed.services:
            conn.compute.delete_service(sid)
        if observed.directory:
            shutil.rmtree(self.layout.root)
        self.unenrol_agent()

    def unenrol_agent(self) -> None:
        """The console trusts the retired node's key no more; its broker user goes too."""
        from novaconsole.agentbus.bus import agent_user

        for path in self.agent_files:
            path.unlink(missing_ok=True)
        if shutil.which("rabbitmqctl"):
            proc = subprocess.run(
                ["rabbitmqctl", "-q", "delete_user", agent_user(self.layout.name)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if proc.returncode != 0 and "no_such_user" not in proc.stdout + proc.stderr:
                raise StepFailed(
                    f"rabbitmqctl delete_user {agent_user(self.layout.name)}: "
                    f"{' '.join((proc.stdout + proc.stderr).split())[:200]}"
                )
