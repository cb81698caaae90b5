"""``novaconsole verify`` on the real lab, its facts checked against the ``openstack`` CLI.

Both tools run as processes on the same lab, the CLI just before and just after verify;
every fact verify reports (services, catalog endpoints, images, hypervisors) must be what
the CLI lists on one side of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from novaconsole.verify import REQUIRED_BINARIES, REQUIRED_SERVICE_TYPES

pytestmark = pytest.mark.lab

LAB_OPENSTACK = Path.home() / ".local/share/novaconsole/lab/venvs/openstack/bin/openstack"


def _openstack_cli() -> str:
    if LAB_OPENSTACK.exists():
        return str(LAB_OPENSTACK)
    return str(Path(sys.executable).parent / "openstack")


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(extra or {})
    return env


def _novaconsole(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "novaconsole", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=_clean_env(env),
    )


def _openstack_json(cloud: str, *command: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [_openstack_cli(), "--os-cloud", cloud, *command, "-f", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=_clean_env(),
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert isinstance(rows, list)
    return rows


def _facts(report: Mapping[str, Any], check: str) -> Mapping[str, Any]:
    by_name = {c["name"]: c for c in report["checks"]}
    result = by_name[check]
    assert result["ok"], f"{check}: {result['summary']}"
    facts = result["facts"]
    assert isinstance(facts, Mapping)
    return facts


def _as_set(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> set[tuple[Any, ...]]:
    return {tuple(row.get(k) for k in keys) for row in rows}


CLI_LISTS: dict[str, tuple[str, ...]] = {
    "services": ("compute", "service", "list"),
    "catalog": ("catalog", "list"),
    "images": ("image", "list"),
    "hypervisors": ("hypervisor", "list"),
}


@dataclass(frozen=True)
class Observed:
    """verify's report, with the CLI's lists taken just before and just after it.

    The lab is shared with other tests and benchmarks that may add images or catalog
    entries at any moment, so verify's facts must equal the CLI's view on one side of it.
    """

    report: dict[str, Any]
    before: dict[str, list[dict[str, Any]]]
    after: dict[str, list[dict[str, Any]]]

    def cli(self) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
        return self.before, self.after


@pytest.fixture(scope="module")
def observed(lab_cloud: str) -> Observed:
    before = {k: _openstack_json(lab_cloud, *cmd) for k, cmd in CLI_LISTS.items()}
    proc = _novaconsole("--os-cloud", lab_cloud, "verify", "-f", "json")
    after = {k: _openstack_json(lab_cloud, *cmd) for k, cmd in CLI_LISTS.items()}
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert isinstance(report, dict)
    assert report["ok"] is True
    assert report["cloud"] == lab_cloud
    assert [c["name"] for c in report["checks"]][:4] == [
        "compute-services",
        "catalog",
        "images",
        "hypervisors",
    ]
    return Observed(report, before, after)


def test_services_match_compute_service_list(observed: Observed) -> None:
    facts = _facts(observed.report, "compute-services")
    keys = ("binary", "host", "zone", "status", "state")
    cli_keys = ("Binary", "Host", "Zone", "Status", "State")
    views = [_as_set(cli["services"], cli_keys) for cli in observed.cli()]
    assert _as_set(facts["services"], keys) in views
    for cli in observed.cli():
        assert {r["Binary"] for r in cli["services"]} >= set(REQUIRED_BINARIES)
        assert all(r["State"] == "up" for r in cli["services"])


def test_catalog_matches_catalog_list(observed: Observed) -> None:
    facts = _facts(observed.report, "catalog")
    ours = {(e["type"], e["interface"], e["url"]) for e in facts["endpoints"]}
    views = [
        {
            (r["Type"], ep["interface"], ep["url"])
            for r in cli["catalog"]
            for ep in r["Endpoints"] or []
        }
        for cli in observed.cli()
    ]
    assert ours in views
    assert facts["service_types"] in [
        sorted({r["Type"] for r in cli["catalog"]}) for cli in observed.cli()
    ]
    assert set(REQUIRED_SERVICE_TYPES) <= {t for t, _, _ in ours}


def test_images_match_image_list(observed: Observed) -> None:
    facts = _facts(observed.report, "images")
    keys, cli_keys = ("id", "name", "status"), ("ID", "Name", "Status")
    views = [_as_set(cli["images"], cli_keys) for cli in observed.cli()]
    assert _as_set(facts["images"], keys) in views
    active_counts = [sum(r["Status"] == "active" for r in cli["images"]) for cli in observed.cli()]
    assert facts["active"] in active_counts
    assert facts["active"] >= 1


def test_hypervisors_match_hypervisor_list(observed: Observed) -> None:
    facts = _facts(observed.report, "hypervisors")
    keys = ("id", "hostname", "type", "host_ip", "state")
    cli_keys = ("ID", "Hypervisor Hostname", "Hypervisor Type", "Host IP", "State")
    views = [_as_set(cli["hypervisors"], cli_keys) for cli in observed.cli()]
    assert _as_set(facts["hypervisors"], keys) in views
    assert facts["up"] >= 1
    assert facts["unmapped_compute_hosts"] == []


def test_verify_table_on_the_lab(lab_cloud: str) -> None:
    proc = _novaconsole("--os-cloud", lab_cloud, "verify")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The guide's four checks, networking, and the lab's compute agent live.
    assert f"cloud {lab_cloud!r}: 6 passed, 0 failed" in proc.stdout
    assert proc.stdout.count("PASS") == 6
    assert "compute-agents    PASS    1 of 1 live: vm" in proc.stdout


def test_wrong_password_is_exit_2_one_line(lab_cloud: str, tmp_path: Path) -> None:
    import openstack.config

    # Reuse the lab's auth URL and names through openstacksdk's loader; only the password
    # is wrong, so Keystone itself must refuse it.
    auth = openstack.config.OpenStackConfig().get_one(cloud=lab_cloud).config["auth"]
    wrong = "not-the-lab-password-7f3a"
    env = {
        "OS_AUTH_URL": str(auth["auth_url"]),
        "OS_USERNAME": str(auth["username"]),
        "OS_PASSWORD": wrong,
        "OS_PROJECT_NAME": str(auth["project_name"]),
        "OS_USER_DOMAIN_NAME": str(auth.get("user_domain_name") or "Default"),
        "OS_PROJECT_DOMAIN_NAME": str(auth.get("project_domain_name") or "Default"),
        "OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml"),
    }
    (tmp_path / "clouds.yaml").write_text("clouds: {}\n")
    proc = _novaconsole("verify", "-f", "json", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "authentication refused" in lines[0]
    assert str(auth["auth_url"]) in lines[0]
    assert wrong not in proc.stderr
