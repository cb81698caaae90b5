"""Which cell a compute host is mapped to, read from Nova's API database.

Shared by the compute plugin (``discover_hosts`` on an all-in-one node) and the lab (which
maps its extra compute nodes from the controller, as an operator does).
"""

from __future__ import annotations

import sqlite3
from urllib.parse import urlsplit

from novaconsole.dburl import mysql_connect, sqlite_file
from novaconsole.errors import ConfigError, ConnectionFailure
from novaconsole.redact import scrub_secrets

__all__ = ["host_mapping"]

_QUERY = (
    "SELECT c.name FROM host_mappings h JOIN cell_mappings c ON h.cell_id = c.id "
    "WHERE h.host = {mark}"
)


def host_mapping(api_db_url: str, host: str) -> str | None:
    """The cell ``host`` is mapped to in the Nova API database at ``api_db_url``, or None.

    SQLite and MySQL (PyMySQL) are read directly; the URL (which may carry a password) is
    never part of an error message.
    """
    try:
        parts = urlsplit(api_db_url)
    except ValueError:
        raise ConfigError("[api_database] connection in nova.conf is not a valid URL") from None
    if parts.scheme.startswith("sqlite"):
        path = sqlite_file(api_db_url)
        if not path.name or not path.exists():
            return None
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            try:
                row = db.execute(_QUERY.format(mark="?"), (host,)).fetchone()
            finally:
                db.close()
        except sqlite3.Error as exc:
            if "no such table" in str(exc):
                return None  # the API schema is not synced yet
            raise ConnectionFailure(f"cannot read Nova API database {path}: {exc}") from None
        return str(row[0]) if row else None
    if parts.scheme.startswith("mysql"):
        import pymysql

        where = f"{parts.hostname}:{parts.port or 3306}/{parts.path.lstrip('/')}"
        try:
            conn = mysql_connect(api_db_url)
        except pymysql.MySQLError as exc:
            raise ConnectionFailure(
                f"cannot connect to Nova API database {where}: {scrub_secrets(str(exc))}"
            ) from None
        try:
            with conn.cursor() as cursor:
                cursor.execute(_QUERY.format(mark="%s"), (host,))
                row = cursor.fetchone()
        except pymysql.MySQLError as exc:
            if "doesn't exist" in str(exc):
                return None
            raise ConnectionFailure(
                f"cannot query Nova API database {where}: {scrub_secrets(str(exc))}"
            ) from None
        finally:
            conn.close()
        return str(row[0]) if row else None
    raise ConfigError(f"Nova API database scheme {parts.scheme!r} is not supported here")
