"""The lab's Neutron database on the local MariaDB: an earlier lab's is dropped, this
lab's kept, another live lab's refused (on the real server, throw-away database names)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from novaconsole.errors import StepFailed
from novaconsole.lab.config import LabConfig
from novaconsole.lab.stack.mariadb import StaleNeutronDatabaseStep, neutron_db_marker
from novaconsole.steps import RunContext, Status, run_steps

pytestmark = pytest.mark.mariadb


def _sql(statement: str, *args: str) -> tuple[tuple[object, ...], ...]:
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, args)
            return tuple(cur.fetchall())
    finally:
        conn.close()


def exists(name: str) -> bool:
    found = "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s"
    return bool(_sql(found, name))


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A throw-away database standing in for ``neutron``, with a table in it."""
    name = f"nctest_neutron_{secrets.token_hex(3)}"
    _sql(f"CREATE DATABASE `{name}`")
    _sql(f"CREATE TABLE `{name}`.networks (id INT)")
    # The default lab is elsewhere (and owns nothing) unless a test says otherwise.
    monkeypatch.setenv("NOVACONSOLE_LAB_DIR", str(tmp_path / "default-lab"))
    yield name
    _sql(f"DROP DATABASE IF EXISTS `{name}`")


def step_for(state: Path, database: str) -> StaleNeutronDatabaseStep:
    return StaleNeutronDatabaseStep(LabConfig(state_dir=state), database=database)


def test_an_earlier_labs_database_is_dropped_in_a_new_state_directory(
    tmp_path: Path, database: str
) -> None:
    step = step_for(tmp_path / "lab", database)
    dry = run_steps([step], RunContext(dry_run=True))
    assert dry.results[0].status is Status.PLANNED
    assert dry.results[0].changes[0].startswith(f"drop database {database} on 127.0.0.1:3306")
    assert exists(database)  # a dry run drops nothing
    done = run_steps([step], RunContext())
    assert done.results[0].status is Status.CHANGED, done.results[0].error
    assert not exists(database)
    assert neutron_db_marker(step.config).read_text() == f"{database}\n"
    # Once owned, the database this lab then creates is kept on every later run.
    _sql(f"CREATE DATABASE `{database}`")
    again = run_steps([step], RunContext())
    assert again.results[0].status is Status.OK
    assert exists(database)


def test_a_database_that_came_with_this_labs_ovn_databases_is_kept(
    tmp_path: Path, database: str
) -> None:
    # A lab from before the marker: its OVN northbound database is as old as its Neutron one.
    config = LabConfig(state_dir=tmp_path / "lab")
    config.ovs_dir.mkdir(parents=True)
    (config.ovs_dir / "ovnnb.db").write_text("")
    result = run_steps([step_for(config.state_dir, database)], RunContext())
    assert result.results[0].status is Status.CHANGED
    assert result.results[0].changes == [f"record that this lab owns database {database}"]
    assert exists(database)
    assert _sql(f"SELECT COUNT(*) FROM `{database}`.networks") == ((0,),)


def test_the_default_labs_database_is_refused_not_dropped(
    tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = LabConfig(state_dir=tmp_path / "default-lab")
    default.data_dir.mkdir(parents=True)
    neutron_db_marker(default).write_text(f"{database}\n")
    monkeypatch.setenv("NOVACONSOLE_LAB_DIR", str(default.state_dir))
    step = step_for(tmp_path / "second-lab", database)
    with pytest.raises(StepFailed, match=f"belongs to the lab in {default.state_dir}"):
        step.check(RunContext())
    result = run_steps([step], RunContext())
    assert result.results[0].status is Status.FAILED
    assert exists(database)
