"""nova-manage steps: real nova-manage from the lab venv against SQLite in tmp_path."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from novaconsole.errors import StepFailed
from novaconsole.lab.venvs import Venv
from novaconsole.site import Site
from novaconsole.steps import RunContext, Status, run_steps
from novaconsole_controller.databases import SqliteDatabaseStep
from novaconsole_controller.novaconf import NovaConfStep
from novaconsole_controller.schema import (
    CELL0_DIAGNOSIS,
    ApiDbSyncStep,
    DbSyncStep,
    NovaDatabases,
    check_not_swapped,
    diagnose,
    nova_migrations,
    read_migrations,
    run_nova_manage,
    same_url,
    schema_steps,
)

LAB_OPENSTACK_BIN = Path("/root/.local/share/novaconsole/lab/venvs/openstack/bin")


def _swap_sections(path: Path) -> None:
    text = path.read_text()
    text = text.replace("[api_database]", "[SWAP]").replace("[database]", "[api_database]")
    path.write_text(text.replace("[SWAP]", "[database]"))


def test_read_migrations_finds_heads(tmp_path: Path) -> None:
    (tmp_path / "a_initial.py").write_text("revision = 'aaa1'\ndown_revision = None\n")
    (tmp_path / "b_next.py").write_text("revision = 'bbb2'\ndown_revision = 'aaa1'\n")
    (tmp_path / "c_typed.py").write_text(
        "revision: str = 'ccc3'\ndown_revision: str | None = 'bbb2'\n"
    )
    found = read_migrations(tmp_path)
    assert found.heads == {"ccc3"}
    assert found.revisions == {"aaa1", "bbb2", "ccc3"}


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("NovaException: Upgrade DB using Essex release first.", "look swapped"),
        ("alembic.util.exc.CommandError: Can't locate revision identified by 'x'", "look swapped"),
        ("WARNING: cell0 mapping not found - not syncing cell0.", "cell_v2 map_cell0"),
        ("(1045, \"Access denied for user 'nova'@'localhost'\")", "refused the password"),
    ],
)
def test_diagnoses_the_guide_traps(site: Site, output: str, expected: str) -> None:
    found = diagnose(output, site)
    assert found is not None
    assert expected in found


def test_unknown_output_has_no_diagnosis(site: Site) -> None:
    assert diagnose("something else went wrong", site) is None


@pytest.mark.parametrize(
    ("api", "main"),
    [
        ("mysql+pymysql://nova:x@db/nova", "mysql+pymysql://nova:x@db/nova_api"),
        ("sqlite:////d/nova.sqlite", "sqlite:////d/nova_api.sqlite"),
    ],
)
def test_swapped_sections_are_caught_from_database_names(site: Site, api: str, main: str) -> None:
    with pytest.raises(StepFailed, match=r"\[api_database\] and \[database\] look swapped"):
        check_not_swapped(site, NovaDatabases(api, main))


def test_right_way_round_passes(site: Site) -> None:
    check_not_swapped(
        site, NovaDatabases("sqlite:////d/nova_api.sqlite", "sqlite:////d/nova.sqlite")
    )


def test_plans_without_nova_conf_in_dry_run(site: Site) -> None:
    site.nova_bin_dir = LAB_OPENSTACK_BIN
    report = run_steps(schema_steps(site), RunContext(dry_run=True))
    planned = Status.PLANNED
    # No cells yet, so none can point at the wrong database.
    assert [r.status for r in report.results] == [planned] * 3 + [Status.OK, planned]
    assert report.results[0].changes == [
        f"nova-manage api_db sync (nova.conf {site.nova_conf} is not written yet)"
    ]


@pytest.fixture
def nova_site(site: Site, lab_venvs: dict[str, Venv]) -> Site:
    """An SQLite site with nova.conf written, using the lab venv's nova-manage."""
    site.nova_bin_dir = lab_venvs["openstack"].bin
    ctx = RunContext()
    assert run_steps([SqliteDatabaseStep(site, "nova"), NovaConfStep(site)], ctx).ok
    return site


def test_main_schema_in_the_api_database_is_diagnosed_as_swapped(
    site: Site, tmp_path: Path
) -> None:
    """Revision-based detection: names that say nothing, schemas that do."""
    site.nova_bin_dir = LAB_OPENSTACK_BIN
    if not (LAB_OPENSTACK_BIN / "nova-manage").exists():
        pytest.skip("lab venv not installed")
    main_head = sorted(nova_migrations(site)["main"].heads)[0]
    first, second = tmp_path / "first.sqlite", tmp_path / "second.sqlite"
    for path in (first, second):
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
    with sqlite3.connect(first) as conn:
        conn.execute("INSERT INTO alembic_version VALUES (?)", (main_head,))
    site.nova_conf.parent.mkdir(parents=True)
    site.nova_conf.write_text(
        f"[api_database]\nconnection = sqlite:///{first}\n"
        f"[database]\nconnection = sqlite:///{second}\n"
    )
    report = run_steps([ApiDbSyncStep(site)], RunContext())
    assert report.results[0].error is not None
    assert "look swapped" in report.results[0].error
    assert "holds the main schema" in report.results[0].error


@pytest.mark.lab
def test_full_schema_run_then_zero_changes(nova_site: Site) -> None:
    ctx = RunContext()
    first = run_steps(schema_steps(nova_site), ctx)
    changed, ok = Status.CHANGED, Status.OK
    # cell_connections: the cells were just mapped with nova.conf's URLs.
    assert [r.status for r in first.results] == [changed, changed, changed, ok, changed], (
        first.as_dict()
    )
    with sqlite3.connect(nova_site.sqlite_dir / "nova_api.sqlite") as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM cell_mappings")}
    assert names == {"cell0", "cell1"}
    second = run_steps(schema_steps(nova_site), RunContext())
    assert [r.status for r in second.results] == [ok] * 5

    # nova.conf's URLs change (here: the lab's SQLite plugin): the mappings follow.
    nova_site.sqlite_begin_immediate = True
    assert run_steps([NovaConfStep(nova_site)], RunContext()).ok
    moved = run_steps(schema_steps(nova_site), RunContext())
    assert [r.status for r in moved.results] == [ok, ok, ok, changed, ok], moved.as_dict()
    assert moved.results[3].changes == [
        "point cell cell0 (00000000-0000-0000-0000-000000000000) at nova.conf's database URL",
        f"point cell cell1 ({cell_uuid(nova_site)}) at nova.conf's database URL",
    ]
    with sqlite3.connect(nova_site.sqlite_dir / "nova_api.sqlite") as conn:
        urls = dict(conn.execute("SELECT name, database_connection FROM cell_mappings"))
    assert urls["cell0"].endswith("nova_cell0.sqlite?plugin=novaconsole_sqlite_immediate")
    assert urls["cell1"].endswith("/nova.sqlite?plugin=novaconsole_sqlite_immediate")
    assert [r.status for r in run_steps(schema_steps(nova_site), RunContext()).results] == [ok] * 5
    # The guide's trap, after the fact: sections swapped in nova.conf.
    _swap_sections(nova_site.nova_conf)
    swapped = run_steps(schema_steps(nova_site), RunContext())
    error = swapped.results[0].error
    assert error is not None
    assert error.startswith("[api_database] and [database] look swapped")
    assert "Upgrade DB using Essex release first" in error
    # And what nova-manage itself says when run anyway (today: alembic's error).
    with pytest.raises(StepFailed, match="look swapped"):
        run_nova_manage(nova_site, RunContext(), "api_db", "sync")


def cell_uuid(site: Site) -> str:
    with sqlite3.connect(site.sqlite_dir / "nova_api.sqlite") as conn:
        (uuid,) = conn.execute("SELECT uuid FROM cell_mappings WHERE name = 'cell1'").fetchone()
    return str(uuid)


def test_cell_urls_compare_by_meaning_not_spelling() -> None:
    a = "mysql+pymysql://nova:p%40ss@db:3306/nova?charset=utf8&x=1"
    assert same_url(a, "mysql+pymysql://nova:p@ss@db:3306/nova?x=1&charset=utf8")
    assert not same_url(a, "mysql+pymysql://nova:other@db:3306/nova?charset=utf8&x=1")
    assert not same_url("sqlite:////a/nova.sqlite", "sqlite:////a/nova.sqlite?plugin=p")


@pytest.mark.lab
def test_db_sync_before_map_cell0_is_diagnosed(nova_site: Site) -> None:
    ctx = RunContext()
    assert run_steps([ApiDbSyncStep(nova_site)], ctx).ok
    report = run_steps([DbSyncStep(nova_site)], ctx)
    assert report.results[0].status is Status.FAILED
    assert report.results[0].error is not None
    assert CELL0_DIAGNOSIS in report.results[0].error
    # Provisioning in the guide's order repairs it.
    assert run_steps(schema_steps(nova_site), RunContext()).ok
