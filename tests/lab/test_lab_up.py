"""The real all-in-one lab: health, idempotence, dry run, credentials and secrecy."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from labtools import run_novaconsole

from novaconsole.lab.config import LabConfig

pytestmark = pytest.mark.lab

EXPECTED_SERVICES = {
    "keystone": 5000,
    "glance-api": 9292,
    "placement-api": 8778,
    "neutron-api": 9696,
    "nova-api": 8774,
    "nova-novncproxy": 6080,
    "nova-serialproxy": 6083,
    "nova-conductor": None,
    "nova-scheduler": None,
    "nova-compute": None,
}


def status_json() -> dict[str, object]:
    proc = run_novaconsole("lab", "status", "-f", "json")
    assert proc.returncode == 0, proc.stderr
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def test_every_service_runs_healthy_on_its_port(lab_state: LabConfig) -> None:
    data = status_json()
    assert data["up"] is True
    assert data["ready"] is True
    services = {row["service"]: row for row in data["services"]}  # type: ignore[attr-defined]
    for name, port in EXPECTED_SERVICES.items():
        row = services[name]
        assert row["state"] == "RUNNING", row
        assert isinstance(row["pid"], int)
        assert Path(f"/proc/{row['pid']}").exists()
        if port is not None:
            assert row["port"] == port
            assert row["health"] == "healthy", row
    compute = data["compute"]
    assert isinstance(compute, dict)
    assert compute["driver"] in ("libvirt", "fake")
    assert compute["driver_reason"]
    guest = data["guest"]
    assert isinstance(guest, dict)
    assert guest["guest"].startswith("image novaconsole-lab-guest (flavor nc.small): Linux ")


def test_rerun_reports_zero_changes(lab_state: LabConfig) -> None:
    proc = run_novaconsole("lab", "up", "-f", "json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    not_ok = [s for s in report["steps"] if s["status"] != "ok"]
    assert not_ok == []
    assert report["changed"] == 0


def test_dry_run_plans_nothing_on_a_running_lab_and_touches_nothing(lab_state: LabConfig) -> None:
    watched = [
        lab_state.etc / "nova" / "nova.conf",
        lab_state.etc / "keystone" / "keystone.conf",
        lab_state.secrets_file,
    ]
    before = {p: p.stat().st_mtime_ns for p in watched}
    proc = run_novaconsole("lab", "up", "--dry-run", "-f", "json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["changed"] == 0
    assert {p: p.stat().st_mtime_ns for p in watched} == before


def test_clouds_yaml_and_admin_openrc_work_with_the_openstack_cli(
    lab_state: LabConfig, openstack_cli: Path
) -> None:
    by_cloud = subprocess.run(
        [str(openstack_cli), "--os-cloud", "novaconsole-lab", "token", "issue", "-f", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert by_cloud.returncode == 0, by_cloud.stderr
    assert json.loads(by_cloud.stdout)["project_id"]
    openrc = lab_state.state_dir / "admin-openrc"
    assert oct(openrc.stat().st_mode & 0o777) == "0o600"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    by_openrc = subprocess.run(
        ["bash", "-c", f". '{openrc}' && '{openstack_cli}' project show admin -f value -c name"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert by_openrc.returncode == 0, by_openrc.stderr
    assert by_openrc.stdout.strip() == "admin"


def _process_cmdlines() -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
            except OSError:
                continue
    return out


def test_no_secret_in_logs_output_or_process_arguments(lab_state: LabConfig) -> None:
    secrets = json.loads(lab_state.secrets_file.read_text())
    assert len(secrets) >= 10
    # Outputs of the commands an operator runs.
    outputs = {
        "lab up": run_novaconsole("lab", "up"),
        "lab up -f json": run_novaconsole("lab", "up", "-f", "json"),
        "lab status -f json": run_novaconsole("lab", "status", "-f", "json"),
        "verify -f json": run_novaconsole("verify", "--os-cloud", "novaconsole-lab", "-f", "json"),
    }
    texts = {f"output of {k}": p.stdout + p.stderr for k, p in outputs.items()}
    # Every log file the lab and its services wrote.
    for log in [*lab_state.state_dir.glob("logs/*"), *lab_state.log_dir.glob("*.log*")]:
        texts[str(log)] = log.read_text(errors="replace")
    last_up = lab_state.state_dir / "last-lab-up.log"
    if last_up.exists():
        texts[str(last_up)] = last_up.read_text()
    # The argv of every process on the machine, lab services included.
    for pid, cmdline in _process_cmdlines().items():
        texts[f"argv of pid {pid}"] = cmdline
    assert len([k for k in texts if k.endswith(".log")]) >= 8
    leaks = [
        f"{name} in {where}"
        for where, text in texts.items()
        for name, value in secrets.items()
        if value in text
    ]
    assert leaks == []
