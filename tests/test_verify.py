"""Unit tests for ``novaconsole verify``: check logic on observed rows, the concurrent
runner, plugin checks, and the CLI's exit codes and one-line errors (no cloud needed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from novaconsole.errors import ConfigError
from novaconsole.hookspecs import hookimpl
from novaconsole.plugins import PluginManager
from novaconsole.verify import (
    REQUIRED_SERVICE_TYPES,
    Check,
    CheckResult,
    VerifyReport,
    collect_checks,
    evaluate_catalog,
    evaluate_compute_services,
    evaluate_hypervisors,
    evaluate_images,
    render_report,
    run_checks,
)


@pytest.fixture(autouse=True)
def no_lab_agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lab on this machine would lend verify its agents.toml (and an agents check)."""
    monkeypatch.setenv("NOVACONSOLE_LAB_DIR", str(tmp_path / "no-lab"))


# -- observed rows, shaped as the API returns them on an all-in-one --------------------


def service(
    binary: str, host: str = "aio", state: str = "up", status: str = "enabled"
) -> dict[str, Any]:
    return {
        "id": f"{binary}-{host}",
        "binary": binary,
        "host": host,
        "zone": "internal",
        "status": status,
        "state": state,
    }


def all_in_one_services() -> list[dict[str, Any]]:
    return [service("nova-conductor"), service("nova-scheduler"), service("nova-compute")]


def catalog_entry(
    kind: str, interfaces: Sequence[str] = ("public", "internal", "admin")
) -> dict[str, Any]:
    port = {"identity": 5000, "image": 9292, "compute": 8774, "placement": 8778}.get(kind, 1)
    return {
        "type": kind,
        "name": {"identity": "keystone", "image": "glance"}.get(kind, kind),
        "endpoints": [
            {
                "interface": i,
                "region": "RegionOne",
                "region_id": "RegionOne",
                "url": f"http://127.0.0.1:{port}",
                "id": f"{kind}-{i}",
            }
            for i in interfaces
        ],
    }


def hypervisor(hostname: str = "aio", state: str = "up", host: str | None = None) -> dict[str, Any]:
    return {
        "id": f"id-{hostname}",
        "hostname": hostname,
        "host": host or hostname,
        "type": "QEMU",
        "host_ip": "127.0.0.1",
        "state": state,
        "status": "enabled",
    }


# -- compute services --------------------------------------------------------------------


def test_services_all_up_pass_and_are_listed() -> None:
    result = evaluate_compute_services(all_in_one_services())
    assert result.ok
    assert "nova-compute@aio" in result.summary
    assert result.facts["down"] == []


def test_services_down_are_named() -> None:
    rows = [*all_in_one_services(), service("nova-compute", host="c2", state="down")]
    result = evaluate_compute_services(rows)
    assert not result.ok
    assert result.summary == "not up: nova-compute@c2"
    assert result.facts["down"] == ["nova-compute@c2"]


def test_services_missing_binary_fails() -> None:
    result = evaluate_compute_services([service("nova-conductor"), service("nova-compute")])
    assert not result.ok
    assert "not registered: nova-scheduler" in result.summary


def test_services_none_registered_fails() -> None:
    result = evaluate_compute_services([])
    assert not result.ok
    assert "nova-conductor, nova-scheduler, nova-compute" in result.summary


def test_disabled_but_up_service_passes() -> None:
    rows = [*all_in_one_services(), service("nova-compute", host="c2", status="disabled")]
    assert evaluate_compute_services(rows).ok


# -- catalog -----------------------------------------------------------------------------


def test_catalog_with_the_four_types_passes() -> None:
    entries = [catalog_entry(t) for t in (*REQUIRED_SERVICE_TYPES, "network")]
    result = evaluate_catalog(entries)
    assert result.ok
    assert "placement http://127.0.0.1:8778" in result.summary
    assert result.facts["service_types"] == ["compute", "identity", "image", "network", "placement"]
    assert len(result.facts["endpoints"]) == 15


def test_catalog_missing_placement_is_named() -> None:
    entries = [catalog_entry(t) for t in ("identity", "image", "compute")]
    result = evaluate_catalog(entries)
    assert not result.ok
    assert result.summary == "no endpoint for: placement"


def test_catalog_type_without_endpoints_counts_as_missing() -> None:
    entries = [catalog_entry(t) for t in REQUIRED_SERVICE_TYPES]
    entries[1]["endpoints"] = []
    result = evaluate_catalog(entries)
    assert not result.ok
    assert result.facts["missing"] == ["image"]


def test_catalog_needs_the_interface_the_client_uses() -> None:
    entries = [catalog_entry(t) for t in ("identity", "image", "compute")]
    entries.append(catalog_entry("placement", interfaces=("internal",)))
    assert not evaluate_catalog(entries).ok
    assert "no public endpoint for: placement" in evaluate_catalog(entries).summary
    assert evaluate_catalog(entries, interface="internal").ok


# -- images ------------------------------------------------------------------------------


def test_images_one_active_passes() -> None:
    rows = [
        {"id": "1", "name": "cirros", "status": "active"},
        {"id": "2", "name": "big", "status": "queued"},
    ]
    result = evaluate_images(rows)
    assert result.ok
    assert result.summary == "1 of 2 active: cirros"


def test_images_none_active_fails_with_states() -> None:
    result = evaluate_images([{"id": "2", "name": "big", "status": "queued"}])
    assert not result.ok
    assert result.summary == "no active image: big (queued)"


def test_images_empty_fails() -> None:
    assert not evaluate_images([]).ok


# -- hypervisors -------------------------------------------------------------------------


def test_hypervisor_up_and_mapped_passes() -> None:
    result = evaluate_hypervisors([hypervisor()], all_in_one_services())
    assert result.ok
    assert result.summary == "1 of 1 up and mapped: aio (QEMU)"


def test_no_hypervisor_points_at_discover_hosts() -> None:
    result = evaluate_hypervisors([], all_in_one_services())
    assert not result.ok
    assert "not mapped to any cell: aio" in result.summary
    assert "discover_hosts" in result.summary


def test_all_hypervisors_down_fails() -> None:
    result = evaluate_hypervisors([hypervisor(state="down")], [])
    assert not result.ok
    assert result.summary == "no hypervisor up: aio"


def test_up_compute_service_without_hypervisor_is_unmapped() -> None:
    services = [*all_in_one_services(), service("nova-compute", host="c2")]
    result = evaluate_hypervisors([hypervisor()], services)
    assert not result.ok
    assert result.facts["unmapped_compute_hosts"] == ["c2"]


def test_hypervisor_matched_by_service_host_not_node_name() -> None:
    # libvirt names the node by FQDN while the service host may be the short name.
    services = [service("nova-compute", host="aio")]
    assert evaluate_hypervisors([hypervisor("aio.example.org", host="aio")], services).ok


def test_down_compute_service_is_not_reported_unmapped() -> None:
    services = [service("nova-compute", host="c2", state="down")]
    assert evaluate_hypervisors([hypervisor()], services).facts["unmapped_compute_hosts"] == []


# -- runner ------------------------------------------------------------------------------


def test_checks_run_concurrently() -> None:
    # Each check waits for all the others to start: sequential execution breaks the barrier.
    barrier = threading.Barrier(4, timeout=10)

    def waiting(name: str) -> Check:
        def run(conn: object) -> CheckResult:
            barrier.wait()
            return CheckResult(name, True, threading.current_thread().name)

        return Check(name, run)

    results = run_checks(object(), [waiting(f"c{i}") for i in range(4)])
    assert [r.ok for r in results] == [True] * 4
    assert [r.name for r in results] == ["c0", "c1", "c2", "c3"]
    assert len({r.summary for r in results}) == 4  # four distinct threads


def test_a_raising_check_fails_alone_with_one_line() -> None:
    def boom(conn: object) -> CheckResult:
        raise RuntimeError("compute API said\nsomething long")

    def fine(conn: object) -> CheckResult:
        return CheckResult("fine", True, "ok")

    results = run_checks(object(), [Check("boom", boom), Check("fine", fine)])
    assert not results[0].ok
    assert results[0].summary == "boom: RuntimeError: compute API said something long"
    assert results[1].ok


def test_unreachable_service_is_named_with_its_url() -> None:
    from keystoneauth1 import exceptions as ka

    def unreachable(conn: object) -> CheckResult:
        # The exception keystoneauth raises when nova-api's port is closed.
        raise ka.ConnectFailure(
            "Unable to establish connection to http://127.0.0.1:8774/v2.1/os-services: "
            "HTTPConnectionPool(host='127.0.0.1', port=8774): Max retries exceeded"
        )

    (result,) = run_checks(object(), [Check("compute-services", unreachable)])
    assert result.summary == (
        "compute-services: cannot connect to http://127.0.0.1:8774/v2.1/os-services"
    )


def test_report_table_and_json() -> None:
    report = VerifyReport(
        "lab",
        (CheckResult("a", True, "fine", {"x": 1}, 0.01), CheckResult("b", False, "broken")),
        0.5,
        {"connect": 0.2, "auth": 0.1, "checks": 0.2},
    )
    table = render_report(report)
    assert "a      PASS    fine" in table
    assert "b      FAIL    broken" in table
    assert table.endswith("cloud 'lab': 1 passed, 1 failed in 0.50 s")
    data = json.loads(json.dumps(report.as_dict()))
    assert data["ok"] is False
    assert data["phases_s"] == {"connect": 0.2, "auth": 0.1, "checks": 0.2}
    assert data["checks"][0] == {
        "name": "a",
        "ok": True,
        "summary": "fine",
        "duration_s": 0.01,
        "facts": {"x": 1},
    }


# -- plugin checks -----------------------------------------------------------------------


class _ExtraCheckPlugin:
    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl
    def novaconsole_verify_checks(self) -> Sequence[Check]:
        return [Check(self.name, lambda conn: CheckResult(self.name, True, "from a plugin"))]


def test_plugin_checks_are_collected_after_builtins() -> None:
    pm = PluginManager()
    pm.register(_ExtraCheckPlugin("agent-heartbeat"))
    names = [c.name for c in collect_checks(pm)]
    assert names == [
        "compute-services",
        "catalog",
        "images",
        "hypervisors",
        "networking",
        "agent-heartbeat",
    ]


def test_duplicate_check_names_are_a_usage_error() -> None:
    pm = PluginManager()
    pm.register(_ExtraCheckPlugin("images"))
    with pytest.raises(ConfigError, match="same name: images"):
        collect_checks(pm)


# -- CLI exit codes and one-line errors ---------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_cli(
    args: Sequence[str], env: Mapping[str, str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    config = tmp_path / "clouds.yaml"
    config.write_text("clouds:\n  other:\n    auth:\n      auth_url: http://127.0.0.1:1/v3\n")
    clean["OS_CLIENT_CONFIG_FILE"] = str(config)
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "novaconsole", *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("novaconsole: error: ")
    for needle in needles:
        assert needle in lines[0]


def test_unknown_cloud_is_exit_2_one_line(tmp_path: Path) -> None:
    proc = _run_cli(["--os-cloud", "no-such-cloud", "verify"], {}, tmp_path)
    _assert_one_line_error(proc, "'no-such-cloud'")


def test_unreachable_auth_url_is_exit_2_one_line_without_secret(tmp_path: Path) -> None:
    port = _closed_port()
    secret = "s3cret-never-printed"
    env = {
        "OS_AUTH_URL": f"http://127.0.0.1:{port}/v3",
        "OS_USERNAME": "admin",
        "OS_PASSWORD": secret,
        "OS_PROJECT_NAME": "admin",
        "OS_USER_DOMAIN_NAME": "Default",
        "OS_PROJECT_DOMAIN_NAME": "Default",
    }
    proc = _run_cli(["verify", "-f", "json"], env, tmp_path)
    _assert_one_line_error(proc, f"127.0.0.1:{port}", "cannot connect")
    assert secret not in proc.stderr + proc.stdout


def test_bad_timeout_is_exit_2_one_line(tmp_path: Path) -> None:
    proc = _run_cli(["--os-cloud", "other", "verify", "--timeout", "0"], {}, tmp_path)
    _assert_one_line_error(proc, "--timeout")


def test_header_compute_versions_are_the_ones_the_console_uses() -> None:
    from novaconsole.sources.openstack_source import compute_versions_text

    assert compute_versions_text((2, 104)) == "2.69-2.88 (max 2.104)"
    assert compute_versions_text((2, 70)) == "2.69-2.70 (max 2.70)"
    assert compute_versions_text((2, 60)) == "2.60 (max 2.60)"
    assert compute_versions_text(None) == "2.1"


# -- networking ---------------------------------------------------------------------------

_OVN_AGENTS = [
    {"type": "OVN Controller Gateway agent", "host": "vm", "alive": True},
    {"type": "OVN Metadata agent", "host": "vm", "alive": True},
]
_LAB_NET = {"name": "novaconsole-lab-net", "status": "ACTIVE", "up": True, "subnets": ["s"]}


def test_networking_passes_with_live_agents_and_a_usable_network() -> None:
    from novaconsole.verify import evaluate_networking

    result = evaluate_networking(_OVN_AGENTS, [_LAB_NET])
    assert result.ok, result.summary
    assert result.facts["usable_networks"] == ["novaconsole-lab-net"]
    assert "2 agents alive" in result.summary


def test_networking_fails_on_an_api_only_neutron() -> None:
    from novaconsole.verify import evaluate_networking

    result = evaluate_networking([], [_LAB_NET])
    assert not result.ok
    assert "no agents or OVN controllers" in result.summary


def test_networking_names_the_dead_agent() -> None:
    from novaconsole.verify import evaluate_networking

    agents = [*_OVN_AGENTS[:1], {**_OVN_AGENTS[1], "alive": False}]
    result = evaluate_networking(agents, [_LAB_NET])
    assert not result.ok
    assert result.summary == "agents not alive: OVN Metadata agent@vm"


def test_networking_needs_an_active_network_with_a_subnet() -> None:
    from novaconsole.verify import evaluate_networking

    down = {**_LAB_NET, "status": "DOWN"}
    bare = {**_LAB_NET, "name": "bare", "subnets": []}
    result = evaluate_networking(_OVN_AGENTS, [down, bare])
    assert not result.ok
    assert "no usable network" in result.summary


def test_networking_is_not_applicable_without_neutron() -> None:
    from novaconsole.verify import evaluate_networking

    result = evaluate_networking([], [], in_catalog=False)
    assert result.ok
    assert result.summary.startswith("not applicable")
