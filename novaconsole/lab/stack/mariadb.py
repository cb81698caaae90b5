"""A local MariaDB for the lab's Neutron when the rest of the lab is on SQLite.

ML2/OVN cannot run on SQLite (see :mod:`novaconsole.lab.stack.neutron`), so with
networking on, Neutron's database goes to the MariaDB on 127.0.0.1:3306: the machine's
own if one answers, else Debian's, started by the lab (and stopped by ``lab down``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from novaconsole.errors import ConnectionFailure
from novaconsole.fileutil import atomic_write
from novaconsole.lab.config import LabConfig
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
