"""SQLite transactions that take the write lock when they begin (``BEGIN IMMEDIATE``).

oslo.db starts every SQLite transaction with a plain (deferred) ``BEGIN``. A deferred
transaction that reads and then writes holds a shared lock and asks for the write lock
later; when another connection already holds the write lock and waits for readers to
leave, SQLite sees a deadlock and answers ``database is locked`` at once, without waiting
for the busy timeout. With several Nova services (each with threads) on one SQLite file
that happens in normal operation: a service's heartbeat, an instance build.

``BEGIN IMMEDIATE`` takes the write lock up front, so transactions queue on SQLite's busy
handler instead of deadlocking. A SQLite URL opts in with ``?plugin=novaconsole_sqlite_immediate``
(SQLAlchemy loads this class from the ``sqlalchemy.plugins`` entry point); other databases
are left alone. The lab is SQLite's only user here: one node, light load, where
serialising transactions costs nothing that matters.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import CreateEnginePlugin

#: How long a transaction waits for the write lock before "database is locked".
BUSY_TIMEOUT_MS = 30_000
_MARK = "in_transaction"  # oslo.db's own marker: its BEGIN listener skips when it is set


class BeginImmediate(CreateEnginePlugin):
    """Engine plugin: every transaction on a SQLite engine begins IMMEDIATE."""

    def update_url(self, url: Any) -> Any:
        return url  # no arguments of our own in the URL ("plugin" is SQLAlchemy's)

    def engine_created(self, engine: Any) -> None:
        if engine.dialect.name != "sqlite":
            return

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            # We emit BEGIN ourselves (pysqlite's implicit one would be deferred).
            dbapi_connection.isolation_level = None
            dbapi_connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

        # Registered while the engine is being created, so this runs before the BEGIN
        # listener oslo.db adds afterwards, which then sees the marker and does nothing.
        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            if _MARK not in conn.info:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                conn.info[_MARK] = True

        @event.listens_for(engine, "commit")
        @event.listens_for(engine, "rollback")
        def _end(conn: Any) -> None:
            conn.info.pop(_MARK, None)
