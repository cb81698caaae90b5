"""A local MariaDB for the lab's Neutron when the rest of the lab is on SQLite.

ML2/OVN cannot run on SQLite (see :mod:`novaconsole.lab.stack.neutron`), so with
networking on, Neutron's database goes to the MariaDB on 127.0.0.1:3306: the machine's
own if one answers, else Debian's, started by the lab (and stopped by ``lab down``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from novaconsole.errors import ConnectionFailure, StepFailed
from novaconsole.fileutil import atomic_write
from novaconsole.lab.config import LOCAL_DB_SERVER, LabConfig
from novaconsole.services import port_owner
from novaconsole.steps import RunContext, Step

MARIADBD = Path("/usr/sbin/mariadbd")


def mariadb_marker(config: LabConfig) -> Path:
    """Present when this lab started the MariaDB server (so ``lab down`` stops it)."""
    return config.state_dir / "mariadb-started-by-lab"


class LocalMariaDBStep(Step[bool]):
    """A MariaDB server answering on 127.0.0.1:3306 (started as root when none does)."""

    name = "lab.mariadb"
    phase = "prepare"
    description = "MariaDB on 127.0.0.1:3306 for Neutron's database"

    def __init__(self, config: LabConfig) -> None:
        self.config = config

    def check(self, ctx: RunContext) -> bool:
        return port_owner("127.0.0.1", 3306)

    def plan(self, ctx: RunContext, observed: bool) -> list[str]:
        return [] if observed else ["start a local MariaDB server (none answers on 3306)"]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        if os.geteuid() != 0 or not MARIADBD.exists():
            raise ConnectionFailure(
                "no database server answers on 127.0.0.1:3306 (Neutron with OVN needs one)",
                hint="start MariaDB there, pass --db URL, or use --networking none",
            )
        run_dir = Path("/run/mysqld")
        run_dir.mkdir(parents=True, exist_ok=True)
        if shutil.which("chown"):
            subprocess.run(["chown", "mysql:mysql", str(run_dir)], check=False, timeout=10)
        subprocess.run(
            ["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", str(MARIADBD)],
            check=False,
            timeout=30,
        )
        atomic_write(mariadb_marker(self.config), "started by novaconsole lab up\n")
        deadline = time.monotonic() + 60
        while not port_owner("127.0.0.1", 3306):
            if time.monotonic() > deadline:
                raise ConnectionFailure("MariaDB did not come up on 127.0.0.1:3306 within 60 s")
            time.sleep(1)


@contextlib.contextmanager
def local_mariadb() -> Iterator[Any]:
    """An admin connection to the lab's local MariaDB (the lab's LOCAL_DB_SERVER)."""
    import pymysql

    from novaconsole.dburl import parse_server_url

    server = parse_server_url(LOCAL_DB_SERVER)
    try:
        conn = pymysql.connect(
            host=server.host,
            port=server.port,
            user=server.user,
            password=server.password or "",
            connect_timeout=5,
            autocommit=True,
        )
    except pymysql.err.OperationalError as exc:
        raise ConnectionFailure(
            f"database server {server.where}: cannot connect ({exc.args[0]})"
        ) from exc
    try:
        yield conn
    finally:
        conn.close()


def neutron_db_marker(config: LabConfig) -> Path:
    """Present once this lab's state directory owns the Neutron database on MariaDB."""
    return config.data_dir / "neutron-database-owned"


class StaleNeutronDatabaseStep(Step[str]):
    """Neutron's database on the local MariaDB belongs to this lab, not an earlier one.

    The database outlives the lab's state directory (MariaDB keeps it elsewhere). A lab
    made again in a new state directory (``rm -rf`` of the old one, the cold benchmark)
    has a new Keystone and new, empty OVN databases: an old Neutron database then holds
    the old lab's networks, in projects that no longer exist and switches OVN never saw,
    and the lab's own network steps find them by name and keep them. So a Neutron
    database that predates this state directory's OVN databases is dropped, to be created
    afresh; one that came with them (or a lab from before this marker) is kept.
    """

    name = "lab.neutron.stale-database"
    phase = "prepare"
    description = "Neutron's database on 127.0.0.1:3306 is this lab's (not an earlier lab's)"

    def __init__(self, config: LabConfig, database: str = "neutron") -> None:
        self.config = config
        self.database = database

    def _exists(self) -> bool:
        with local_mariadb() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                (self.database,),
            )
            return cur.fetchone() is not None

    def check(self, ctx: RunContext) -> str:
        """ "owned", "adopt" (came with this lab's OVN databases), "absent" or "stale"."""
        if neutron_db_marker(self.config).exists():
            return "owned"
        if (self.config.ovs_dir / "ovnnb.db").exists():
            return "adopt"
        if ctx.dry_run and not port_owner("127.0.0.1", 3306):
            return "absent"
        if not self._exists():
            return "absent"
        other = self._other_owner()
        if other is not None:
            raise StepFailed(
                f"database {self.database} on 127.0.0.1:3306 belongs to the lab in {other}",
                hint="one lab with OVN networking per machine: lab down there and remove it, "
                "or give this lab --networking none or --db URL",
            )
        return "stale"

    def _other_owner(self) -> Path | None:
        """The default lab's state directory, if it is another one that owns the database."""
        from novaconsole.lab.venvs import default_state_dir

        other = default_state_dir()
        if other.resolve() == self.config.state_dir.resolve():
            return None
        marker = LabConfig(state_dir=other).data_dir / neutron_db_marker(self.config).name
        return other if marker.exists() else None

    def plan(self, ctx: RunContext, observed: str) -> list[str]:
        if observed == "stale":
            return [
                f"drop database {self.database} on 127.0.0.1:3306: an earlier lab's, older "
                f"than this lab's Keystone and OVN databases (created again next)"
            ]
        if observed in ("adopt", "absent"):
            return [f"record that this lab owns database {self.database}"]
        return []

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        if self.check(ctx) == "stale":
            with local_mariadb() as conn, conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(neutron_db_marker(self.config), f"{self.database}\n")
