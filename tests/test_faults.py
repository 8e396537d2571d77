"""Faults at the connection, on real servers: refused connections, terminated backends
(also during SQLAlchemy's first-connect set-up), read-only SQLite files. Callers see
kanban errors only: DatabaseUnavailable once the retry budget is spent, DatabaseReadOnly
at once, DatabaseError for anything else, the driver's error kept as ``__cause__``."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import db

from .helpers import snapshot

QUICK = kb.RetryPolicy(unavailable_seconds=0.5, unavailable_base_delay=0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The retry layer's waits, recorded (and still taken)."""
    taken: list[float] = []
    real = db.time.sleep

    def sleep(seconds: float) -> None:
        taken.append(seconds)
        real(seconds)

    monkeypatch.setattr(db.time, "sleep", sleep)
    return taken


def _every_call(session: Session, task_id: int = 1, token: str = "t") -> dict[str, Any]:
    return {
        "create_task": lambda: kb.create_task(session, title="never written"),
        "claim_next": lambda: kb.claim_next(session, claimer="w"),
        "heartbeat": lambda: kb.heartbeat(session, task_id, claim_lock=token),
        "complete_task": lambda: kb.complete_task(session, task_id, claim_lock=token),
        "list_tasks": lambda: kb.list_tasks(session),
    }


# -- a server that is not there -----------------------------------------------------------


def test_refused_connection_is_retried_then_raised_as_database_unavailable(
    sleeps: list[float],
) -> None:
    pytest.importorskip("psycopg")
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/kanban"
    engine = kb.create_engine(url, retry=QUICK)
    try:
        with Session(engine) as session:
            for name, call in _every_call(session).items():
                sleeps.clear()
                with pytest.raises(kb.DatabaseUnavailable) as caught:
                    call()
                assert len(sleeps) > 1, name  # backed off and tried again
                assert all(s > 0 for s in sleeps), name  # never a busy loop
                cause = caught.value.__cause__
                assert isinstance(cause, sa.exc.OperationalError), name
                assert "refused" in str(caught.value).lower()
    finally:
        engine.dispose()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_database_that_does_not_exist_is_a_database_error_at_once(
    db_url: str, sleeps: list[float]
) -> None:
    url = sa.make_url(db_url).set(database="kanban_no_such_database")
    engine = kb.create_engine(url)
    try:
        with Session(engine) as session, pytest.raises(kb.DatabaseError) as caught:
            kb.claim_next(session, claimer="w")
    finally:
        engine.dispose()
    assert not isinstance(caught.value, kb.DatabaseUnavailable)
    assert "does not exist" in str(caught.value)
    assert sleeps == []


def test_other_driver_errors_become_database_error_with_the_cause(session: Session) -> None:
    def work(tx: Any) -> None:
        tx.raw("SELECT no_such_column FROM kanban_tasks")

    with pytest.raises(kb.DatabaseError) as caught:
        db.run_write(session, work)
    assert type(caught.value) is kb.DatabaseError
    assert isinstance(caught.value.__cause__, sa.exc.DBAPIError)
    assert kb.list_tasks(session) == []  # the session is still usable


# -- terminated backends ------------------------------------------------------------------


def _terminate(admin: Engine, pid: int) -> None:
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def _terminate_all_others(db_url: str) -> int:
    """Terminate every other client backend on the test database; how many."""
    admin = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            return len(
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND backend_type = 'client backend'"
                    )
                ).all()
            )
    finally:
        admin.dispose()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_terminated_backend_is_replaced_without_an_error(
    db_url: str, engine: Engine, sleeps: list[float]
) -> None:
    session = kb.KeepingSession(engine)
    try:
        task_id = kb.create_task(session, title="t")  # keeps its connection
        assert _terminate_all_others(db_url) >= 1
        task = kb.claim_next(session, claimer="w")
        assert task is not None and task.id == task_id and task.claim_lock
        assert _terminate_all_others(db_url) >= 1
        assert kb.heartbeat(session, task_id, claim_lock=task.claim_lock)
        assert _terminate_all_others(db_url) >= 1
        assert kb.complete_task(session, task_id, claim_lock=task.claim_lock).status == "done"
    finally:
        session.close()
    assert len(sleeps) >= 3  # each call met its dead connection and tried again


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_backend_terminated_during_first_connect_set_up_is_retried(
    db_url: str, engine: Engine
) -> None:
    """SQLAlchemy's first connect runs the dialect's set-up queries (server version,
    standard_conforming_strings, ...) on the new connection: its backend dies there."""
    fresh = kb.create_engine(db_url, poolclass=sa.pool.NullPool)
    killed: list[int] = []

    @event.listens_for(fresh, "first_connect", insert=True)
    def _kill_during_set_up(dbapi_connection: Any, _record: Any) -> None:
        if not killed:
            killed.append(dbapi_connection.info.backend_pid)
            _terminate(engine, killed[0])

    @event.listens_for(fresh, "connect", insert=True)
    def _kill_first_connection(dbapi_connection: Any, _record: Any) -> None:
        if len(killed) == 1:  # first_connect ran on it already; kill the next one too
            killed.append(dbapi_connection.info.backend_pid)
            _terminate(engine, killed[1])

    try:
        with Session(fresh) as session:
            task_id = kb.create_task(session, title="written after the kills")
            assert kb.get_task(session, task_id).title == "written after the kills"
    finally:
        fresh.dispose()
    assert len(killed) == 2


# -- read-only SQLite ---------------------------------------------------------------------


@pytest.fixture
def board(db_url: str, session: Session) -> tuple[int, str]:
    kb.create_task(session, title="ready one")
    task_id = kb.create_task(session, title="claimed one")
    task = kb.claim_task(session, task_id, claimer="w")
    assert task is not None and task.claim_lock
    return task_id, task.claim_lock


def _assert_read_only(session: Session, task_id: int, token: str, sleeps: list[float]) -> None:
    calls = _every_call(session, task_id, token)
    assert len(calls.pop("list_tasks")()) == 2  # reads work
    assert kb.get_task(session, task_id).status == "running"
    for name, call in calls.items():
        with pytest.raises(kb.DatabaseReadOnly) as caught:
            call()
        assert isinstance(caught.value, kb.DatabaseError), name
        assert isinstance(caught.value.__cause__, sa.exc.OperationalError), name
    assert sleeps == []  # at once, not after the retry budget


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_opened_read_only_refuses_writes_at_once_and_writes_nothing(
    db_url: str, session: Session, board: tuple[int, str], sleeps: list[float]
) -> None:
    task_id, token = board
    before = snapshot(session)
    path = sa.make_url(db_url).database
    read_only = kb.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        with Session(read_only) as ro:
            _assert_read_only(ro, task_id, token, sleeps)
    finally:
        read_only.dispose()
    assert snapshot(session) == before
    assert kb.complete_task(session, task_id, claim_lock=token).status == "done"  # resumes


AS_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
_AS_NOBODY = """
import json, sys
import kanban_orm as kb
from sqlalchemy.orm import Session
url, task_id, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = {}
with Session(kb.create_engine(url)) as s:
    out["read"] = len(kb.list_tasks(s))
    for name, call in {
        "create_task": lambda: kb.create_task(s, title="never written"),
        "claim_next": lambda: kb.claim_next(s, claimer="w"),
        "heartbeat": lambda: kb.heartbeat(s, task_id, claim_lock=token),
        "complete_task": lambda: kb.complete_task(s, task_id, claim_lock=token),
    }.items():
        try:
            call()
            out[name] = "written"
        except Exception as error:
            out[name] = type(error).__name__
print(json.dumps(out))
"""


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_file_the_worker_may_not_write_refuses_writes(
    db_url: str, session: Session, board: tuple[int, str], tmp_path: Path
) -> None:
    """A worker running as a user who may read the file but not write it (as root,
    chmod alone stops nothing, so the worker runs as ``nobody``)."""
    if os.geteuid() != 0:
        pytest.skip("switching to an unprivileged user needs root")
    task_id, token = board
    before = snapshot(session)
    path = Path(str(sa.make_url(db_url).database))
    for directory in (path.parent, *path.parent.parents):
        if directory == Path("/"):
            break
        directory.chmod(directory.stat().st_mode | 0o005)  # o+rx: nobody may look in
    # A writer of the board's owner has it open, so the -wal and -shm files exist: a
    # process that may not create them could not even read (see docs/faults.md).
    holder = sqlite3.connect(path)
    holder.execute("SELECT count(*) FROM kanban_tasks").fetchall()
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        name.chmod(0o644)
    script = tmp_path / "as_nobody.py"
    script.write_text(_AS_NOBODY)
    script.chmod(0o644)
    done = subprocess.run(
        [*AS_NOBODY, sys.executable, str(script), db_url, str(task_id), token],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    holder.close()
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out == {
        "read": 2,
        "create_task": "DatabaseReadOnly",
        "claim_next": "DatabaseReadOnly",
        "heartbeat": "DatabaseReadOnly",
        "complete_task": "DatabaseReadOnly",
    }
    assert snapshot(session) == before


def test_failure_kinds_of_driver_errors() -> None:
    """What the retry layer does with each error it meets (see the table in
    docs/faults.md); the real-server tests above prove the common ones end to end."""
    psycopg = pytest.importorskip("psycopg")

    def wrapped(orig: Exception) -> sa.exc.DBAPIError:
        base = sqlite3.Error if isinstance(orig, sqlite3.Error) else psycopg.Error
        return sa.exc.DBAPIError.instance("SELECT 1", None, orig, base)

    starting = psycopg.OperationalError("FATAL:  the database system is starting up")
    refused = psycopg.OperationalError("connection failed: Connection refused")
    no_database = psycopg.OperationalError('FATAL:  database "x" does not exist')
    cases = {
        psycopg.errors.AdminShutdown("terminating connection"): db.UNAVAILABLE,
        psycopg.errors.CannotConnectNow("the database system is shutting down"): db.UNAVAILABLE,
        starting: db.UNAVAILABLE,
        refused: db.UNAVAILABLE,
        psycopg.errors.SerializationFailure("could not serialize"): db.BUSY,
        psycopg.errors.DeadlockDetected("deadlock detected"): db.BUSY,
        psycopg.errors.ReadOnlySqlTransaction("read-only transaction"): db.READ_ONLY,
        no_database: None,
        psycopg.errors.UndefinedColumn("no such column"): None,
    }
    for orig, kind in cases.items():
        assert db.failure_kind(wrapped(orig)) == kind, orig
    locked = sqlite3.OperationalError("database is locked")
    read_only = sqlite3.OperationalError("attempt to write a readonly database")
    read_only.sqlite_errorcode = 8  # type: ignore[attr-defined]
    assert db.failure_kind(wrapped(locked)) == db.BUSY
    assert db.failure_kind(wrapped(read_only)) == db.READ_ONLY
    assert db.failure_kind(wrapped(sqlite3.OperationalError("disk I/O error"))) is None
    assert isinstance(db.typed_error(wrapped(no_database)), kb.DatabaseError)
    assert isinstance(db.typed_error(wrapped(starting)), kb.DatabaseUnavailable)
