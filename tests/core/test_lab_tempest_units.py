"""``novaconsole lab tempest`` without a lab: the conf it writes, its lists, its parsing.

The real runs against the lab are in ``tests/lab/test_tempest_lab.py``.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from novaconsole.errors import ConfigError
from novaconsole.lab.tempest import (
    EXCLUDE_LIST,
    LISTS_DIR,
    SELECTIONS,
    LabFacts,
    TempestRun,
    parse_output,
    read_exclusions,
    read_list,
    render_conf,
    select,
)


def _facts(**changes: object) -> LabFacts:
    facts = LabFacts(
        identity_uri="http://127.0.0.1:5000/v3",
        region="RegionOne",
        admin_password="not-a-real-password",
        services={"identity", "compute", "image", "placement", "network"},
        compute_versions=("2.1", "2.100"),
        placement_versions=("1.0", "1.39"),
        image_ref="img-1",
        image_ref_alt="img-1",
        flavor_ref="f-tiny",
        flavor_ref_alt="f-small",
        hypervisors=1,
        hypervisor_type="QEMU",
        networking=True,
        networking_why="1 Neutron agent(s) alive: OVN Controller agent",
    )
    for key, value in changes.items():
        setattr(facts, key, value)
    return facts


def _conf(facts: LabFacts, tmp_path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(render_conf(facts, tmp_path))
    return parser


def test_conf_says_what_a_one_node_lab_with_networking_has(tmp_path: Path) -> None:
    conf = _conf(_facts(), tmp_path)
    assert conf["service_available"]["nova"] == "true"
    assert conf["service_available"]["neutron"] == "true"
    assert conf["service_available"]["cinder"] == "false"
    assert conf["service_available"]["swift"] == "false"
    assert conf["auth"]["create_isolated_networks"] == "true"
    assert conf["auth"]["admin_password"] == "not-a-real-password"
    # One compute node: nothing that moves a server can be tested.
    for flag in ("resize", "cold_migration", "live_migration", "shelve_migrate"):
        assert conf["compute-feature-enabled"][flag] == "false", flag
    assert conf["compute"]["max_microversion"] == "2.100"
    assert conf["compute"]["min_compute_nodes"] == "1"
    assert conf["placement"]["max_microversion"] == "1.39"
    assert conf["compute"]["flavor_ref"] != conf["compute"]["flavor_ref_alt"]
    assert conf["DEFAULT"]["record_resources"] == "true"
    assert conf["oslo_concurrency"]["lock_path"] == str(tmp_path / "tempest_lock")
    assert "public_network_id" not in conf["network"]
    assert conf["network-feature-enabled"]["floating_ips"] == "false"


def test_conf_without_working_networking_asks_for_no_networks(tmp_path: Path) -> None:
    conf = _conf(_facts(networking=False, networking_why="API only"), tmp_path)
    assert conf["service_available"]["neutron"] == "false"
    assert conf["auth"]["create_isolated_networks"] == "false"
    assert conf["compute-feature-enabled"]["interface_attach"] == "false"
    assert "# Networking: API only." in render_conf(_facts(networking_why="API only"), tmp_path)


def test_conf_of_a_two_node_lab_enables_moving_servers(tmp_path: Path) -> None:
    conf = _conf(
        _facts(hypervisors=2, public_network_id="pub", public_network_name="public"), tmp_path
    )
    for flag in (
        "resize",
        "cold_migration",
        "live_migration",
        "block_migration_for_live_migration",
    ):
        assert conf["compute-feature-enabled"][flag] == "true", flag
    assert conf["network"]["public_network_id"] == "pub"
    assert conf["network-feature-enabled"]["floating_ips"] == "true"
    one_node = _conf(_facts(resize_to_same_host=True), tmp_path)
    assert one_node["compute-feature-enabled"]["resize"] == "true"
    assert one_node["compute-feature-enabled"]["live_migration"] == "false"


def test_every_exclusion_has_a_reason_and_a_valid_regex() -> None:
    exclusions = read_exclusions()
    assert exclusions, f"{EXCLUDE_LIST} is empty"
    assert all(e.reason for e in exclusions)


def test_an_exclusion_without_a_reason_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "exclude.txt"
    path.write_text("^tempest\\.api\\.compute\\.volumes\\.  # no cinder\n^tempest\\.x\n")
    with pytest.raises(ConfigError, match=r"'\^tempest\\\\.x' has no reason"):
        read_exclusions(path)
    path.write_text("^tempest(  # an unbalanced group\n")
    with pytest.raises(ConfigError, match=r"exclude.txt:1: bad regex"):
        read_exclusions(path)


def test_the_selections_are_tempest_compute_regexes() -> None:
    for name in SELECTIONS:
        entries = read_list(LISTS_DIR / f"{name}.txt")
        assert entries, name
        for pattern, _comment in entries:
            assert pattern.pattern.startswith("^tempest\\."), pattern.pattern


def test_select_reports_each_excluded_test_under_its_reason(tmp_path: Path) -> None:
    path = tmp_path / "exclude.txt"
    path.write_text("volumes\\.  # volumes: no Cinder\n\\.test_live_migration\\.  # one node\n")
    ids = [
        "tempest.api.compute.servers.test_servers.ServersTestJSON.test_a[id-1]",
        "tempest.api.compute.volumes.test_volumes_get.VolumesGetTestJSON.test_b[id-2]",
        "tempest.api.compute.admin.test_live_migration.LiveMigrationTest.test_c[id-3]",
    ]
    run, excluded = select(ids, read_exclusions(path))
    assert run == ids[:1]
    assert excluded == {"volumes: no Cinder": [ids[1]], "one node": [ids[2]]}


#: The closing lines of a real ``tempest run`` against the lab (trimmed).
TEMPEST_OUTPUT = """\
{1} setUpClass (tempest.api.compute.servers.test_create_server.ServersTestBootFromVolume) ... SKIPPED: Volume service not enabled.
{0} setUpClass (tempest.api.compute.servers.test_create_server.ServersTestFqdnHostnames) [0.000000s] ... FAILED
{0} tempest.api.compute.servers.test_create_server.ServersTestJSON.test_list_servers[id-9a43,smoke] [0.52s] ... ok

======
Totals
======
Ran: 5 tests in 133.0976 sec.
 - Passed: 3
 - Skipped: 1
 - Expected Fail: 0
 - Unexpected Success: 0
 - Failed: 1
Sum of execute time for each test: 0.0000 sec.
"""


def test_parse_output_counts_and_names_the_failures() -> None:
    run = TempestRun(selected=5)
    parse_output(TEMPEST_OUTPUT.splitlines(), run)
    assert (run.passed, run.failed, run.skipped) == (3, 1, 1)
    assert run.failures == [
        "setUpClass (tempest.api.compute.servers.test_create_server.ServersTestFqdnHostnames)"
    ]
    assert run.skips == {
        "Volume service not enabled.": [
            "setUpClass (tempest.api.compute.servers.test_create_server.ServersTestBootFromVolume)"
        ]
    }
    assert re.fullmatch(
        r"tempest: 3 passed, 1 failed, 1 skipped \(5 run, 0 excluded; 0 s\)", run.summary()
    )


def _cli(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["NOVACONSOLE_LAB_DIR"] = str(state)
    return subprocess.run(
        [sys.executable, "-m", "novaconsole", "lab", "tempest", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_cli_refuses_bad_input_in_one_line_before_doing_anything(tmp_path: Path) -> None:
    proc = _cli(state=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"novaconsole: error: the lab in {tmp_path} is not up (no READY file)"
        " (hint: `novaconsole lab up` first)"
    ]
    (tmp_path / "READY").write_text("now\n")
    proc = _cli("servers", "--selection", "ci", state=tmp_path)
    assert proc.returncode == 2
    assert "give a REGEX or --selection, not both" in proc.stderr
    proc = _cli("--workers", "0", state=tmp_path)
    assert proc.returncode == 2
    assert "--workers 0: give 1 to 8" in proc.stderr
    assert not (tmp_path / "tempest").exists()  # nothing half-made
