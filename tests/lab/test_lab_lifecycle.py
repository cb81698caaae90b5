"""Tearing labs down (runs last): no process survives; MariaDB under systemd end to end."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymysql
import pytest
from labtools import SESSION_START, run_novaconsole
from systemd_machine import SystemdMachine, can_boot

from novaconsole.lab.config import LabConfig

pytestmark = [pytest.mark.lab, pytest.mark.lab_lifecycle]

LAB_DATABASES = ("nova_api", "nova", "nova_cell0", "keystone", "glance", "placement", "neutron")


def lab_pids(state_dir: Path) -> list[int]:
    proc = run_novaconsole("lab", "status", "-f", "json", "--state-dir", str(state_dir))
    data = json.loads(proc.stdout)
    pids = [row["pid"] for row in data["services"] if row["pid"]]
    if data["supervisor_pid"]:
        pids.append(data["supervisor_pid"])
    pids += [node["supervisor_pid"] for node in data.get("nodes", []) if node["supervisor_pid"]]
    return pids


def namespaces(pids: list[int]) -> set[str]:
    """The mount and UTS namespaces of ``pids`` that are not this test's own."""
    ours = {os.readlink(f"/proc/self/ns/{kind}") for kind in ("mnt", "uts")}
    found = set()
    for pid in pids:
        for kind in ("mnt", "uts"):
            with contextlib.suppress(OSError):
                found.add(os.readlink(f"/proc/{pid}/ns/{kind}"))
    return found - ours


def processes_in(spaces: set[str]) -> list[int]:
    """Every process still in one of ``spaces`` (a namespace lives while one does)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            for kind in ("mnt", "uts"):
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "ns" / kind) in spaces:
                        found.append(int(entry.name))
                        break
    return found


def qemu_pids() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmd and b"instance-" in cmd:
                found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an exited process PID 1 has not reaped yet is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[-1][:1] != "Z"


def assert_down(state_dir: Path, pids: list[int]) -> None:
    proc = run_novaconsole("lab", "down", "--state-dir", str(state_dir))
    assert proc.returncode == 0, proc.stderr
    alive = [pid for pid in pids if running(pid)]
    assert alive == []
    assert qemu_pids() == []
    status = run_novaconsole("lab", "status", "-f", "json", "--state-dir", str(state_dir))
    assert status.returncode == 1
    assert json.loads(status.stdout)["services"] == []
    # Networking leaves nothing behind: no metadata namespace, no bridge or tap device of
    # the userspace datapath (its devices live only as long as ovs-vswitchd).
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    assert [n for n in namespaces.stdout.split() if n.startswith("ovnmeta-")] == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    leftover = [
        name
        for name in re.findall(r"^\d+: ([^:@]+)", links, flags=re.M)
        if name in ("br-int", "br-ex", "ovs-netdev") or name.startswith("tap")
    ]
    assert leftover == []


def locked_lines(log_dir: Path, since: str) -> list[str]:
    """oslo.log lines saying "database is locked", stamped at or after ``since``."""
    found = []
    for log in sorted(log_dir.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if "database is locked" in line and line[:19] >= since and line[:2] == "20":
                found.append(f"{log.name}: {line[:200]}")
    return found


def test_lab_up_after_supervisord_alone_was_killed_stops_what_it_left(
    lab_state: LabConfig,
) -> None:
    # supervisord killed alone (by hand, by the OOM killer): its programs live on, holding
    # their ports, and no keeper answers for them. lab up stops them and starts them anew.
    status = json.loads(
        run_novaconsole(
            "lab", "status", "-f", "json", "--state-dir", str(lab_state.state_dir)
        ).stdout
    )
    daemon = status["supervisor_pid"]
    assert daemon
    # The machine's own programs (an extra node's keeper is another supervisord).
    programs = {
        row["service"]: row["pid"]
        for row in status["services"]
        if row["pid"] and "/" not in row["service"]
    }
    assert len(programs) >= 12
    os.kill(daemon, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while running(daemon) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(daemon)
    left = [pid for pid in programs.values() if running(pid)]
    assert len(left) == len(programs), "the programs die with supervisord: nothing to test"
    # lab status says so, naming them.
    seen = json.loads(
        run_novaconsole(
            "lab", "status", "-f", "json", "--state-dir", str(lab_state.state_dir)
        ).stdout
    )
    assert seen["supervisor_pid"] is None
    assert set(programs) <= {o["program"] for o in seen["orphans"]}
    up = run_novaconsole("lab", "up", "--state-dir", str(lab_state.state_dir), timeout=900)
    assert up.returncode == 0, up.stderr[-3000:]
    assert "stopped what a killed supervisord left running: " in up.stderr
    assert [pid for pid in left if running(pid)] == []
    after = json.loads(
        run_novaconsole(
            "lab", "status", "-f", "json", "--state-dir", str(lab_state.state_dir)
        ).stdout
    )
    assert after["supervisor_pid"] not in (None, daemon)
    states = {row["service"]: row for row in after["services"]}
    assert {name for name in programs if states[name]["state"] != "RUNNING"} == set()
    assert {name for name in programs if states[name]["pid"] == programs[name]} == set()


def test_lab_up_brings_back_a_lab_whose_processes_were_all_killed(lab_state: LabConfig) -> None:
    # What a machine's lab looks like after a reboot, or after the session that started it
    # ended: every file in place, no process. The restarted keeper starts every program at
    # once, so lab up's steps meet services still STARTING that already hold their ports.
    pids = lab_pids(lab_state.state_dir)
    assert len(pids) >= 12
    # supervisord puts each program in a process group of its own: kill the whole group,
    # or a wrapper's child (ovs-vswitchd under its shell script) lives on.
    groups = set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(pid))
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in pids if running(pid)] == []
    # What runs outside the keeper dies too: the GlusterFS brick and its FUSE client (whose
    # mount then answers ENOTCONN), privsep helpers. Each names the lab's state directory.
    found = subprocess.run(
        ["pgrep", "-f", str(lab_state.state_dir)], capture_output=True, text=True
    ).stdout.split()
    for pid in map(int, found):
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    up = run_novaconsole("lab", "up", "-q", "--state-dir", str(lab_state.state_dir), timeout=900)
    assert up.returncode == 0, up.stderr[-3000:]
    status = run_novaconsole("lab", "status", "--state-dir", str(lab_state.state_dir))
    assert status.returncode == 0, status.stdout + status.stderr


def test_lab_down_stops_every_process_it_started(lab_state: LabConfig) -> None:
    # Everything this session did on the SQLite lab (guests booted, consoles opened, services
    # reporting) went without a single SQLite lock failure (see test_sqlite_immediate.py).
    assert locked_lines(lab_state.log_dir, SESSION_START) == []
    pids = lab_pids(lab_state.state_dir)
    assert len(pids) >= 12
    # The extra compute nodes' namespaces (test_nodes_lab.py leaves the lab at 2 nodes).
    node_spaces = namespaces(pids)
    if LabConfig.load(lab_state.state_dir).computes > 1:
        assert node_spaces, "a lab with extra compute nodes shows no namespaces of theirs"
    assert_down(lab_state.state_dir, pids)
    assert processes_in(node_spaces) == []
    assert not lab_state.ready_file.exists()


def _drop_lab_databases() -> None:
    conn = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    with conn.cursor() as cur:
        for db in LAB_DATABASES:
            cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
    conn.close()


@pytest.mark.mariadb
@pytest.mark.systemd
@pytest.mark.skipif(can_boot() is not None, reason=str(can_boot()))
def test_mariadb_lab_under_systemd_up_verify_rerun_crash_down(
    tmp_path: Path, openstack_cli: Path
) -> None:
    """The guide's MariaDB path, with every service a systemd unit (a real systemd as PID 1).

    The lab runs inside a throw-away systemd machine (tests/systemd_machine.py) that shares
    this machine's network, MariaDB and RabbitMQ; its state directory is shared for reading.
    """
    state = tmp_path / "mariadb-lab"
    state.mkdir()
    novaconsole = [sys.executable, "-m", "novaconsole"]
    _drop_lab_databases()
    try:
        with SystemdMachine(tmp_path) as machine:

            def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
                return machine.run(*novaconsole, *args, timeout=timeout)

            up = run(
                "lab", "up", "-q", "--db", "mysql+pymysql://root@127.0.0.1",
                # The API-only Neutron: this test is about MariaDB and systemd units
                # (the SQLite lab's tests cover networking), and it keeps CI shorter.
                "--networking", "none",
                "--state-dir", str(state),
            )  # fmt: skip
            assert up.returncode == 0, up.stderr[-3000:]
            conn = pymysql.connect(host="127.0.0.1", user="root", password="")
            with conn.cursor() as cur:
                cur.execute("SHOW DATABASES")
                databases = {row[0] for row in cur.fetchall()}
                cur.execute("SELECT Host FROM mysql.user WHERE User = 'nova'")
                nova_hosts = {row[0] for row in cur.fetchall()}
                cur.execute("SELECT COUNT(*) FROM nova_api.cell_mappings")
                (cells,) = cur.fetchone()
            conn.close()
            assert set(LAB_DATABASES) <= databases
            assert nova_hosts >= {"localhost", "%"}
            assert cells == 2  # cell0 and cell1

            # Every service is a running, enabled unit of the machine's systemd.
            status = json.loads(
                run("lab", "status", "-f", "json", "--state-dir", str(state)).stdout
            )
            assert status["services_kept_by"].startswith("systemd units novaconsole-lab-*")
            assert status["supervisor_pid"] is None
            names = {row["service"] for row in status["services"]}
            assert {"keystone", "nova-api", "nova-conductor", "nova-compute", "libvirtd"} <= names
            for name in names:
                unit = f"novaconsole-lab-{name}.service"
                assert machine.run("systemctl", "is-active", unit).stdout.strip() == "active"
                assert machine.run("systemctl", "is-enabled", unit).stdout.strip() == "enabled"

            # NOVACONSOLE_LAB_DIR names this lab, so the console's agents file is this
            # lab's (bus/agents.toml under its state dir), not the default lab's.
            verify = machine.run(
                "env", f"NOVACONSOLE_LAB_DIR={state}", *novaconsole,
                "verify", "--os-cloud", "novaconsole-lab", "-f", "json",
                timeout=900,
            )  # fmt: skip
            # Every check passes but networking, which verify rightly fails on an
            # API-only Neutron (nothing wires ports): the check against the real thing.
            assert verify.returncode == 1, verify.stdout + verify.stderr
            checks = {c["name"]: c for c in json.loads(verify.stdout)["checks"]}
            failed = [name for name, c in checks.items() if not c["ok"]]
            assert failed == ["networking"], verify.stdout
            assert "no agents or OVN controllers" in checks["networking"]["summary"]
            rerun = run("lab", "up", "-f", "json", "--state-dir", str(state))
            assert rerun.returncode == 0, rerun.stderr[-2000:]
            assert json.loads(rerun.stdout)["changed"] == 0

            # A KVM guest, started by the libvirtd unit (QEMU lands in that unit's cgroup).
            boot = machine.run(
                str(openstack_cli), "--os-cloud", "novaconsole-lab", "server", "create",
                "--image", "novaconsole-test-raw", "--flavor", "nc.tiny", "--nic", "none",
                "--wait", "systemd-guest", "-f", "value", "-c", "status",
                timeout=300,
            )  # fmt: skip
            assert boot.stdout.strip() == "ACTIVE", boot.stdout + boot.stderr[-2000:]
            qemu = machine.run("pgrep", "-f", "qemu-system").stdout.split()
            assert qemu
            cgroup = machine.run("cat", f"/proc/{qemu[0]}/cgroup").stdout
            assert "/system.slice/novaconsole-lab-libvirtd.service" in cgroup

            # systemd, not novaconsole, brings a crashed service back.
            unit = "novaconsole-lab-nova-scheduler.service"
            old = machine.run("systemctl", "show", "-p", "MainPID", "--value", unit).stdout.strip()
            machine.run("kill", "-KILL", old)
            deadline = time.monotonic() + 60
            new = old
            while time.monotonic() < deadline and new in (old, "0"):
                time.sleep(1)
                new = machine.run("systemctl", "show", "-p", "MainPID", "--value", unit).stdout
                new = new.strip()
            assert new not in (old, "0")
            restarts = machine.run("systemctl", "show", "-p", "NRestarts", "--value", unit)
            assert int(restarts.stdout) >= 1

            secrets = json.loads((state / "secrets.json").read_text())
            for log in (state / "services" / "logs").glob("*.log"):
                text = log.read_text(errors="replace")
                assert not [n for n, v in secrets.items() if v in text], log
            units = machine.run("sh", "-c", "cat /etc/systemd/system/novaconsole-lab-*.service")
            assert not [n for n, v in secrets.items() if v in units.stdout]

            down = run("lab", "down", "--state-dir", str(state))
            assert down.returncode == 0, down.stderr
            assert machine.processes() == []
            left = machine.run("sh", "-c", "ls /etc/systemd/system | grep novaconsole-lab || true")
            assert left.stdout.strip() == ""
    finally:
        if not os.environ.get("NOVACONSOLE_KEEP_LAB_DATABASES"):
            _drop_lab_databases()


def _broker_answers() -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", 5672)) == 0


def _start_machine_broker() -> None:
    """Bring back the machine's own broker the way this machine kind starts it."""
    env = dict(os.environ)
    env["RABBITMQ_NODE_IP_ADDRESS"] = "127.0.0.1"
    env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = "-kernel inet_dist_use_interface {127,0,0,1}"
    subprocess.run(["rabbitmq-server", "-detached"], env=env, check=False, timeout=60)
    deadline = time.monotonic() + 120
    while not _broker_answers() and time.monotonic() < deadline:
        time.sleep(1)


@pytest.mark.skipif(os.geteuid() != 0, reason="lab up starts a broker itself only as root")
def test_lab_starts_a_broker_when_none_answers_and_down_stops_only_that_one(
    lab_state: LabConfig,
) -> None:
    """No broker on 127.0.0.1:5672: lab up (root) starts one, lab down stops it again."""
    assert not lab_state.rabbit_marker.exists()  # the session's broker was the machine's
    subprocess.run(["rabbitmqctl", "-q", "stop"], capture_output=True, timeout=120, check=False)
    try:
        assert not _broker_answers()
        up = run_novaconsole("lab", "up")  # not -q: the plan's lines are the evidence
        assert up.returncode == 0, up.stderr[-3000:]
        assert "start a local rabbitmq-server (none answers on 5672)" in up.stderr
        assert lab_state.rabbit_marker.exists()
        assert _broker_answers()
        verify = run_novaconsole("verify", "--os-cloud", "novaconsole-lab")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert_down(lab_state.state_dir, lab_pids(lab_state.state_dir))
        assert not lab_state.rabbit_marker.exists()
        deadline = time.monotonic() + 60
        while _broker_answers() and time.monotonic() < deadline:
            time.sleep(1)
        assert not _broker_answers()
    finally:
        if not _broker_answers():
            _start_machine_broker()
    assert _broker_answers()
