"""The lab's SQLite plugin, with the real oslo.db and SQLAlchemy of the lab venv.

Three processes run read-then-write transactions on one SQLite file through oslo.db's
engine factory, as Nova's services do. With oslo.db's plain deferred BEGIN some of them
fail at once with "database is locked" (SQLite refuses a lock upgrade that would deadlock,
without waiting); with ``?plugin=novaconsole_sqlite_immediate`` none fails and no update
is lost. Needs the lab venvs (installed if missing), not a running lab.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from novaconsole.dburl import SQLITE_IMMEDIATE_QUERY
from novaconsole.lab.venvs import Venv

pytestmark = pytest.mark.lab

WORKER = """\
import sys, time
from oslo_db.sqlalchemy import engines
from sqlalchemy import text

url, rounds = sys.argv[1], int(sys.argv[2])
engine = engines.create_engine(url)
locked = 0
for _ in range(rounds):
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT v FROM counter WHERE id = 1")).scalar()
            time.sleep(0.002)  # work between the read and the write, as an ORM does
            conn.execute(text("UPDATE counter SET v = v + 1 WHERE id = 1"))
    except Exception as exc:  # noqa: BLE001 - counted, and anything else re-raised
        if "database is locked" not in str(exc):
            raise
        locked += 1
print(locked)
"""

PROCESSES = 3
ROUNDS = 150


def contend(python: Path, url: str) -> list[int]:
    workers = [
        subprocess.Popen(
            [str(python), "-c", WORKER, url, str(ROUNDS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    locked = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-2000:]
        locked.append(int(out.strip()))
    return locked


def counter_db(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
        conn.execute("INSERT INTO counter VALUES (1, 0)")


def counter(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        (value,) = conn.execute("SELECT v FROM counter WHERE id = 1").fetchone()
    return int(value)


def test_deferred_begin_loses_writes_and_begin_immediate_does_not(
    tmp_path: Path, lab_venvs: dict[str, Venv]
) -> None:
    python = lab_venvs["openstack"].python
    plain = tmp_path / "plain.sqlite"
    counter_db(plain)
    locked = contend(python, f"sqlite:///{plain}")
    # The failure the plugin exists for, shown on the real stack (not a fake).
    assert sum(locked) > 0
    assert counter(plain) == PROCESSES * ROUNDS - sum(locked)

    immediate = tmp_path / "immediate.sqlite"
    counter_db(immediate)
    assert contend(python, f"sqlite:///{immediate}{SQLITE_IMMEDIATE_QUERY}") == [0] * PROCESSES
    assert counter(immediate) == PROCESSES * ROUNDS


def test_the_plugin_is_installed_in_every_openstack_venv(lab_venvs: dict[str, Venv]) -> None:
    probe = (
        "from sqlalchemy import create_engine, text\n"
        "e = create_engine('sqlite://" + SQLITE_IMMEDIATE_QUERY + "')\n"
        "with e.begin() as c:\n"
        "    print(c.exec_driver_sql('PRAGMA busy_timeout').scalar())\n"
    )
    from novaconsole.lab.venvs import SQLITE_PLUGIN

    databased = [v for v in lab_venvs.values() if SQLITE_PLUGIN in v.packages]
    assert {v.name for v in databased} == {"openstack", "neutron"}  # not the agent's venv
    for venv in databased:
        proc = subprocess.run(
            [str(venv.python), "-c", probe], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, f"{venv.name}: {proc.stderr[-1000:]}"
        assert proc.stdout.strip() == "30000", venv.name
