"""The guide's "create the databases" step: CREATE DATABASE, users and grants, or SQLite files.

With a database server (``Site.database_url``) each service gets its databases, an account
``'SERVICE'@'localhost'`` and ``'SERVICE'@'%'`` and ``ALL PRIVILEGES`` on each database,
through PyMySQL. Identifiers are validated and back-quoted; passwords only ever travel as
bound parameters, so no SQL text we could log holds one. A password that no longer works is
reset. Without a server, the SQLite files are created under ``Site.sqlite_dir`` (0750).
"""

from __future__ import annotations

import os
import sqlite3
import stat
from dataclasses import dataclass, field
from typing import Any

from novaconsole.dburl import (
    SERVICE_DATABASES,
    SERVICE_DB_SECRETS,
    DatabaseServer,
    database_user,
    parse_server_url,
    sqlite_path,
)
from novaconsole.errors import ConfigError, ConnectionFailure, StepFailed
from novaconsole.site import Site, valid_identifier
from novaconsole.steps import RunContext, Step

#: Hosts each service account is created for (the guide's 'localhost' and '%').
ACCOUNT_HOSTS: tuple[str, ...] = ("localhost", "%")
SQLITE_DIR_MODE = 0o750
SQLITE_FILE_MODE = 0o640

# MySQL error numbers we explain in one line.
_ACCESS_DENIED = 1045
_CANNOT_CONNECT = (2003, 2005, 2006, 2013)


def admin_connection(ctx: RunContext, server: DatabaseServer) -> Any:
    """The admin PyMySQL connection, opened once per run and kept in ``ctx.cache``."""
    key = f"pymysql:{server.user}@{server.where}"
    conn = ctx.cache.get(key)
    if conn is None:
        conn = open_mysql(server.host, server.port, server.user, server.password)
        ctx.cache[key] = conn
    return conn


def open_mysql(host: str, port: int, user: str, password: str | None) -> Any:
    """A PyMySQL connection (autocommit), or a one-line ConnectionFailure naming host:port."""
    import pymysql

    try:
        return pymysql.connect(
            host=host,
            port=port,
            user=user,
            password=password or "",
            connect_timeout=5,
            autocommit=True,
            charset="utf8mb4",
        )
    except pymysql.err.OperationalError as exc:
        code = exc.args[0] if exc.args else None
        if code == _ACCESS_DENIED:
            raise ConnectionFailure(
                f"database server {host}:{port} refused user {user!r}: wrong password",
                hint="set DB_ROOT_PASS for the admin account"
                if user == "root"
                else "the account's password is wrong",
            ) from None
        if code in _CANNOT_CONNECT:
            raise ConnectionFailure(
                f"cannot connect to the database server at {host}:{port}"
            ) from None
        raise ConnectionFailure(
            f"database server {host}:{port}: error {code} for user {user!r}"
        ) from None


def password_works(server: DatabaseServer, user: str, password: str) -> bool:
    """True when ``user`` can log in to the server with ``password``."""
    try:
        conn = open_mysql(server.host, server.port, user, password)
    except ConnectionFailure as exc:
        if "wrong password" in str(exc):
            return False
        raise
    conn.close()
    return True


def quote_identifier(name: str, what: str = "database name") -> str:
    """A validated identifier in back-quotes (validation rules out quotes inside)."""
    return f"`{valid_identifier(name, what)}`"


@dataclass
class ServerObserved:
    """What the database server holds for one service."""

    databases: set[str] = field(default_factory=set)
    #: Hosts of the service's existing accounts.
    accounts: set[str] = field(default_factory=set)
    #: Databases on which each account host has ALL PRIVILEGES.
    grants: dict[str, set[str]] = field(default_factory=dict)
    #: Whether the service password logs in (None: no account to try yet).
    password_ok: bool | None = None


def _granted_databases(rows: list[tuple[Any, ...]]) -> set[str]:
    found: set[str] = set()
    for (line,) in rows:
        text = str(line)
        if not text.upper().startswith("GRANT ALL PRIVILEGES ON "):
            continue
        target = text[len("GRANT ALL PRIVILEGES ON ") :].split(" TO ", 1)[0].strip()
        db, _, table = target.rpartition(".")
        if table == "*":
            found.add(db.strip("`").replace("\\_", "_"))
    return found


class ServerDatabaseStep(Step[ServerObserved]):
    """Databases, accounts and grants of one service on a MySQL/MariaDB server."""

    phase = "database"

    def __init__(
        self,
        site: Site,
        service: str,
        *,
        user: str | None = None,
        databases: tuple[str, ...] | None = None,
    ) -> None:
        server_url = site.database_url_for(service)
        if server_url is None:
            raise ConfigError("ServerDatabaseStep needs a database server for " + service)
        self.site = site
        self.service = service
        self.user = valid_identifier(user or database_user(service), "database user")
        self.databases = tuple(
            valid_identifier(db, "database name")
            for db in (databases or SERVICE_DATABASES[service])
        )
        self.secret_name = SERVICE_DB_SECRETS[service]
        self.server = parse_server_url(server_url)
        self.name = f"controller.database.{service}"
        self.description = (
            f"databases {', '.join(self.databases)} and grants for '{self.user}' "
            f"on {self.server.where}"
        )

    def _password(self) -> str:
        return self.site.secret(self.secret_name)

    def check(self, ctx: RunContext) -> ServerObserved:
        password = self._password()  # a missing secret fails before anything is touched
        conn = admin_connection(ctx, self.server)
        observed = ServerObserved()
        with conn.cursor() as cur:
            cur.execute(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN ("
                + ",".join(["%s"] * len(self.databases))
                + ")",
                self.databases,
            )
            observed.databases = {str(row[0]) for row in cur.fetchall()}
            cur.execute("SELECT Host FROM mysql.user WHERE User = %s", (self.user,))
            observed.accounts = {str(row[0]) for row in cur.fetchall()} & set(ACCOUNT_HOSTS)
            for host in sorted(observed.accounts):
                cur.execute("SHOW GRANTS FOR %s@%s", (self.user, host))
                observed.grants[host] = _granted_databases(list(cur.fetchall()))
        if observed.accounts:
            observed.password_ok = password_works(self.server, self.user, password)
        return observed

    def plan(self, ctx: RunContext, observed: ServerObserved) -> list[str]:
        changes = [f"create database {db}" for db in self.databases if db not in observed.databases]
        for host in ACCOUNT_HOSTS:
            account = f"'{self.user}'@'{host}'"
            if host not in observed.accounts:
                changes.append(f"create user {account} (password from {self.secret_name})")
            granted = observed.grants.get(host, set())
            changes += [
                f"grant all privileges on {db}.* to {account}"
                for db in self.databases
                if db not in granted
            ]
        if observed.password_ok is False:
            changes.append(
                f"reset the password of '{self.user}' (it no longer matches {self.secret_name})"
            )
        return changes

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        observed = self.check(ctx)
        password = self._password()
        conn = admin_connection(ctx, self.server)
        with conn.cursor() as cur:
            for db in self.databases:
                if db not in observed.databases:
                    cur.execute(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(db)}")
            for host in ACCOUNT_HOSTS:
                if host not in observed.accounts:
                    # The password is a bound parameter: it never appears in SQL text.
                    cur.execute(
                        "CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s",
                        (self.user, host, password),
                    )
                elif observed.password_ok is False:
                    cur.execute("ALTER USER %s@%s IDENTIFIED BY %s", (self.user, host, password))
                granted = observed.grants.get(host, set())
                for db in self.databases:
                    if db not in granted:
                        cur.execute(
                            f"GRANT ALL PRIVILEGES ON {quote_identifier(db)}.* TO %s@%s",
                            (self.user, host),
                        )
        ctx.log(f"{self.name}: {len(changes)} change(s) on {self.server.where}")


@dataclass
class SqliteObserved:
    """The SQLite directory's mode and which database files exist."""

    dir_mode: int | None
    existing: set[str]


class SqliteDatabaseStep(Step[SqliteObserved]):
    """The SQLite embedded default: one file per database under ``Site.sqlite_dir``."""

    phase = "database"

    def __init__(self, site: Site, service: str) -> None:
        self.site = site
        self.service = service
        self.databases = tuple(
            valid_identifier(db, "database name") for db in SERVICE_DATABASES[service]
        )
        self.name = f"controller.database.{service}"
        self.description = f"SQLite databases {', '.join(self.databases)} in {site.sqlite_dir}"

    def check(self, ctx: RunContext) -> SqliteObserved:
        directory = sqlite_path(self.site, "x").parent
        try:
            mode: int | None = stat.S_IMODE(directory.stat().st_mode)
        except FileNotFoundError:
            mode = None
        existing = {db for db in self.databases if sqlite_path(self.site, db).is_file()}
        return SqliteObserved(mode, existing)

    def plan(self, ctx: RunContext, observed: SqliteObserved) -> list[str]:
        directory = sqlite_path(self.site, "x").parent
        changes = []
        if observed.dir_mode is None:
            changes.append(f"create directory {directory} (mode 0750)")
        elif observed.dir_mode & 0o007:
            changes.append(f"restrict {directory} to mode 0750 (was {observed.dir_mode:04o})")
        changes += [
            f"create SQLite database {sqlite_path(self.site, db)}"
            for db in self.databases
            if db not in observed.existing
        ]
        return changes

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        directory = sqlite_path(self.site, "x").parent
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=SQLITE_DIR_MODE)
            mode = stat.S_IMODE(directory.stat().st_mode)
            if mode & 0o007 or not os.access(directory, os.W_OK):
                os.chmod(directory, SQLITE_DIR_MODE)
            for db in self.databases:
                path = sqlite_path(self.site, db)
                if path.exists():
                    continue
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, SQLITE_FILE_MODE)
                os.close(fd)
                # An empty file is a valid SQLite database; opening it once proves it.
                sqlite3.connect(path).close()
        except OSError as exc:
            raise StepFailed(f"{self.name}: cannot create {exc.filename}: {exc.strerror}") from None


def database_steps(site: Site) -> list[Step[Any]]:
    """One database step per service: Nova's three databases, then ``site.extra_services``."""
    services = ["nova", *[s for s in site.extra_services if s != "nova"]]
    steps: list[Step[Any]] = []
    for service in services:
        if service not in SERVICE_DATABASES:
            raise ConfigError(
                f"{site.source}: unknown extra service {service!r} "
                f"(use {', '.join(s for s in SERVICE_DATABASES if s != 'nova')})"
            )
        if site.database_url_for(service) is None:
            steps.append(SqliteDatabaseStep(site, service))
        else:
            steps.append(ServerDatabaseStep(site, service))
    return steps
