"""discover_hosts against a real Nova API database (SQLite, schema by nova-manage)."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
from compute_helpers import context

from novaconsole.cells import host_mapping
from novaconsole.errors import ConfigError, ConnectionFailure
from novaconsole.lab.venvs import Venv
from novaconsole.site import Site
from novaconsole.steps import Status, run_step
from novaconsole_compute.discover import DiscoverHostsStep


@pytest.fixture(scope="module")
def api_db(tmp_path_factory: pytest.TempPathFactory, lab_venvs: dict[str, Venv]) -> Path:
    """A Nova API database with the real schema (``nova-manage api_db sync``), no cells."""
    root = tmp_path_factory.mktemp("api")
    conf = root / "nova.conf"
    conf.write_text(f"[api_database]\nconnection = sqlite:///{root}/nova_api.sqlite\n")
    nova_manage = str(lab_venvs["openstack"].bin / "nova-manage")
    proc = subprocess.run(
        [nova_manage, "--config-file", str(conf), "api_db", "sync"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "nova_api.sqlite"


@pytest.fixture
def discover_site(
    site: Site, api_db: Path, lab_venvs: dict[str, Venv], monkeypatch: pytest.MonkeyPatch
) -> Site:
    """A site whose nova.conf points at a copy of the API database; no admin cloud."""
    monkeypatch.delenv("OS_CLOUD", raising=False)
    monkeypatch.delenv("OS_AUTH_URL", raising=False)
    db = site.nova_conf.parent / "nova_api.sqlite"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(api_db.read_bytes())
    site.nova_conf.write_text(f"[api_database]\nconnection = sqlite:///{db}\n")
    site.nova_bin_dir = lab_venvs["openstack"].bin
    site.supervisor_bin_dir = lab_venvs["openstack"].bin
    return site


def _map(db: Path, host: str) -> None:
    """Map ``host`` to a cell the way nova-manage does (rows in cell/host_mappings)."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO cell_mappings (uuid, name, transport_url, database_connection) "
            "VALUES ('5c4d2a4e-0000-4000-8000-000000000001', 'cell1', 'rabbit://', 'sqlite://')"
        )
        conn.execute(
            "INSERT INTO host_mappings (cell_id, host) "
            "SELECT id, ? FROM cell_mappings WHERE name = 'cell1'",
            (host,),
        )


def test_mapping_read_from_the_api_database(discover_site: Site) -> None:
    db = discover_site.nova_conf.parent / "nova_api.sqlite"
    url = f"sqlite:///{db}"
    assert host_mapping(url, "node1") is None
    _map(db, "node1")
    assert host_mapping(url, "node1") == "cell1"
    assert host_mapping(url, "node2") is None


def test_mapping_before_the_schema_exists(tmp_path: Path) -> None:
    assert host_mapping(f"sqlite:///{tmp_path}/missing.sqlite", "x") is None
    sqlite3.connect(tmp_path / "empty.sqlite").close()
    assert host_mapping(f"sqlite:///{tmp_path}/empty.sqlite", "x") is None


def test_mapping_errors_never_show_the_password() -> None:
    with pytest.raises(ConnectionFailure) as err:
        host_mapping("mysql+pymysql://nova:Db-S3cret@127.0.0.1:1/nova_api", "x")
    line = err.value.one_line()
    assert "Db-S3cret" not in line
    assert "127.0.0.1:1/nova_api" in line
    with pytest.raises(ConfigError, match="not supported"):
        host_mapping("postgresql://nova:pw@h/nova_api", "x")


def test_mapped_host_changes_nothing(discover_site: Site) -> None:
    _map(discover_site.nova_conf.parent / "nova_api.sqlite", "node1")
    result = run_step(DiscoverHostsStep(discover_site), context(discover_site))
    assert result.status is Status.OK, result.error
    assert result.changes == []


def test_dry_run_before_anything_exists(site: Site) -> None:
    result = run_step(DiscoverHostsStep(site), context(site, dry_run=True))
    assert result.status is Status.PLANNED, result.error
    assert result.changes == [
        "map compute host node1 to a cell (nova-manage cell_v2 discover_hosts)"
    ]


def test_no_api_database_names_the_file(site: Site) -> None:
    site.nova_conf.parent.mkdir(parents=True)
    site.nova_conf.write_text("[DEFAULT]\n")
    result = run_step(DiscoverHostsStep(site), context(site))
    assert result.status is Status.FAILED
    assert result.error is not None
    assert f"{site.nova_conf} has no [api_database] connection" in result.error


def test_timeout_names_host_trap_and_log(discover_site: Site) -> None:
    """Real nova-manage discover_hosts finds no compute node: a clear timeout, one line."""
    log = discover_site.services_dir / "logs" / "nova-compute.log"
    log.parent.mkdir(parents=True)
    log.write_text(
        "2026-01-01 00:00:00.000 1 INFO nova.service [-] Starting compute node\n"
        "2026-01-01 00:00:10.000 1 ERROR oslo.messaging._drivers.impl_rabbit [-] "
        "AMQP server on controller:5672 is unreachable: [Errno 111] ECONNREFUSED\n"
        "2026-01-01 00:00:11.000 1 INFO nova.service [-] still trying\n"
    )
    ctx = context(discover_site)
    lines: list[str] = []
    ctx.log = lines.append
    result = run_step(DiscoverHostsStep(discover_site, timeout=0), ctx)
    assert result.status is Status.FAILED
    error = result.error or ""
    assert "\n" not in error
    assert "compute host 'node1' is not mapped to any cell after 0 s" in error
    assert "Host is not mapped to any cell" in error
    assert str(log) in error
    assert "AMQP server on controller:5672 is unreachable" in error
    assert "discover_hosts --verbose" in error  # the fix
    # nova-manage really ran, and said what it found.
    assert any("Found 0 cell mappings" in line for line in lines), lines


def test_separate_node_waits_for_its_service_not_the_mapping(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No API database in nova.conf: a compute node of its own; the controller maps it."""
    site.nova_conf.parent.mkdir(parents=True)
    site.nova_conf.write_text("[DEFAULT]\n")
    site.os_cloud = "somecloud"
    step = DiscoverHostsStep(site)
    states = iter(["missing", "down", "up", "up"])
    step.service_state = lambda ctx, host: next(states)  # type: ignore[method-assign]
    ctx = context(site)
    observed = step.check(ctx)
    assert observed.separate
    assert step.plan(ctx, observed) == [
        "wait for nova-compute on node1 to register and report up "
        "(the controller then maps it: nova-manage cell_v2 discover_hosts)"
    ]
    monkeypatch.setattr("novaconsole_compute.discover.POLL", 0.01)
    step.apply(ctx, [])  # polls until "up"
    assert any("map it to a cell from the controller" in n for n in ctx.notes)
