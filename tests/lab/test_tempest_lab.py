"""tempest, OpenStack's own API test suite, as the lab's acceptance test.

``novaconsole lab tempest`` runs the CI selection (``novaconsole/lab/tempest-lists/ci.txt``,
README "tempest") against the real lab with two workers. The run must pass with nothing
failed and nothing left behind, the tempest.conf it wrote must name what the ``openstack``
CLI (the peer) says the lab has, and the admin password must appear in no output or log.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from novaconsole.lab.config import LabConfig, load_or_create_secrets
from novaconsole.lab.tempest import LISTS_DIR, read_exclusions, read_list

pytestmark = pytest.mark.lab

LAB_OPENSTACK = Path.home() / ".local/share/novaconsole/lab/venvs/openstack/bin/openstack"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OS_")}


def _tempest(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "novaconsole", "lab", "tempest", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=_env(),
    )


def _openstack(lab_cloud: str, *command: str) -> Any:
    cli = str(LAB_OPENSTACK) if LAB_OPENSTACK.exists() else "openstack"
    proc = subprocess.run(
        [cli, "--os-cloud", lab_cloud, *command, "-f", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=_env(),
    )
    return json.loads(proc.stdout)


def test_list_is_the_ci_selection_less_each_excluded_test_with_its_reason(
    lab_state: LabConfig,
) -> None:
    proc = _tempest("--list", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = proc.stdout.split()
    assert listed, proc.stderr
    include = [p for p, _ in read_list(LISTS_DIR / "ci.txt")]
    exclusions = read_exclusions()
    for test_id in listed:
        assert any(p.search(test_id) for p in include), test_id
        assert not any(e.pattern.search(test_id) for e in exclusions), test_id
    # Whatever the exclude list removed is said, with its reason (never dropped silently).
    for match in re.finditer(r"excluded (\d+): (.+)", proc.stderr):
        assert int(match.group(1)) > 0
        assert match.group(2) in {e.reason for e in exclusions}


def test_ci_selection_passes_against_the_lab_and_leaves_nothing(
    lab_state: LabConfig, lab_cloud: str
) -> None:
    proc = _tempest("--workers", "2", "-q", "-f", "json", timeout=1200)
    result = json.loads(proc.stdout)
    detail = f"failures: {result['failures']}; log: {result['log']}\n{proc.stderr[-3000:]}"
    assert result["failed"] == 0, detail
    assert proc.returncode == 0, detail
    assert result["left_behind"] == {}, detail
    # The selection is chosen to pass here: tempest's own skips (feature flags,
    # microversion ranges) may take a few tests, never the bulk of it.
    assert result["passed"] >= 0.8 * result["selected"], result["skips"]

    # Nothing of the run is left on the lab, by the peer's count too.
    servers = _openstack(lab_cloud, "server", "list", "--all-projects")
    assert not [s["Name"] for s in servers if s["Name"].startswith("tempest-")]
    projects = _openstack(lab_cloud, "project", "list")
    assert not [p["Name"] for p in projects if p["Name"].startswith("tempest-")]

    # tempest.conf names what the lab has, as the peer lists it.
    conf_path = lab_state.state_dir / "tempest" / "workspace" / "etc" / "tempest.conf"
    assert stat.S_IMODE(conf_path.stat().st_mode) == 0o600
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(conf_path)
    images = {i["Name"]: i["ID"] for i in _openstack(lab_cloud, "image", "list")}
    assert conf["compute"]["image_ref"] == images["novaconsole-test-raw"]
    assert conf["compute"]["image_ref_alt"] == images["novaconsole-lab-guest"]
    flavors = {f["Name"]: f["ID"] for f in _openstack(lab_cloud, "flavor", "list")}
    assert conf["compute"]["flavor_ref"] == flavors["nc.small"]
    assert conf["compute"]["flavor_ref_alt"] == flavors["nc.tiny"]
    hypervisors = _openstack(lab_cloud, "hypervisor", "list")
    assert conf["compute"]["min_compute_nodes"] == str(len(hypervisors))
    services = {s["Type"] for s in _openstack(lab_cloud, "catalog", "list")}
    assert conf["service_available"]["cinder"] == str("volumev3" in services).lower()
    assert conf["service_available"]["swift"] == str("object-store" in services).lower()

    # The admin password is in tempest.conf only: not in our output, not in tempest's logs.
    password = load_or_create_secrets(lab_state.secrets_file, write=False)["ADMIN_PASS"]
    assert password not in proc.stdout + proc.stderr
    for log in (lab_state.state_dir / "tempest" / "workspace" / "logs").glob("*.log"):
        assert password not in log.read_text(errors="replace"), log
