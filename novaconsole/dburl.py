"""Database connection URLs for each service, from the site's admin URL or SQLite directory.

One place decides what ``[database] connection`` looks like for Nova, Keystone, Glance,
Placement and Neutron, so the controller plugin, the compute plugin and the lab agree:

- with a database server (``Site.database_url``, e.g. ``mysql+pymysql://root@127.0.0.1``):
  ``mysql+pymysql://USER:PASSWORD@HOST[:PORT]/DATABASE`` where USER is the service name and
  PASSWORD its guide placeholder secret (``NOVA_DBPASS`` ...), URL-quoted;
- without one (the SQLite embedded default): ``sqlite:////SQLITE_DIR/DATABASE.sqlite``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from novaconsole.errors import ConfigError

if TYPE_CHECKING:
    from novaconsole.site import Site

#: Databases each service needs (the guide's CREATE DATABASE lines, plus cell0 for Nova).
SERVICE_DATABASES: dict[str, tuple[str, ...]] = {
    "nova": ("nova_api", "nova", "nova_cell0"),
    "keystone": ("keystone",),
    "glance": ("glance",),
    "placement": ("placement",),
    "neutron": ("neutron",),
}

#: The secret (guide placeholder) holding each service's database password.
SERVICE_DB_SECRETS: dict[str, str] = {
    "nova": "NOVA_DBPASS",
    "keystone": "KEYSTONE_DBPASS",
    "glance": "GLANCE_DBPASS",
    "placement": "PLACEMENT_DBPASS",
    "neutron": "NEUTRON_DBPASS",
}

#: Environment variable with the database server's admin password, when it needs one.
ADMIN_PASSWORD_ENV = "DB_ROOT_PASS"

_MYSQL_SCHEMES = ("mysql", "mysql+pymysql")


@dataclass(frozen=True)
class DatabaseServer:
    """Where the database server is and how the admin logs in (parsed from the admin URL)."""

    scheme: str
    host: str
    port: int
    user: str
    password: str | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        """``host:port`` for messages."""
        return f"{self.host}:{self.port}"

    @property
    def netloc_host(self) -> str:
        """The host part as it goes into a URL (IPv6 in brackets, port if not 3306)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 3306 else f"{host}:{self.port}"


def parse_server_url(url: str, environ: Mapping[str, str] | None = None) -> DatabaseServer:
    """Parse ``Site.database_url``; the password comes from the URL or ``DB_ROOT_PASS``."""
    try:
        parts = urlsplit(url)
        port = parts.port or 3306
    except ValueError as exc:
        raise ConfigError(f"database_url is not a valid URL: {exc}") from exc
    if parts.scheme not in _MYSQL_SCHEMES:
        raise ConfigError(
            f"database_url scheme {parts.scheme!r} is not supported: use mysql+pymysql://"
        )
    if not parts.hostname:
        raise ConfigError("database_url names no host (e.g. mysql+pymysql://root@127.0.0.1)")
    env = os.environ if environ is None else environ
    password = unquote(parts.password) if parts.password else env.get(ADMIN_PASSWORD_ENV) or None
    return DatabaseServer(
        scheme="mysql+pymysql",
        host=parts.hostname,
        port=port,
        user=unquote(parts.username or "root"),
        password=password,
    )


def database_user(service: str) -> str:
    """The database account of a service (the guide uses the service's name)."""
    _known(service)
    return service


#: Query that loads the lab's SQLAlchemy plugin (novaconsole/lab/sqlite_plugin).
SQLITE_IMMEDIATE_QUERY = "?plugin=novaconsole_sqlite_immediate"


def sqlite_path(site: Site, database: str) -> Path:
    """Absolute path of a SQLite database file under ``site.sqlite_dir``."""
    return Path(os.path.abspath(site.sqlite_dir)) / f"{database}.sqlite"


def connection_url(site: Site, service: str, database: str | None = None) -> str:
    """The SQLAlchemy URL ``service`` uses for ``database`` (default: its first database).

    The result contains the service's database password when a server is used: write it
    only to files of mode 0600/0640, and pass it through :func:`novaconsole.redact.scrub_secrets`
    before showing anything that may contain it.
    """
    from novaconsole.site import valid_identifier

    databases = _known(service)
    database = database or databases[0]
    valid_identifier(database, "database name")
    server_url = site.database_url_for(service)
    if server_url is None:
        url = "sqlite:///" + str(sqlite_path(site, database))
        return url + SQLITE_IMMEDIATE_QUERY if site.sqlite_begin_immediate else url
    server = parse_server_url(server_url)
    password = site.secret(SERVICE_DB_SECRETS[service])
    user = database_user(service)
    return (
        f"{server.scheme}://{quote(user, safe='')}:{quote(password, safe='')}"
        f"@{server.netloc_host}/{database}"
    )


def sqlite_file(url: str) -> Path:
    """The file a ``sqlite:///`` URL names (its ``?options`` dropped)."""
    return Path(url.split(":///", 1)[-1].split("?", 1)[0])


def mysql_connect(url: str, *, autocommit: bool = False) -> Any:
    """A PyMySQL connection for a ``mysql+pymysql://`` URL (5 s to connect).

    PyMySQL's errors propagate: each caller reports them in its own terms (and scrubs them).
    """
    import pymysql

    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=parts.path.lstrip("/") or None,
        connect_timeout=5,
        autocommit=autocommit,
    )


def database_name(url: str) -> str | None:
    """The database a SQLAlchemy URL points at (file stem for SQLite), or None."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    if parts.scheme.startswith("sqlite"):
        path = sqlite_file(url)
        return path.stem if str(path) not in ("", ".") else None
    name = parts.path.lstrip("/")
    return name or None


def _known(service: str) -> tuple[str, ...]:
    try:
        return SERVICE_DATABASES[service]
    except KeyError:
        raise ConfigError(
            f"unknown service {service!r} for databases: use one of {', '.join(SERVICE_DATABASES)}"
        ) from None
