"""Database step: SQLite files for real in tmp_path, and the real MariaDB on 127.0.0.1."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
from controller_helpers import assert_no_secret

from novaconsole.dburl import connection_url, database_name, parse_server_url
from novaconsole.errors import ConfigError, ConnectionFailure
from novaconsole.site import Site
from novaconsole.steps import RunContext, Status, run_steps
from novaconsole_controller.databases import (
    ServerDatabaseStep,
    SqliteDatabaseStep,
    database_steps,
    password_works,
)

MARIADB = "mysql+pymysql://root@127.0.0.1"


def test_sqlite_step_creates_files_and_second_run_changes_nothing(
    site: Site, ctx: RunContext
) -> None:
    step = SqliteDatabaseStep(site, "nova")
    first = run_steps([step], ctx)
    assert first.results[0].status is Status.CHANGED
    directory = site.sqlite_dir
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    for db in ("nova_api", "nova", "nova_cell0"):
        path = directory / f"{db}.sqlite"
        assert path.is_file()
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    second = run_steps([step], ctx)
    assert second.results[0].status is Status.OK
    assert second.results[0].changes == []


def test_sqlite_dry_run_plans_and_writes_nothing(site: Site) -> None:
    report = run_steps(database_steps(site), RunContext(dry_run=True))
    assert report.results[0].status is Status.PLANNED
    assert f"create SQLite database {site.sqlite_dir}/nova_api.sqlite" in report.results[0].changes
    assert not site.sqlite_dir.exists()


def test_sqlite_urls_are_absolute(site: Site) -> None:
    url = connection_url(site, "nova", "nova_cell0")
    assert url == f"sqlite:///{site.sqlite_dir}/nova_cell0.sqlite"
    assert url.startswith("sqlite:////")
    assert database_name(url) == "nova_cell0"


def test_sqlite_urls_can_name_the_begin_immediate_plugin(site: Site) -> None:
    site.sqlite_begin_immediate = True
    url = connection_url(site, "nova", "nova_api")
    assert url.endswith("/nova_api.sqlite?plugin=novaconsole_sqlite_immediate")
    assert database_name(url) == "nova_api"
    site.database_url = "mysql+pymysql://root@db"
    site.secrets["NOVA_DBPASS"] = "pw"
    assert "plugin" not in connection_url(site, "nova", "nova_api")  # SQLite only


def test_server_url_quotes_the_password_and_names_the_database(site: Site) -> None:
    site.database_url = "mysql+pymysql://root@db.example:3307"
    url = connection_url(site, "nova", "nova_api")
    assert url == "mysql+pymysql://nova:Db-Pw%2F1%25%24x@db.example:3307/nova_api"
    assert database_name(url) == "nova_api"
    assert connection_url(site, "nova") == url.replace("nova_api", "nova_api")


def test_admin_password_comes_from_db_root_pass() -> None:
    server = parse_server_url(MARIADB, {"DB_ROOT_PASS": "r00t"})
    assert (server.host, server.port, server.user, server.password) == (
        "127.0.0.1",
        3306,
        "root",
        "r00t",
    )
    assert "r00t" not in repr(server)


@pytest.mark.parametrize(
    "url", ["postgresql://root@db", "mysql+pymysql://", "mysql+pymysql://root@db:99999"]
)
def test_bad_admin_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_server_url(url)


def test_unknown_extra_service_is_refused(site: Site) -> None:
    site.extra_services = ["cinder"]
    with pytest.raises(ConfigError, match="unknown extra service 'cinder'"):
        database_steps(site)


def test_invalid_identifier_is_refused(site: Site) -> None:
    site.database_url = MARIADB
    with pytest.raises(ConfigError, match="invalid database name"):
        ServerDatabaseStep(site, "nova", databases=("nova`; DROP DATABASE x; --",))


def test_missing_secret_fails_before_touching_the_server(site: Site) -> None:
    site.database_url = "mysql+pymysql://root@127.0.0.1:1"  # nothing listens there
    del site.secrets["NOVA_DBPASS"]
    report = run_steps(database_steps(site), RunContext())
    assert report.results[0].status is Status.FAILED
    assert report.results[0].error is not None
    assert "secret NOVA_DBPASS is not set" in report.results[0].error


def test_unreachable_server_is_one_line_naming_host_and_port(site: Site) -> None:
    site.database_url = "mysql+pymysql://root@127.0.0.1:1"
    report = run_steps(database_steps(site), RunContext())
    assert report.results[0].error == "cannot connect to the database server at 127.0.0.1:1"


# -- the machine's real MariaDB ----------------------------------------------------------


def _admin() -> pymysql.connections.Connection:
    return pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)


@pytest.fixture
def mariadb_names(unique: str) -> Iterator[tuple[str, tuple[str, ...]]]:
    """A unique user and three databases, dropped afterwards."""
    user = unique
    databases = (f"{unique}_api", unique, f"{unique}_cell0")
    yield user, databases
    conn = _admin()
    with conn.cursor() as cur:
        for db in databases:
            cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
        for host in ("localhost", "%"):
            cur.execute("DROP USER IF EXISTS %s@%s", (user, host))
    conn.close()


@pytest.mark.mariadb
def test_mariadb_creates_databases_users_grants_then_converges(
    site: Site, ctx: RunContext, mariadb_names: tuple[str, tuple[str, ...]]
) -> None:
    user, databases = mariadb_names
    site.database_url = MARIADB
    step = ServerDatabaseStep(site, "nova", user=user, databases=databases)
    first = run_steps([step], ctx)
    assert first.results[0].status is Status.CHANGED, first.results[0].error
    assert len(first.results[0].changes) == 3 + 2 + 6
    assert_no_secret(" ".join(first.results[0].changes + ctx.cache["lines"]))
    server = parse_server_url(MARIADB)
    assert password_works(server, user, site.secrets["NOVA_DBPASS"])
    conn = pymysql.connect(
        host="127.0.0.1", user=user, password=site.secrets["NOVA_DBPASS"], database=databases[0]
    )
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE t (i INT)")  # ALL PRIVILEGES really granted
    conn.close()
    second = run_steps([step], ctx)
    assert second.results[0].status is Status.OK
    assert second.results[0].changes == []


@pytest.mark.mariadb
def test_mariadb_repairs_a_drifted_password(
    site: Site, ctx: RunContext, mariadb_names: tuple[str, tuple[str, ...]]
) -> None:
    user, databases = mariadb_names
    site.database_url = MARIADB
    step = ServerDatabaseStep(site, "nova", user=user, databases=databases)
    assert run_steps([step], ctx).ok
    site.secrets["NOVA_DBPASS"] = "Another-Pw-7"
    report = run_steps([step], ctx)
    assert report.results[0].status is Status.CHANGED
    assert report.results[0].changes == [
        f"reset the password of '{user}' (it no longer matches NOVA_DBPASS)"
    ]
    assert "Another-Pw-7" not in " ".join(ctx.cache["lines"])
    assert password_works(parse_server_url(MARIADB), user, "Another-Pw-7")
    assert run_steps([step], ctx).results[0].status is Status.OK


@pytest.mark.mariadb
def test_mariadb_wrong_admin_password_is_one_line_connection_failure(site: Site) -> None:
    site.database_url = "mysql+pymysql://nctest_nobody:wrong@127.0.0.1"
    with pytest.raises(ConnectionFailure) as info:
        ServerDatabaseStep(site, "nova").check(RunContext())
    assert info.value.one_line().startswith(
        "database server 127.0.0.1:3306 refused user 'nctest_nobody': wrong password"
    )
    assert "wrong" not in str(info.value).replace("wrong password", "")


@pytest.mark.mariadb
def test_mariadb_dry_run_changes_nothing(
    site: Site, mariadb_names: tuple[str, tuple[str, ...]]
) -> None:
    user, databases = mariadb_names
    site.database_url = MARIADB
    step = ServerDatabaseStep(site, "nova", user=user, databases=databases)
    report = run_steps([step], RunContext(dry_run=True))
    assert report.results[0].status is Status.PLANNED
    conn = _admin()
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM mysql.user WHERE User = %s", (user,))
        assert cur.fetchone() == (0,)
        cur.execute("SHOW DATABASES LIKE %s", (databases[1],))
        assert cur.fetchall() == ()
    conn.close()


def test_sqlite_dir_mode_is_tightened(site: Site, ctx: RunContext, tmp_path: Path) -> None:
    site.sqlite_dir.mkdir(mode=0o755)
    site.sqlite_dir.chmod(0o755)
    step = SqliteDatabaseStep(site, "placement")
    report = run_steps([step], ctx)
    assert f"restrict {site.sqlite_dir} to mode 0750 (was 0755)" in report.results[0].changes
    assert stat.S_IMODE(site.sqlite_dir.stat().st_mode) == 0o750
