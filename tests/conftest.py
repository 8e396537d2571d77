"""Fixtures: every database test runs once on SQLite, PostgreSQL and MariaDB/MySQL.

PostgreSQL comes from ``KANBAN_TEST_POSTGRES_URL`` (for example
``postgresql+psycopg://postgres@127.0.0.1:5432/kanban_test``), MariaDB or MySQL from
``KANBAN_TEST_MYSQL_URL`` (for example ``mysql://root@127.0.0.1:3306/kanban_test``).
Without one, that backend's part of each test is skipped with that reason, except under
``CI=true``, where a missing server fails the run instead of silently skipping part of
the suite.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import kanban_orm as kb

from .apis import APIS, Api

POSTGRES_ENV = "KANBAN_TEST_POSTGRES_URL"
MYSQL_ENV = "KANBAN_TEST_MYSQL_URL"
BACKENDS = ["sqlite", "postgres", "mysql"]
KANBAN_TABLES = (
    "kanban_task_attachments",
    "kanban_board_events",
    "kanban_task_comments",
    "kanban_task_events",
    "kanban_task_links",
    "kanban_task_runs",
    "kanban_tasks",
    "kanban_status_tallies",
    "kanban_workers",
)
#: What a test starts from: every table emptied but the tallies, whose rows are reset
#: (TRUNCATE fires no trigger; the rows are the table's, made with it).
EMPTIED_TABLES = tuple(t for t in KANBAN_TABLES if t != "kanban_status_tallies")
RESET_TALLIES = "UPDATE kanban_status_tallies SET tasks = 0, through = NULL"
REPO_ROOT = Path(__file__).resolve().parent.parent


def postgres_url_or_skip() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if url:
        return url
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {POSTGRES_ENV} is not set: PostgreSQL tests must run in CI")
    pytest.skip(f"{POSTGRES_ENV} is not set; PostgreSQL half of the suite skipped")


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``@pytest.mark.backends("postgres", ...)``: a test of one backend's own feature
    runs on those backends only, instead of being collected everywhere and skipped."""
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is None:
        return
    unknown = set(marker.args) - set(BACKENDS)
    if not marker.args or unknown:
        raise pytest.UsageError(f"backends(...) takes some of {BACKENDS}, not {marker.args}")
    # A parametrize mark (not a call) on the fixture's name: pytest then leaves out the
    # fixture's own params, and parametrizes from the mark after this hook.
    for fixture in ("db_url", "empty_db_url"):
        if fixture in metafunc.fixturenames:
            names = list(marker.args)
            metafunc.definition.add_marker(
                pytest.mark.parametrize(fixture, names, indirect=True, ids=names)
            )


#: reason -> the location of the first skip with it (see pytest_runtest_makereport)
_skip_locations: dict[str, tuple[str, int | None]] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[pytest.TestReport]:
    """Give every skip decided before a test runs (a fixture's or a mark's) the location
    of the first one with the same reason, so ``-ra`` prints one line per reason with a
    count, rather than a line per test (~270 when PostgreSQL is not configured)."""
    report: pytest.TestReport = yield
    longrepr = report.longrepr
    if report.skipped and call.when == "setup" and isinstance(longrepr, tuple):
        path, lineno, reason = longrepr
        path, lineno = _skip_locations.setdefault(reason, (path, lineno))
        report.longrepr = (path, lineno, reason)
    return report


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return postgres_url_or_skip()


def mysql_url_or_skip() -> str:
    url = os.environ.get(MYSQL_ENV)
    if url:
        return url
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {MYSQL_ENV} is not set: MariaDB tests must run in CI")
    pytest.skip(f"{MYSQL_ENV} is not set; MariaDB/MySQL part of the suite skipped")


@pytest.fixture(scope="session")
def mysql_engine() -> Iterator[Engine]:
    """The shared MariaDB/MySQL test database, migrated to head once per session."""
    url = sa.make_url(mysql_url_or_skip())
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        url = url.set(database=f"{url.database}_{worker}")
    _create_mysql_database(url)
    engine = kb.create_engine(url, poolclass=sa.pool.NullPool)
    kb.upgrade(engine)
    yield engine
    engine.dispose()


def _mysql_admin(url: sa.URL) -> Engine:
    return kb.create_engine(url.set(database=""), poolclass=sa.pool.NullPool)


def _create_mysql_database(url: sa.URL) -> None:
    admin = _mysql_admin(url)
    with admin.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE DATABASE IF NOT EXISTS `{url.database}` "
            "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        )
    admin.dispose()


def fresh_mysql_database(mysql_url: str) -> Iterator[str]:
    """A new, empty MariaDB/MySQL database for one test; dropped afterwards."""
    url = sa.make_url(mysql_url).set(database=f"kanban_t_{uuid.uuid4().hex[:12]}")
    _create_mysql_database(url)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        kb.dispose_engines()
        admin = _mysql_admin(url)
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{url.database}`")
        admin.dispose()


def _empty_mysql_tables(engine: Engine) -> None:
    # TRUNCATE refuses a table other tables' foreign keys point at, unless told.
    with engine.begin() as conn:
        conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
        for table in EMPTIED_TABLES:
            conn.exec_driver_sql(f"TRUNCATE TABLE {table}")
        conn.exec_driver_sql(RESET_TALLIES)
        conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")


def _admin_url(url: str) -> sa.URL:
    return sa.make_url(url).set(database="postgres")


def _per_worker_database(postgres_url: str) -> str:
    """Under pytest-xdist each worker gets its own database (``<name>_gw0``, ...), created
    on first use, so workers never truncate each other's tables."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return postgres_url
    url = sa.make_url(postgres_url)
    name = f"{url.database}_{worker}"
    admin = sa.create_engine(_admin_url(postgres_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.exec_driver_sql(
            "SELECT 1 FROM pg_database WHERE datname = %(name)s", {"name": name}
        ).first()
        if exists is None:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    """The shared PostgreSQL test database, migrated to head once per session."""
    engine = kb.create_engine(_per_worker_database(postgres_url), poolclass=sa.pool.NullPool)
    kb.upgrade(engine)
    yield engine
    engine.dispose()


def fresh_postgres_database(postgres_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test; dropped afterwards."""
    name = f"kanban_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(_admin_url(postgres_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database with nothing in it (no kanban tables), per backend."""
    if request.param == "sqlite":
        path = tmp_path / "kanban.db"
        sqlite3.connect(path).close()  # the file exists, as a PostgreSQL database would
        path.chmod(0o600)  # and is private, as one kanban_orm creates (else db check warns)
        yield f"sqlite:///{path}"
    elif request.param == "mysql":
        yield from fresh_mysql_database(mysql_url_or_skip())
    else:
        yield from fresh_postgres_database(postgres_url_or_skip())


@pytest.fixture(autouse=True)
def _close_cached_engines() -> Iterator[None]:
    # Each test has its own SQLite file; without this every one would keep a pool open.
    yield
    kb.dispose_engines()


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a migrated database with no rows in the kanban tables, per backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'kanban.db'}"
        kb.upgrade(kb.cached_engine(url))
        return url
    if request.param == "mysql":
        engine: Engine = request.getfixturevalue("mysql_engine")
        _empty_mysql_tables(engine)
        return engine.url.render_as_string(hide_password=False)
    engine = request.getfixturevalue("postgres_engine")
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {', '.join(EMPTIED_TABLES)} RESTART IDENTITY CASCADE")
        conn.exec_driver_sql(RESET_TALLIES)
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture(params=list(APIS), ids=list(APIS))
def api(request: pytest.FixtureRequest) -> Iterator[Api]:
    """The API a test body runs through: ``sync`` as it is, ``async`` on kanban_orm.aio
    (tests/apis.py; the body runs inside it, see pytest_pyfunc_call)."""
    chosen = APIS[request.param]()
    try:
        yield chosen
    finally:
        chosen.finish()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """A test given the ``api`` fixture runs through that API (on an event loop, for
    kanban_orm.aio), whether it asked for it or a fixture of it did."""
    api = pyfuncitem.funcargs.get("api")
    if not isinstance(api, Api):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    api.run_test(pyfuncitem.obj, {name: pyfuncitem.funcargs[name] for name in names})
    return True


@pytest.fixture
def engine(db_url: str) -> Engine:
    return kb.cached_engine(db_url)


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    s = kb.connect(db_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def backend(db_url: str) -> str:
    return sa.make_url(db_url).get_backend_name()
