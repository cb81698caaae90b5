"""Open vSwitch and OVN for the lab: the datapath and the controllers ML2/OVN needs.

Why this shape (facts from the machines the lab runs on):

- The kernel has no ``openvswitch`` module, so every bridge uses Open vSwitch's
  **userspace datapath** (``datapath_type=netdev``): ovs-vswitchd moves the packets
  itself, reading guests' tap devices through raw sockets. Slower than the kernel's
  datapath, but it needs no module and behaves the same to Neutron and Nova.
- OVN rather than the openvswitch agent: DHCP, metadata ports, security groups and
  routers are flows in OVN (no dnsmasq, no L3 agent, no namespaces per router); the only
  namespace is the metadata agent's one per network.
- One chassis, ``external_ids:hostname`` = Nova's ``[DEFAULT] host``, so Neutron binds
  the lab's ports to it; it is also the gateway chassis for routers
  (``enable-chassis-as-gw``), with the provider network ``public`` on ``br-ex``, whose
  host side holds :data:`PROVIDER_GATEWAY` so the machine reaches floating IPs.

Every process runs in the foreground under the lab's service keeper and logs to its log
file; the databases live in the lab's state directory. The sockets are the standard
ones (``/var/run/openvswitch/db.sock``): libvirt and os-vif look there.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from novaconsole.errors import StepFailed
from novaconsole.lab.config import LabConfig
from novaconsole.lab.generic import FileStep, ServicesStep, run_quiet
from novaconsole.services import ServiceKeeper, ServiceSpec
from novaconsole.steps import RunContext, Step

OVS_RUNDIR = Path("/var/run/openvswitch")
OVN_RUNDIR = Path("/var/run/ovn")
OVSDB_SOCK = OVS_RUNDIR / "db.sock"
OVSDB_CONNECTION = f"unix:{OVSDB_SOCK}"

#: The provider network Neutron calls ``public`` (flat, on br-ex) and the host's address
#: on it: routers' gateways and floating IPs come from this range.
PROVIDER_PHYSNET = "public"
PROVIDER_BRIDGE = "br-ex"
PROVIDER_CIDR = "172.24.4.0/24"
PROVIDER_GATEWAY = "172.24.4.1"
PROVIDER_POOL = ("172.24.4.10", "172.24.4.250")

#: Bridges ovn-controller and the provider mapping use, all on the userspace datapath.
BRIDGES = ("br-int", PROVIDER_BRIDGE)

#: The OVSDB schemas Debian's packages ship, by database file name.
SCHEMAS = {
    "conf.db": Path("/usr/share/openvswitch/vswitch.ovsschema"),
    "ovnnb.db": Path("/usr/share/ovn/ovn-nb.ovsschema"),
    "ovnsb.db": Path("/usr/share/ovn/ovn-sb.ovsschema"),
}

#: Services in start order (ovsdb-server before its clients).
SERVICE_NAMES = (
    "ovsdb-server",
    "ovs-vswitchd",
    "ovn-nb-db",
    "ovn-sb-db",
    "ovn-northd",
    "ovn-controller",
)

# Log to the console (the keeper's log file) at info, never to syslog or a file of its own.
_LOG = ("-vconsole:info", "-vsyslog:off", "-vfile:off")


def nb_connection(config: LabConfig) -> str:
    return f"tcp:{config.host}:{config.ports['ovn-nb']}"


def sb_connection(config: LabConfig) -> str:
    return f"tcp:{config.host}:{config.ports['ovn-sb']}"


def vswitchd_script(config: LabConfig) -> Path:
    return config.services_dir / "ovs-vswitchd.sh"


def render_vswitchd_script() -> str:
    """ovs-vswitchd, then the host's address on br-ex once vswitchd has made the device.

    A userspace bridge's own port is a tap device that lives as long as ovs-vswitchd, so
    its address must be set again on every start: the script does that, then waits.
    """
    return f"""\
#!/bin/sh
# Written by novaconsole lab: ovs-vswitchd in the foreground, and {PROVIDER_BRIDGE}'s address
# (the provider network's gateway, {PROVIDER_GATEWAY}) each time it starts.
/usr/sbin/ovs-vswitchd {OVSDB_CONNECTION} {" ".join(_LOG)} \\
    --pidfile={OVS_RUNDIR}/ovs-vswitchd.pid --unixctl={OVS_RUNDIR}/ovs-vswitchd.ctl &
child=$!
trap 'kill -TERM $child; wait $child; exit 0' TERM INT
i=0
while [ $i -lt 60 ] && ! ip link show {PROVIDER_BRIDGE} >/dev/null 2>&1; do
    sleep 0.5; i=$((i + 1))
done
ip addr replace {PROVIDER_GATEWAY}/{PROVIDER_CIDR.split("/")[1]} dev {PROVIDER_BRIDGE} \\
    && ip link set {PROVIDER_BRIDGE} up \\
    || echo "ovs-vswitchd.sh: could not give {PROVIDER_BRIDGE} {PROVIDER_GATEWAY}" >&2
wait $child
"""


def ovn_specs(config: LabConfig) -> list[ServiceSpec]:
    db = config.ovs_dir
    nb_port, sb_port = config.ports["ovn-nb"], config.ports["ovn-sb"]
    return [
        ServiceSpec(
            "ovsdb-server",
            (
                "/usr/sbin/ovsdb-server",
                str(db / "conf.db"),
                f"--remote=punix:{OVSDB_SOCK}",
                "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
                f"--pidfile={OVS_RUNDIR}/ovsdb-server.pid",
                f"--unixctl={OVS_RUNDIR}/ovsdb-server.ctl",
                *_LOG,
            ),
        ),
        ServiceSpec(
            "ovs-vswitchd",
            ("/bin/sh", str(vswitchd_script(config))),
            watch=(vswitchd_script(config),),
        ),
        ServiceSpec(
            "ovn-nb-db",
            (
                "/usr/sbin/ovsdb-server",
                str(db / "ovnnb.db"),
                f"--remote=punix:{OVN_RUNDIR}/ovnnb_db.sock",
                f"--remote=ptcp:{nb_port}:{config.host}",
                f"--pidfile={OVN_RUNDIR}/ovnnb_db.pid",
                f"--unixctl={OVN_RUNDIR}/ovnnb_db.ctl",
                *_LOG,
            ),
            port=nb_port,
        ),
        ServiceSpec(
            "ovn-sb-db",
            (
                "/usr/sbin/ovsdb-server",
                str(db / "ovnsb.db"),
                f"--remote=punix:{OVN_RUNDIR}/ovnsb_db.sock",
                f"--remote=ptcp:{sb_port}:{config.host}",
                f"--pidfile={OVN_RUNDIR}/ovnsb_db.pid",
                f"--unixctl={OVN_RUNDIR}/ovnsb_db.ctl",
                *_LOG,
            ),
            port=sb_port,
        ),
        ServiceSpec(
            "ovn-northd",
            (
                "/usr/bin/ovn-northd",
                f"--ovnnb-db=unix:{OVN_RUNDIR}/ovnnb_db.sock",
                f"--ovnsb-db=unix:{OVN_RUNDIR}/ovnsb_db.sock",
                f"--pidfile={OVN_RUNDIR}/ovn-northd.pid",
                f"--unixctl={OVN_RUNDIR}/ovn-northd.ctl",
                *_LOG,
            ),
        ),
        ServiceSpec(
            "ovn-controller",
            (
                "/usr/bin/ovn-controller",
                OVSDB_CONNECTION,
                f"--pidfile={OVN_RUNDIR}/ovn-controller.pid",
                *_LOG,
            ),
        ),
    ]


class OvsDatabasesStep(Step[list[str]]):
    """The three OVSDB files (Open vSwitch's, OVN's northbound and southbound)."""

    name = "lab.ovn.databases"
    phase = "prepare"

    def __init__(self, config: LabConfig) -> None:
        self.dir = config.ovs_dir
        self.description = f"Open vSwitch and OVN databases in {self.dir}"

    def check(self, ctx: RunContext) -> list[str]:
        return [name for name in SCHEMAS if not (self.dir / name).is_file()]

    def plan(self, ctx: RunContext, observed: list[str]) -> list[str]:
        return [f"ovsdb-tool create {self.dir / name}" for name in observed]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for directory in (OVS_RUNDIR, OVN_RUNDIR):
            directory.mkdir(parents=True, exist_ok=True)
        for name in self.check(ctx):
            schema = SCHEMAS[name]
            if not schema.is_file():
                raise StepFailed(
                    f"OVSDB schema {schema} is missing",
                    hint="install Debian's openvswitch-switch and ovn-central",
                )
            run_quiet(
                ["ovsdb-tool", "create", str(self.dir / name), str(schema)],
                what=f"ovsdb-tool create {name}",
            )


def _vsctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ovs-vsctl", f"--db={OVSDB_CONNECTION}", "--timeout=20", "--retry", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def chassis_ids(config: LabConfig, host: str) -> dict[str, str]:
    """``Open_vSwitch`` external_ids that make this node OVN chassis ``host``."""
    return {
        "system-id": host,
        "hostname": host,
        "ovn-remote": sb_connection(config),
        "ovn-encap-type": "geneve",
        "ovn-encap-ip": config.host,
        "ovn-bridge": "br-int",
        "ovn-bridge-datapath-type": "netdev",
        "ovn-bridge-mappings": f"{PROVIDER_PHYSNET}:{PROVIDER_BRIDGE}",
        "ovn-cms-options": "enable-chassis-as-gw",
    }


#: ``Open_vSwitch`` other_config. userspace-tso-enable makes the userspace datapath read
#: and write virtio-net headers on its kernel ports (veth, tap), so packets the kernel
#: leaves to checksum offload get their checksums: without it ping and DHCP work but
#: every TCP connection to a guest or the metadata namespace times out (seen here).
OTHER_CONFIG = {"userspace-tso-enable": "true"}


class ChassisStep(Step[dict[str, Any]]):
    """This node as an OVN chassis, with br-int and br-ex on the userspace datapath."""

    name = "lab.ovn.chassis"
    phase = "prepare"

    def __init__(self, config: LabConfig, host: str, keeper: ServiceKeeper) -> None:
        self.wanted = chassis_ids(config, host)
        self.keeper = keeper
        self.description = f"OVN chassis {host}: br-int, {PROVIDER_BRIDGE} (datapath netdev)"

    def check(self, ctx: RunContext) -> dict[str, Any]:
        if not OVSDB_SOCK.exists():  # not started yet (a dry run on a fresh host)
            return {"ids": dict.fromkeys(self.wanted, ""), "bridges": dict.fromkeys(BRIDGES, "")}
        ids: dict[str, str] = {}
        for key in self.wanted:
            proc = _vsctl("--if-exists", "get", "Open_vSwitch", ".", f"external_ids:{key}")
            if proc.returncode != 0:
                raise StepFailed(f"ovs-vsctl cannot reach {OVSDB_SOCK}: {proc.stderr.strip()}")
            ids[key] = proc.stdout.strip().strip('"')
        for key in OTHER_CONFIG:
            proc = _vsctl("--if-exists", "get", "Open_vSwitch", ".", f"other_config:{key}")
            ids[f"other_config:{key}"] = proc.stdout.strip().strip('"')
        bridges = {}
        for bridge in BRIDGES:
            proc = _vsctl("--if-exists", "get", "Bridge", bridge, "datapath_type")
            bridges[bridge] = proc.stdout.strip().strip('"') if proc.returncode == 0 else ""
        return {"ids": ids, "bridges": bridges}

    def plan(self, ctx: RunContext, observed: dict[str, Any]) -> list[str]:
        changes = [
            f"set external_ids:{k}={v}" for k, v in self.wanted.items() if observed["ids"][k] != v
        ]
        changes += [
            f"set other_config:{k}={v} (restarts ovs-vswitchd)"
            for k, v in OTHER_CONFIG.items()
            if observed["ids"].get(f"other_config:{k}") != v
        ]
        changes += [
            f"add bridge {b} (datapath netdev)"
            for b, kind in observed["bridges"].items()
            if kind != "netdev"
        ]
        return changes

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        pairs = [f"external_ids:{k}={v}" for k, v in self.wanted.items()]
        pairs += [f"other_config:{k}={v}" for k, v in OTHER_CONFIG.items()]
        restart = any("restarts ovs-vswitchd" in c for c in changes)
        steps = [
            ["--no-wait", "init"],
            ["set", "Open_vSwitch", ".", *pairs],
            ["--may-exist", "add-br", "br-int", "--", "set", "Bridge", "br-int",
             "datapath_type=netdev", "fail-mode=secure", "other-config:disable-in-band=true"],
            ["--may-exist", "add-br", PROVIDER_BRIDGE, "--", "set", "Bridge",
             PROVIDER_BRIDGE, "datapath_type=netdev"],
        ]  # fmt: skip
        for args in steps:
            proc = _vsctl(*args)
            if proc.returncode != 0:
                raise StepFailed(f"ovs-vsctl {' '.join(args[:2])}: {proc.stderr.strip()}")
        if restart:  # other_config:userspace-tso-enable is read at start only
            self.keeper.apply(restart=["ovs-vswitchd"])


def ovn_steps(config: LabConfig, keeper: ServiceKeeper, host: str) -> list[Step[Any]]:
    """Databases, the six processes, and the chassis, all before Neutron starts."""
    script = vswitchd_script(config)
    specs = ovn_specs(config)
    return [
        OvsDatabasesStep(config),
        FileStep(
            "lab.ovn.vswitchd-script", script, render_vswitchd_script, mode=0o755, phase="prepare"
        ),
        # ovn-controller exits while the chassis has no system-id: it starts last.
        ServicesStep("lab.ovn.services", keeper, specs[:-1], phase="prepare", start_timeout=60),
        ChassisStep(config, host, keeper),
        ServicesStep("lab.ovn.controller", keeper, specs[-1:], phase="prepare", start_timeout=60),
    ]


def datapath_devices() -> list[str]:
    """The bridges and every interface on them (guests' taps, the metadata veths), read
    while OVSDB still answers: userspace-datapath devices outlive ovs-vswitchd."""
    if not OVSDB_SOCK.exists():
        return [*BRIDGES, "ovs-netdev"]
    devices: list[str] = [*BRIDGES, "ovs-netdev"]
    for bridge in BRIDGES:
        proc = _vsctl("list-ifaces", bridge)
        if proc.returncode == 0:
            devices += proc.stdout.split()
    return [d for d in devices if not d.startswith("patch-")]


def remove_devices(devices: list[str]) -> list[str]:
    """Delete those of ``devices`` that still exist (after ovs-vswitchd has stopped)."""
    removed = []
    for name in devices:
        if Path("/sys/class/net", name).exists():
            proc = subprocess.run(
                ["ip", "link", "delete", name], capture_output=True, timeout=10, check=False
            )
            if proc.returncode == 0:
                removed.append(name)
    return removed


def stop_metadata_proxies(data_dir: Path) -> list[int]:
    """SIGTERM the haproxy processes Neutron's metadata agent started for this lab: they
    daemonise out of the keeper's reach and keep their namespaces alive."""
    import os
    import signal

    marker = str(data_dir / "neutron" / "ovn-metadata-proxy")
    stopped = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"haproxy") and any(marker.encode() in a for a in argv):
            try:
                os.kill(int(entry.name), signal.SIGTERM)
                stopped.append(int(entry.name))
            except ProcessLookupError:
                pass
    return stopped


def leftover_namespaces() -> list[str]:
    """Network namespaces Neutron's OVN metadata agent made (``ovnmeta-NETWORK``)."""
    proc = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False
    )
    return [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("ovnmeta-")]


def remove_namespaces() -> list[str]:
    """Delete the metadata agent's namespaces (their veth pairs go with them)."""
    names = leftover_namespaces()
    for name in names:
        subprocess.run(
            ["ip", "netns", "delete", name], capture_output=True, timeout=10, check=False
        )
    return names
