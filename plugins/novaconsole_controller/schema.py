"""The guide's "populate the databases" part: nova-manage syncs and cell mappings.

``api_db sync``, ``cell_v2 map_cell0``, ``cell_v2 create_cell --name=cell1``, ``db sync``
and ``cell_v2 list_cells``, each run only when needed. nova-manage takes about ten seconds
to start on a small machine, so the checks read the databases directly: the alembic
revision of each schema (compared with the heads shipped in the installed nova package)
and the ``cell_mappings`` table. The guide's traps get a diagnosis and a fix:
``[api_database]`` and ``[database]`` swapped ("Upgrade DB using Essex release first", or
with today's alembic migrations "Can't locate revision"), and "cell0 mapping not found".
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from novaconsole.dburl import database_name, mysql_connect, sqlite_file
from novaconsole.errors import ConfigError, ConnectionFailure, StepFailed
from novaconsole.iniconf import IniDocument
from novaconsole.redact import scrub_secrets
from novaconsole.site import Site
from novaconsole.steps import RunContext, Step

CELL0_UUID = "00000000-0000-0000-0000-000000000000"
CELL1_NAME = "cell1"
NOVA_MANAGE_TIMEOUT = 900.0

SWAPPED_DIAGNOSIS = (
    "[api_database] and [database] look swapped in {conf}: [api_database] connection must "
    "name the nova_api database and [database] connection the nova database "
    '(the guide\'s "Upgrade DB using Essex release first" trap); fix nova.conf, then re-run'
)
CELL0_DIAGNOSIS = (
    '"cell0 mapping not found": db sync ran before cell0 was mapped, so the cell0 database '
    "has no schema; fix: nova-manage cell_v2 map_cell0, then nova-manage db sync again "
    "(re-running provisioning does both in order)"
)

_REVISION = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*(.+)$", re.M)


# -- locating nova ------------------------------------------------------------------


def nova_manage_path(site: Site) -> Path:
    """The nova-manage to run (``site.nova_bin_dir`` or ``PATH``), or a ConfigError."""
    if site.nova_bin_dir is not None:
        path = site.nova_bin_dir / "nova-manage"
        if not os.access(path, os.X_OK):
            raise ConfigError(f"nova-manage not found in nova_bin_dir {site.nova_bin_dir}")
        return path
    found = shutil.which("nova-manage")
    if not found:
        raise ConfigError("nova-manage is not on PATH", hint="set nova_bin_dir in the site file")
    return Path(found)


def nova_package_dir(nova_manage: Path) -> Path:
    """The installed ``nova`` package used by this nova-manage (via its interpreter)."""
    try:
        first = nova_manage.read_text(errors="replace").splitlines()[0]
    except (OSError, IndexError):
        first = ""
    python = (
        Path(first[2:].strip().split()[0]) if first.startswith("#!") and first[2:].strip() else None
    )
    if python is not None:
        prefix = python.parent.parent
        for candidate in sorted(prefix.glob("lib/python3*/site-packages/nova")):
            if (candidate / "db").is_dir():
                return candidate
        proc = subprocess.run(
            [str(python), "-c", "import importlib.util as u; print(u.find_spec('nova').origin)"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if proc.returncode == 0 and proc.stdout.strip():
            return Path(proc.stdout.strip()).parent
    raise ConfigError(f"cannot find the nova package used by {nova_manage}")


@dataclass(frozen=True)
class Migrations:
    """The alembic revisions of one nova schema (api or main) in the installed package."""

    heads: frozenset[str]
    revisions: frozenset[str]


def read_migrations(versions_dir: Path) -> Migrations:
    """Heads and all revisions from an alembic ``versions`` directory."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in versions_dir.glob("*.py"):
        text = path.read_text(encoding="utf-8", errors="replace")
        for kind, value in _REVISION.findall(text):
            ids = set(re.findall(r"['\"]([0-9a-f]+)['\"]", value))
            (revisions if kind == "revision" else parents).update(ids)
    if not revisions:
        raise ConfigError(f"no alembic migrations found in {versions_dir}")
    return Migrations(frozenset(revisions - parents), frozenset(revisions))


def nova_migrations(site: Site) -> dict[str, Migrations]:
    """``{"api": ..., "main": ...}`` for the nova that ``site`` runs."""
    package = nova_package_dir(nova_manage_path(site))
    return {
        "api": read_migrations(package / "db" / "api" / "migrations" / "versions"),
        "main": read_migrations(package / "db" / "main" / "migrations" / "versions"),
    }


# -- reading the databases ----------------------------------------------------------


def query_rows(url: str, sql: str) -> list[tuple[Any, ...]] | None:
    """Rows of ``sql`` on ``url``; None when the database or table does not exist."""
    where = scrub_secrets(url)
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        if not path.exists() or path.stat().st_size == 0:
            return None
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                return list(conn.execute(sql).fetchall())
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise ConnectionFailure(f"cannot read {path}: {exc}") from None
    import pymysql

    try:
        conn = mysql_connect(url)
    except pymysql.err.OperationalError as exc:
        code = exc.args[0] if exc.args else None
        if code == 1049:  # unknown database
            return None
        if code == 1045:
            raise ConnectionFailure(
                f"database {where}: access denied (nova.conf password does not match the "
                "database user's; re-run the database step)"
            ) from None
        raise ConnectionFailure(f"cannot connect to database {where} (error {code})") from None
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    except pymysql.err.ProgrammingError as exc:
        if exc.args and exc.args[0] == 1146:  # no such table
            return None
        raise ConnectionFailure(f"cannot read database {where}: {exc.args[-1]}") from None
    finally:
        conn.close()


def same_url(a: str, b: str) -> bool:
    """Whether two SQLAlchemy URLs name the same database the same way (quoting aside)."""
    pa, pb = urlsplit(a.strip()), urlsplit(b.strip())
    return (
        pa.scheme == pb.scheme
        and unquote(pa.username or "") == unquote(pb.username or "")
        and unquote(pa.password or "") == unquote(pb.password or "")
        and (pa.hostname or "") == (pb.hostname or "")
        and pa.port == pb.port
        and pa.path == pb.path
        and sorted(parse_qsl(pa.query)) == sorted(parse_qsl(pb.query))
    )


def update_rows(url: str, sql: str, params: tuple[Any, ...]) -> None:
    """Run one parameterised write (``%s`` placeholders) on the database at ``url``."""
    where = scrub_secrets(url)
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        try:
            with sqlite3.connect(path, timeout=30) as conn:
                conn.execute(sql.replace("%s", "?"), params)
        except sqlite3.Error as exc:
            raise ConnectionFailure(f"cannot write {path}: {exc}") from None
        return
    import pymysql

    try:
        conn = mysql_connect(url, autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
        finally:
            conn.close()
    except pymysql.err.MySQLError as exc:
        raise ConnectionFailure(f"cannot write database {where}: {exc.args[-1]}") from None


def schema_revision(url: str) -> str | None:
    """The alembic revision of the database at ``url`` (None: empty or missing)."""
    rows = query_rows(url, "SELECT version_num FROM alembic_version")
    return str(rows[0][0]) if rows else None


@dataclass(frozen=True)
class CellMapping:
    uuid: str
    name: str
    database_connection: str


def cell_mappings(api_url: str) -> list[CellMapping]:
    """The cell mappings in the API database (empty before ``api_db sync``)."""
    rows = query_rows(api_url, "SELECT uuid, name, database_connection FROM cell_mappings")
    return [CellMapping(str(u), str(n or ""), str(c or "")) for u, n, c in rows or []]


# -- nova.conf and nova-manage -------------------------------------------------------


@dataclass
class NovaDatabases:
    """The two connection URLs nova.conf names (None: not written yet)."""

    api_url: str | None
    main_url: str | None


def configured_databases(site: Site) -> NovaDatabases:
    doc = IniDocument.load(site.nova_conf)
    return NovaDatabases(doc.get("api_database", "connection"), doc.get("database", "connection"))


def check_not_swapped(site: Site, dbs: NovaDatabases) -> None:
    """Raise the swapped-sections diagnosis if the URLs' database names say so."""
    if not dbs.api_url or not dbs.main_url:
        return
    api, main = database_name(dbs.api_url) or "", database_name(dbs.main_url) or ""
    if ("api" in main and "api" not in api) or (api == "nova" and main == "nova_api"):
        raise StepFailed(
            SWAPPED_DIAGNOSIS.format(conf=site.nova_conf)
            + f" (now [api_database] names {api!r}, [database] names {main!r})"
        )


def diagnose(output: str, site: Site) -> str | None:
    """A diagnosis for nova-manage output that shows one of the known traps."""
    if "Upgrade DB using Essex release first" in output or "Can't locate revision" in output:
        return SWAPPED_DIAGNOSIS.format(conf=site.nova_conf)
    if "cell0 mapping not found" in output:
        return CELL0_DIAGNOSIS
    if "Access denied for user" in output:
        return (
            f"the database refused the password in {site.nova_conf}: it does not match "
            "the database user's (NOVA_DBPASS); re-run the database step"
        )
    if "unable to open database file" in output.lower():
        return f"a SQLite database file named in {site.nova_conf} cannot be opened (directory?)"
    if "Can't connect to MySQL server" in output:
        return f"the database server named in {site.nova_conf} cannot be reached"
    return None


def run_nova_manage(site: Site, ctx: RunContext, *args: str) -> str:
    """Run ``nova-manage --config-file NOVA_CONF ARGS``; output comes back scrubbed.

    No secret is ever on the command line; a failure raises StepFailed with the
    diagnosis of a known trap or the last lines of (scrubbed) output.
    """
    argv = [str(nova_manage_path(site)), "--config-file", str(site.nova_conf), *args]
    ctx.log(f"running nova-manage {' '.join(scrub_secrets(a) for a in args)}")
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            timeout=NOVA_MANAGE_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise StepFailed(
            f"nova-manage {' '.join(args)} did not finish within {NOVA_MANAGE_TIMEOUT:.0f}s"
        ) from None
    output = scrub_secrets(proc.stdout + proc.stderr, site.secrets.values())
    known = diagnose(output, site)
    if proc.returncode != 0 or (known and known.startswith(("[api_database]", '"cell0'))):
        lines = [ln for ln in output.splitlines() if ln.strip() and "Warning" not in ln]
        tail = " | ".join(ln.strip() for ln in lines[-2:])[:300]
        raise StepFailed(
            f"nova-manage {' '.join(args)} failed (exit {proc.returncode}): "
            + (known or tail or "no output")
        )
    return output


# -- the steps ------------------------------------------------------------------------


@dataclass
class SchemaObserved:
    """What the databases hold now."""

    conf_missing: bool = False
    api_revision: str | None = None
    main_revision: str | None = None
    cell0_revision: str | None = None
    cells: list[CellMapping] = field(default_factory=list)


class _SchemaStep(Step[SchemaObserved]):
    phase = "schema"

    def __init__(self, site: Site) -> None:
        self.site = site
        self._migrations: dict[str, Migrations] | None = None

    @property
    def migrations(self) -> dict[str, Migrations]:
        if self._migrations is None:
            self._migrations = nova_migrations(self.site)
        return self._migrations

    def check(self, ctx: RunContext) -> SchemaObserved:
        dbs = configured_databases(self.site)
        if not dbs.api_url or not dbs.main_url:
            return SchemaObserved(conf_missing=True)
        check_not_swapped(self.site, dbs)
        observed = SchemaObserved(api_revision=schema_revision(dbs.api_url))
        if observed.api_revision in self.migrations["main"].revisions:
            raise StepFailed(
                SWAPPED_DIAGNOSIS.format(conf=self.site.nova_conf)
                + " (the [api_database] database holds the main schema)"
            )
        observed.main_revision = schema_revision(dbs.main_url)
        if observed.main_revision in self.migrations["api"].revisions:
            raise StepFailed(
                SWAPPED_DIAGNOSIS.format(conf=self.site.nova_conf)
                + " (the [database] database holds the API schema)"
            )
        if observed.api_revision is not None:
            observed.cells = cell_mappings(dbs.api_url)
        cell0 = next((c for c in observed.cells if c.uuid == CELL0_UUID), None)
        if cell0 is not None and cell0.database_connection:
            observed.cell0_revision = schema_revision(cell0.database_connection)
        return observed

    def _when_conf_missing(self, observed: SchemaObserved, what: str) -> list[str]:
        return [f"{what} (nova.conf {self.site.nova_conf} is not written yet)"]


class ApiDbSyncStep(_SchemaStep):
    """``nova-manage api_db sync`` when the API schema is not at the package's head."""

    name = "controller.schema.api_db"
    description = "nova-manage api_db sync"

    def plan(self, ctx: RunContext, observed: SchemaObserved) -> list[str]:
        if observed.conf_missing:
            return self._when_conf_missing(observed, "nova-manage api_db sync")
        if observed.api_revision in self.migrations["api"].heads:
            return []
        return [f"nova-manage api_db sync (API schema at {observed.api_revision or 'nothing'})"]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        run_nova_manage(self.site, ctx, "api_db", "sync")


class MapCell0Step(_SchemaStep):
    """``nova-manage cell_v2 map_cell0`` when no cell0 mapping exists."""

    name = "controller.schema.map_cell0"
    description = "nova-manage cell_v2 map_cell0"

    def _args(self) -> list[str]:
        if self.site.database_url_for("nova") is None:
            from novaconsole.dburl import connection_url

            # The default would be "<nova db file>_cell0"; name the file explicitly.
            return ["--database_connection", connection_url(self.site, "nova", "nova_cell0")]
        return []  # nova derives <main database>_cell0 with the same credentials

    def plan(self, ctx: RunContext, observed: SchemaObserved) -> list[str]:
        if observed.conf_missing:
            return self._when_conf_missing(observed, "nova-manage cell_v2 map_cell0")
        if any(c.uuid == CELL0_UUID for c in observed.cells):
            return []
        return ["nova-manage cell_v2 map_cell0"]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        run_nova_manage(self.site, ctx, "cell_v2", "map_cell0", *self._args())


class CreateCell1Step(_SchemaStep):
    """``nova-manage cell_v2 create_cell --name=cell1`` when no cell1 exists."""

    name = "controller.schema.cell1"
    description = "nova-manage cell_v2 create_cell --name=cell1"

    def plan(self, ctx: RunContext, observed: SchemaObserved) -> list[str]:
        if observed.conf_missing:
            return self._when_conf_missing(observed, "nova-manage cell_v2 create_cell --name=cell1")
        if any(c.name == CELL1_NAME for c in observed.cells):
            return []
        return ["nova-manage cell_v2 create_cell --name=cell1"]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        run_nova_manage(self.site, ctx, "cell_v2", "create_cell", f"--name={CELL1_NAME}")


class CellConnectionsStep(_SchemaStep):
    """The cell mappings point at the databases nova.conf names (a changed URL follows).

    cell0 and cell1 record their database URL when they are mapped; a later change of the
    URL in nova.conf (a new password, a SQLite option) would leave conductor and the API on
    the old one. ``nova-manage cell_v2 update_cell`` takes the URL, password included, on
    its command line, where every process on the host can read it; the step updates the
    API database's ``cell_mappings`` row itself, with the URL as a query parameter.
    """

    name = "controller.schema.cell_connections"
    description = "cell0 and cell1 mappings use nova.conf's database URLs"

    def _wanted(self) -> dict[str, str]:
        from novaconsole.dburl import connection_url

        return {
            "cell0": connection_url(self.site, "nova", "nova_cell0"),
            CELL1_NAME: connection_url(self.site, "nova", "nova"),
        }

    def _drifted(self, observed: SchemaObserved) -> list[CellMapping]:
        wanted = self._wanted()
        drifted = []
        for cell in observed.cells:
            name = "cell0" if cell.uuid == CELL0_UUID else cell.name
            if name in wanted and not same_url(cell.database_connection, wanted[name]):
                drifted.append(cell)
        return drifted

    def plan(self, ctx: RunContext, observed: SchemaObserved) -> list[str]:
        if observed.conf_missing:
            return []
        return [
            f"point cell {'cell0' if c.uuid == CELL0_UUID else c.name} ({c.uuid}) at "
            "nova.conf's database URL"
            for c in self._drifted(observed)
        ]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        observed = self.check(ctx)
        api_url = configured_databases(self.site).api_url
        if api_url is None:
            raise StepFailed(f"{self.site.nova_conf} has no [api_database] connection")
        wanted = self._wanted()
        for cell in self._drifted(observed):
            url = wanted["cell0" if cell.uuid == CELL0_UUID else cell.name]
            update_rows(
                api_url,
                "UPDATE cell_mappings SET database_connection = %s WHERE uuid = %s",
                (url, cell.uuid),
            )


class DbSyncStep(_SchemaStep):
    """``nova-manage db sync`` (cell0 and the main database), proven by ``list_cells``."""

    name = "controller.schema.db"
    description = "nova-manage db sync, then cell_v2 list_cells"

    def plan(self, ctx: RunContext, observed: SchemaObserved) -> list[str]:
        if observed.conf_missing:
            return self._when_conf_missing(observed, "nova-manage db sync")
        heads = self.migrations["main"].heads
        stale = []
        if observed.main_revision not in heads:
            stale.append(f"main schema at {observed.main_revision or 'nothing'}")
        if observed.cell0_revision not in heads:
            stale.append(f"cell0 schema at {observed.cell0_revision or 'nothing'}")
        return [f"nova-manage db sync ({', '.join(stale)})"] if stale else []

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        run_nova_manage(self.site, ctx, "db", "sync")

    def verify(self, ctx: RunContext) -> None:
        observed = self.check(ctx)
        if not any(c.uuid == CELL0_UUID for c in observed.cells):
            raise StepFailed(CELL0_DIAGNOSIS)
        if observed.cell0_revision not in self.migrations["main"].heads:
            raise StepFailed(CELL0_DIAGNOSIS)
        super().verify(ctx)
        listing = run_nova_manage(self.site, ctx, "cell_v2", "list_cells")
        missing = [n for n in ("cell0", CELL1_NAME) if f" {n} " not in listing]
        if missing:
            raise StepFailed(f"nova-manage cell_v2 list_cells does not show {', '.join(missing)}")


def schema_steps(site: Site) -> list[Step[Any]]:
    """The guide's order: api_db sync, map_cell0, create_cell cell1, db sync."""
    return [
        ApiDbSyncStep(site),
        MapCell0Step(site),
        CreateCell1Step(site),
        CellConnectionsStep(site),
        DbSyncStep(site),
    ]
