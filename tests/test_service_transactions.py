"""Transactions: joining a host application's transaction, committing after reads, and the
retry layer meeting a real lock (SQLite's write lock; PostgreSQL row locks and deadlocks).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import kanban_orm as kb

from .helpers import snapshot
from .test_service import claimed, kinds, runs, task_ids, task_row

# -- the host application's transaction ------------------------------------------------


def test_a_task_created_in_a_rolled_back_host_transaction_never_existed(
    session: Session, engine: Engine
) -> None:
    before = snapshot(session)

    with pytest.raises(RuntimeError, match="host failed"), session.begin():
        task_id = kb.create_task(session, title="inside the host's transaction")
        assert kb.get_task(session, task_id).title == "inside the host's transaction"
        raise RuntimeError("host failed")

    assert snapshot(session) == before
    assert task_ids(engine) == []


def test_a_task_created_in_a_committed_host_transaction_is_committed_by_the_host(
    session: Session, engine: Engine, db_url: str
) -> None:
    with session.begin():
        task_id = kb.create_task(session, title="joined")
        assert task_ids(engine) == []  # not committed yet: the host commits
    assert task_ids(engine) == [task_id]
    assert kinds(engine, task_id) == ["created"]
    with kb.connect(db_url) as fresh:
        assert kb.get_task(fresh, task_id).title == "joined"


def test_a_whole_life_in_a_rolled_back_host_transaction_leaves_no_trace(
    session: Session,
) -> None:
    existing = kb.create_task(session, title="before")
    before = snapshot(session)

    with pytest.raises(RuntimeError), session.begin():
        task_id = kb.create_task(session, title="t", parents=[existing])
        kb.complete_task(session, existing, force=True)
        task = kb.claim_task(session, task_id, claimer="w")
        assert task is not None and task.status == "running"
        kb.complete_task(session, task_id, claim_lock=str(task.claim_lock))
        raise RuntimeError("host failed")

    assert snapshot(session) == before


def test_a_rejected_call_inside_a_host_transaction_undoes_only_itself(
    session: Session, engine: Engine
) -> None:
    with session.begin():
        kept = kb.create_task(session, title="kept")
        with pytest.raises(kb.TaskNotFound):
            kb.create_task(session, title="orphan", parents=[999_999])
        with pytest.raises(kb.ClaimLost):
            kb.complete_task(session, kept, claim_lock="0" * 32)
        also_kept = kb.create_task(session, title="also kept")

    assert task_ids(engine) == [kept, also_kept]
    assert task_row(engine, kept).status == "ready"
    assert kinds(engine, kept) == ["created"]


def test_a_write_after_a_read_commits(session: Session, engine: Engine, db_url: str) -> None:
    first = kb.create_task(session, title="first")
    assert kb.get_task(session, first).status == "ready"
    assert kb.list_tasks(session)
    assert session.scalars(sa.select(kb.Task.id)).all() == [first]  # the host's own read
    assert session.in_transaction()  # ... which SQLAlchemy auto-began and left open

    second = kb.create_task(session, title="second")
    task = kb.claim_task(session, first, claimer="w")

    assert task is not None
    with kb.connect(db_url) as fresh:
        assert kb.get_task(fresh, second).title == "second"
        assert kb.get_task(fresh, first).status == "running"
    assert task_row(engine, first).claim_lock == task.claim_lock


def test_a_session_with_expire_on_commit_still_returns_usable_tasks(engine: Engine) -> None:
    with Session(engine) as plain:  # SQLAlchemy's default: expire_on_commit=True
        task_id = kb.create_task(plain, title="t")
        task = kb.claim_task(plain, task_id, claimer="w")
        assert task is not None and task.status == "running"
        done = kb.complete_task(plain, task_id, claim_lock=str(task.claim_lock))
        assert done.status == "done"


def test_tasks_returned_by_connect_sessions_outlive_the_session(db_url: str) -> None:
    with kb.connect(db_url) as s:
        task_id = kb.create_task(s, title="t")
        task = kb.claim_task(s, task_id, claimer="w")
    assert task is not None
    assert (task.id, task.status, task.attempts) == (task_id, "running", 1)


# -- a Session joined into the transaction of its Connection ----------------------------
# SQLAlchemy's recipe for test suites: the host begins a transaction on a Connection,
# binds a Session to it and rolls everything back at the end.


@contextmanager
def external_transaction(engine: Engine, mode: Any) -> Iterator[tuple[sa.Connection, Session]]:
    with engine.connect() as conn:
        outer = conn.begin()
        joined = Session(bind=conn, join_transaction_mode=mode)
        try:
            yield conn, joined
        finally:
            joined.close()
            outer.rollback()


@pytest.mark.parametrize("mode", ["create_savepoint", "conditional_savepoint", "rollback_only"])
def test_a_session_joined_into_an_external_transaction_works_inside_it_and_leaves_no_trace(
    engine: Engine, mode: Any
) -> None:
    with external_transaction(engine, mode) as (_, joined):
        task_id = kb.create_task(joined, title="inside")
        task = kb.claim_task(joined, task_id, claimer="w")
        assert task is not None
        with pytest.raises(kb.ClaimLost):  # a rejected call undoes only itself
            kb.complete_task(joined, task_id, claim_lock="0" * 32)
        kb.complete_task(joined, task_id, claim_lock=str(task.claim_lock))

        assert [e.kind for e in kb.list_events(joined, task_id=task_id)] == [
            "created",
            "claimed",
            "completed",
        ]
        cards, counts = kb.board_cards(joined)
        assert [card.id for card in cards] == [task_id] and counts["done"] == 1
        assert task_ids(engine) == []  # nothing committed: the host ends the transaction

    assert task_ids(engine) == []


def test_a_tailing_read_in_an_external_transaction_holds_no_lock_against_writers(
    engine: Engine, db_url: str, backend: str
) -> None:
    # The event-log lock (PostgreSQL's advisory lock, MariaDB's guard row) would last
    # until the host's transaction ends; SQLite's ids are in commit order without one.
    with external_transaction(engine, "create_savepoint") as (conn, joined):
        assert kb.list_events(joined) == []
        # Outside a transaction of its own the read does not wait for event writers.
        if backend == "postgresql":
            held = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                )
            ).scalar_one()
            assert held == 0
        # A writer's event insert would wait on the lock (on MariaDB, for
        # innodb_lock_wait_timeout, then fail) if the read had taken it.
        with kb.connect(db_url) as other:
            written = kb.create_task(other, title="written meanwhile")
        assert task_ids(engine) == [written]


def test_a_session_bound_to_a_connection_outside_a_transaction_commits_each_call(
    engine: Engine,
) -> None:
    with engine.connect() as conn:
        bound = Session(bind=conn)
        task_id = kb.create_task(bound, title="committed")
        assert not conn.in_transaction()
        kb.get_task(bound, task_id)
        assert not conn.in_transaction()  # the read's transaction ended too
        bound.close()
    assert task_ids(engine) == [task_id]


# -- the retry layer on SQLite: another process holds the write lock --------------------


@contextmanager
def sqlite_write_lock(db_url: str) -> Iterator[sqlite3.Connection]:
    """Hold the database's write lock on a raw connection, as another process would."""
    holder = sqlite3.connect(
        sa.make_url(db_url).database or "", isolation_level=None, check_same_thread=False
    )
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield holder
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()


@contextmanager
def kanban_engine(url: str, **kw: Any) -> Iterator[Engine]:
    engine = kb.create_engine(url, **kw)
    try:
        yield engine
    finally:
        engine.dispose()


IMPATIENT = kb.RetryPolicy(max_attempts=3, max_total_seconds=1)
PATIENT = kb.RetryPolicy(max_attempts=10_000, max_total_seconds=20)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_lock_held_elsewhere_raises_database_busy_and_writes_nothing(
    db_url: str, session: Session, engine: Engine
) -> None:
    task_id, token = claimed(session)
    before = snapshot(session)

    with (
        kanban_engine(db_url, busy_timeout_ms=50, retry=IMPATIENT) as busy_engine,
        Session(busy_engine) as busy,
        sqlite_write_lock(db_url),
    ):
        started = time.monotonic()
        with pytest.raises(kb.DatabaseBusy) as caught:
            kb.create_task(busy, title="never written")
        with pytest.raises(kb.DatabaseBusy):
            kb.complete_task(busy, task_id, claim_lock=token)
        with pytest.raises(kb.DatabaseBusy):
            kb.claim_next(busy, claimer="w")
        assert time.monotonic() - started < 5

    error = caught.value
    assert isinstance(error, kb.KanbanError)
    assert not isinstance(error, sa.exc.DBAPIError)
    assert isinstance(error.__cause__, sa.exc.OperationalError)
    assert "locked" in str(error)
    assert snapshot(session) == before
    assert kb.complete_task(session, task_id, claim_lock=token).status == "done"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_lock_held_elsewhere_inside_a_host_transaction_raises_database_busy(
    db_url: str, session: Session
) -> None:
    before = snapshot(session)
    with (
        kanban_engine(db_url, busy_timeout_ms=50, retry=IMPATIENT) as busy_engine,
        Session(busy_engine) as busy,
        sqlite_write_lock(db_url),
        pytest.raises(kb.DatabaseBusy, match="caller's transaction"),
        busy.begin(),
    ):
        kb.create_task(busy, title="never written")
    assert snapshot(session) == before


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_write_waits_out_a_lock_released_later(
    db_url: str, session: Session, engine: Engine
) -> None:
    with (
        kanban_engine(db_url, busy_timeout_ms=50, retry=PATIENT) as patient_engine,
        kb.session_factory(patient_engine)() as patient,
        sqlite_write_lock(db_url) as holder,
    ):
        release = threading.Timer(0.3, holder.execute, args=("ROLLBACK",))
        started = time.monotonic()
        release.start()
        try:
            task_id = kb.create_task(patient, title="written once the lock is gone")
        finally:
            release.join()
        waited = time.monotonic() - started

    assert waited >= 0.25
    assert task_ids(engine) == [task_id]
    assert kinds(engine, task_id) == ["created"]


# -- the retry layer on PostgreSQL: row locks and a real deadlock -----------------------


def _lock_waiters(conn: sa.Connection) -> int:
    return int(
        conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        ).scalar_one()
    )


def _wait_for_a_lock_waiter(engine: Engine, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    with engine.connect() as probe:
        while _lock_waiters(probe) == 0:
            assert time.monotonic() < deadline, "the kanban call never waited for the lock"
            time.sleep(0.005)
            probe.rollback()


def _lock_row(conn: sa.Connection, task_id: int) -> None:
    conn.execute(sa.text("SELECT id FROM kanban_tasks WHERE id = :id FOR UPDATE"), {"id": task_id})


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_postgres_row_lock_held_elsewhere_raises_database_busy_and_writes_nothing(
    db_url: str, session: Session
) -> None:
    task_id, token = claimed(session)
    before = snapshot(session)

    with (
        kanban_engine(
            db_url,
            poolclass=sa.pool.NullPool,
            connect_args={"options": "-c lock_timeout=100"},
            retry=IMPATIENT,
        ) as busy_engine,
        Session(busy_engine) as busy,
        kanban_engine(db_url, poolclass=sa.pool.NullPool) as other,
        other.connect() as holder,
    ):
        _lock_row(holder, task_id)
        with pytest.raises(kb.DatabaseBusy) as caught:
            kb.complete_task(busy, task_id, claim_lock=token)
        with pytest.raises(kb.DatabaseBusy):
            kb.heartbeat(busy, task_id, claim_lock=token)
        holder.rollback()

    assert not isinstance(caught.value, sa.exc.DBAPIError)
    cause = caught.value.__cause__
    assert isinstance(cause, sa.exc.OperationalError)
    assert getattr(cause.orig, "sqlstate", None) == "55P03"  # lock_not_available
    assert snapshot(session) == before


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_postgres_write_waits_out_a_row_lock_released_later(
    db_url: str, session: Session, engine: Engine
) -> None:
    task_id, token = claimed(session)

    with (
        kanban_engine(
            db_url,
            poolclass=sa.pool.NullPool,
            connect_args={"options": "-c lock_timeout=50"},
            retry=PATIENT,
        ) as patient_engine,
        kb.session_factory(patient_engine)() as patient,
        kanban_engine(db_url, poolclass=sa.pool.NullPool) as other,
        other.connect() as holder,
    ):
        _lock_row(holder, task_id)
        release = threading.Timer(0.3, holder.rollback)
        started = time.monotonic()
        release.start()
        try:
            done = kb.complete_task(patient, task_id, claim_lock=token)
        finally:
            release.join()
        waited = time.monotonic() - started

    assert waited >= 0.25 and done.status == "done"
    assert task_row(engine, task_id).status == "done"
    assert [r.outcome for r in runs(engine, task_id)] == ["completed"]
    assert kinds(engine, task_id).count("completed") == 1


def _deadlock_complete_task(
    db_url: str, session: Session, policy: kb.RetryPolicy
) -> tuple[dict[str, Any], int, int, bool]:
    """Make complete_task(parent) deadlock with another transaction; what it returned.

    The other transaction locks the child; complete_task locks the parent, then waits
    for the child (promoting it). The other then updates the parent: a cycle. The
    kanban connection's deadlock_timeout is the shorter, so PostgreSQL aborts the kanban
    transaction (SQLSTATE 40P01) and the retry layer sees a real deadlock.
    """
    parent, token = claimed(session, title="parent")
    child = kb.create_task(session, title="child", parents=[parent])
    outcome: dict[str, Any] = {}
    with (
        kanban_engine(
            db_url,
            poolclass=sa.pool.NullPool,
            connect_args={"options": "-c deadlock_timeout=1s"},
            retry=policy,
        ) as kanban,
        kanban_engine(db_url, poolclass=sa.pool.NullPool) as other,
        other.connect() as holder,
    ):
        if holder.exec_driver_sql("SHOW is_superuser").scalar() != "on":
            pytest.skip("setting deadlock_timeout needs a PostgreSQL superuser")
        holder.exec_driver_sql("SET deadlock_timeout = '10s'")
        _lock_row(holder, child)

        def complete() -> None:
            with kb.session_factory(kanban)() as s:
                try:
                    outcome["task"] = kb.complete_task(s, parent, claim_lock=token)
                except Exception as error:
                    outcome["error"] = error

        worker = threading.Thread(target=complete)
        worker.start()
        try:
            _wait_for_a_lock_waiter(other)
            holder.execute(
                sa.text("UPDATE kanban_tasks SET priority = priority WHERE id = :id"),
                {"id": parent},
            )
            # Our UPDATE of the parent got its lock: the kanban transaction was aborted.
            aborted_while_running = worker.is_alive() or "error" in outcome
            holder.commit()
        finally:
            worker.join(timeout=10)
    assert not worker.is_alive()
    return outcome, parent, child, aborted_while_running


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_postgres_deadlock_is_retried_transparently(
    db_url: str, session: Session, engine: Engine
) -> None:
    outcome, parent, child, aborted = _deadlock_complete_task(db_url, session, PATIENT)

    assert aborted
    assert "error" not in outcome, outcome.get("error")
    assert outcome["task"].status == "done"
    assert task_row(engine, parent).status == "done"
    assert task_row(engine, child).status == "ready"
    assert kinds(engine, parent).count("completed") == 1
    assert kinds(engine, child) == ["created", "promoted"]
    assert [r.outcome for r in runs(engine, parent)] == ["completed"]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_postgres_deadlock_with_no_retries_left_raises_database_busy(
    db_url: str, session: Session, engine: Engine
) -> None:
    outcome, parent, child, _ = _deadlock_complete_task(
        db_url, session, kb.RetryPolicy(max_attempts=1)
    )

    error = outcome.get("error")
    assert isinstance(error, kb.DatabaseBusy), outcome
    assert isinstance(error.__cause__, sa.exc.OperationalError)
    assert getattr(error.__cause__.orig, "sqlstate", None) == "40P01"  # deadlock_detected
    assert task_row(engine, parent).status == "running"
    assert task_row(engine, child).status == "todo"
    assert kinds(engine, parent) == ["created", "claimed"]
