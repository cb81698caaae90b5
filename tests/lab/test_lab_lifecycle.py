"""Tearing labs down (runs last): no process survives; the MariaDB path end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pymysql
import pytest
from labtools import run_novaconsole

from novaconsole.lab.config import LabConfig

pytestmark = [pytest.mark.lab, pytest.mark.lab_lifecycle]

LAB_DATABASES = ("nova_api", "nova", "nova_cell0", "keystone", "glance", "placement", "neutron")


def lab_pids(state_dir: Path) -> list[int]:
    proc = run_novaconsole("lab", "status", "-f", "json", "--state-dir", str(state_dir))
    data = json.loads(proc.stdout)
    pids = [row["pid"] for row in data["services"] if row["pid"]]
    if data["supervisor_pid"]:
        pids.append(data["supervisor_pid"])
    return pids


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


def test_lab_down_stops_every_process_it_started(lab_state: LabConfig) -> None:
    pids = lab_pids(lab_state.state_dir)
    assert len(pids) >= 12
    assert_down(lab_state.state_dir, pids)
    assert not lab_state.ready_file.exists()


def _drop_lab_databases() -> None:
    conn = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    with conn.cursor() as cur:
        for db in LAB_DATABASES:
            cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
    conn.close()


@pytest.mark.mariadb
def test_mariadb_lab_up_verify_rerun_down(tmp_path: Path) -> None:
    state = tmp_path / "mariadb-lab"
    _drop_lab_databases()
    try:
        up = run_novaconsole(
            "lab", "up", "-q", "--db", "mysql+pymysql://root@127.0.0.1", "--state-dir", str(state)
        )
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
        verify = run_novaconsole("verify", "--os-cloud", "novaconsole-lab", "-f", "json")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        rerun = run_novaconsole("lab", "up", "-f", "json", "--state-dir", str(state))
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert json.loads(rerun.stdout)["changed"] == 0
        secrets = json.loads((state / "secrets.json").read_text())
        for log in (state / "services" / "logs").glob("*.log"):
            text = log.read_text(errors="replace")
            assert not [n for n, v in secrets.items() if v in text], log
        assert_down(state, lab_pids(state))
    finally:
        if (state / "services" / "supervisord.pid").exists():
            run_novaconsole("lab", "down", "--state-dir", str(state))
        if not os.environ.get("NOVACONSOLE_KEEP_LAB_DATABASES"):
            _drop_lab_databases()
