"""KeepingSession: one pooled connection for all of a worker's writes, returned at close."""

from __future__ import annotations

import gc
import multiprocessing
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import backends, driver


@pytest.fixture
def checkouts(engine: Engine) -> Iterator[list[object]]:
    """The driver connections the engine's pool hands out, one entry per checkout."""
    seen: list[object] = []

    def count(dbapi_connection: object, _record: object, _proxy: object) -> None:
        seen.append(dbapi_connection)

    event.listen(engine, "checkout", count)
    yield seen
    event.remove(engine, "checkout", count)


def checked_out(engine: Engine) -> int:
    return engine.pool.checkedout()  # type: ignore[attr-defined,no-any-return]


def claim_and_complete(session: Session, title: str) -> None:
    task_id = kb.create_task(session, title=title)
    task = kb.claim_task(session, task_id, claimer="w")
    assert task is not None
    kb.complete_task(session, task_id, claim_lock=task.claim_lock)


def test_a_keeping_session_writes_on_one_connection_and_returns_it_at_close(
    db_url: str, engine: Engine, checkouts: list[object]
) -> None:
    with kb.connect(db_url, keep_connection=True) as session:
        assert isinstance(session, kb.KeepingSession)
        claim_and_complete(session, "one")
        claim_and_complete(session, "two")
        assert kb.claim_next(session, claimer="w") is None
        assert len(checkouts) == 1  # seven writes (a claim_next is two), one checkout
        assert checked_out(engine) == 1
    assert checked_out(engine) == 0
    assert [t.status for t in kb.list_tasks(kb.connect(db_url))] == ["done", "done"]


def test_a_plain_session_returns_the_connection_after_each_write(
    session: Session, engine: Engine, checkouts: list[object]
) -> None:
    claim_and_complete(session, "one")
    assert len(checkouts) == 3
    assert checked_out(engine) == 0


def test_a_session_factory_can_make_keeping_sessions(engine: Engine) -> None:
    with kb.session_factory(engine, keep_connection=True)() as session:
        claim_and_complete(session, "one")
        assert checked_out(engine) == 1
    assert checked_out(engine) == 0


def test_resetting_a_keeping_session_returns_its_connection(db_url: str, engine: Engine) -> None:
    session = kb.connect(db_url, keep_connection=True)
    kb.create_task(session, title="one")
    session.reset()
    assert checked_out(engine) == 0
    kb.create_task(session, title="two")
    assert checked_out(engine) == 1
    session.close()


def test_an_unclosed_keeping_session_returns_its_connection_when_collected(
    db_url: str, engine: Engine
) -> None:
    session = kb.connect(db_url, keep_connection=True)
    kb.create_task(session, title="one")
    assert checked_out(engine) == 1
    del session
    gc.collect()
    assert checked_out(engine) == 0


def test_a_kept_connection_that_was_invalidated_is_replaced(
    db_url: str, engine: Engine, checkouts: list[object]
) -> None:
    with kb.connect(db_url, keep_connection=True) as session:
        kb.create_task(session, title="one")
        kept = session._owned
        kept.invalidate()
        claim_and_complete(session, "two")
        assert len(checkouts) == 2
        assert session._owned is not kept
        assert checked_out(engine) == 1
    assert checked_out(engine) == 0


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_kept_postgresql_connection_whose_server_session_ended_is_replaced(
    db_url: str, engine: Engine
) -> None:
    """The server ends the kept connection's backend between two writes: the next write
    finds it gone, is retried on a new connection, and that one is kept."""
    with kb.connect(db_url, keep_connection=True) as session:
        kb.create_task(session, title="one")
        pid = session._owned.dbapi_connection.info.backend_pid
        with engine.connect() as admin:
            admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        claim_and_complete(session, "two")
        assert session._owned.dbapi_connection.info.backend_pid != pid
        assert [t.status for t in kb.list_tasks(session)] == ["ready", "done"]
        # The old connection's cursor was not used on the new one, nor kept with it.
        assert kept_cursor(session).connection is session._owned.dbapi_connection


def kept_cursor(session: kb.KeepingSession) -> Any:
    """The driver cursor kept with the session's connection for its next write."""
    _owner, cursor = session._owned.info.get(driver._KEPT_CURSOR, (None, None))
    return cursor


def test_postgresql_writes_share_one_cursor_and_sqlite_writes_close_theirs(
    db_url: str, backend: str
) -> None:
    with kb.connect(db_url, keep_connection=True) as session:
        kb.create_task(session, title="one")
        first = kept_cursor(session)
        claim_and_complete(session, "two")
        if not backends.of(session).keeps_cursor:
            # An open sqlite3 cursor could hold a statement, and with it a read snapshot.
            assert first is None and kept_cursor(session) is None
            return
        assert first is not None and not first.closed
        assert first.connection is session._owned.dbapi_connection
        assert kept_cursor(session) is first  # four more writes, the same cursor


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_cursor_of_a_dropped_connection_is_not_kept_for_the_slot_s_next_connection(
    db_url: str,
) -> None:
    """A write meets a dropped connection: invalidating it hands its pool slot back at
    once, and another thread may check the slot out, with a new connection, before the
    failed write has finished. The old cursor must not be left there for it."""
    engine = kb.create_engine(db_url, pool_size=1, max_overflow=0)
    session = kb.connect(db_url)
    one = sa.select(sa.literal(1))

    def tx_on(pooled: Any) -> driver.Tx:
        return driver.Tx(
            pooled.dbapi_connection, engine.dialect, session, pooled.invalidate, kept=pooled.info
        )

    first = engine.raw_connection()
    warm = tx_on(first)
    warm.execute(one)
    warm.close()
    dead_cursor = first.info[driver._KEPT_CURSOR]
    with kb.cached_engine(db_url).connect() as admin:
        admin.execute(
            sa.text("SELECT pg_terminate_backend(:pid)"),
            {"pid": first.dbapi_connection.info.backend_pid},
        )
    failing = tx_on(first)
    with pytest.raises(sa.exc.DBAPIError) as raised:
        failing.execute(one)
    assert raised.value.connection_invalidated
    second = engine.raw_connection()  # "another thread": the same slot, reconnected
    failing.close()  # the failed write ends only now
    assert second.info.get(driver._KEPT_CURSOR) is not dead_cursor
    after = tx_on(second)
    assert after.execute(one).scalar() == 1
    after.close()
    second.close()
    session.close()
    engine.dispose()


def test_invalidating_a_keeping_session_invalidates_its_connection(
    db_url: str, engine: Engine, checkouts: list[object]
) -> None:
    session = kb.connect(db_url, keep_connection=True)
    kb.create_task(session, title="one")
    kept = session._owned
    session.invalidate()
    assert not kept.is_valid
    assert checked_out(engine) == 0
    kb.create_task(session, title="two")  # a new connection, kept again
    assert len(checkouts) == 2
    session.close()


def test_after_the_engine_is_disposed_a_write_checks_out_a_new_connection(
    db_url: str, engine: Engine, checkouts: list[object]
) -> None:
    """Regression (review): the kept connection outlived dispose(), so after a failover
    the session would have gone on writing to the old server."""
    with kb.connect(db_url, keep_connection=True) as session:
        kb.create_task(session, title="one")
        engine.dispose()
        kb.create_task(session, title="two")
        assert len(checkouts) == 2
        assert session._owned_pool is engine.pool
        assert checked_out(engine) == 1


def test_threads_sharing_a_keeping_session_each_get_a_connection_of_their_own(
    db_url: str, engine: Engine
) -> None:
    """Regression (review): two threads were handed the kept connection at once (SQLite
    crashed, PostgreSQL refused every call). A write that finds it in use checks one out
    of the pool, as a plain session's does."""
    session = kb.connect(db_url, keep_connection=True)
    for i in range(80):
        kb.create_task(session, title=f"t{i}")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while (
                task := kb.claim_next(session, claimer=threading.current_thread().name)
            ) is not None:
                kb.complete_task(session, task.id, claim_lock=str(task.claim_lock))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    session.close()
    assert errors == []
    assert checked_out(engine) == 0
    with kb.connect(db_url) as reader:
        assert {t.status for t in kb.list_tasks(reader, limit=1000)} == {"done"}
        completed = kb.list_events(reader, limit=10_000)
        assert sum(e.kind == "completed" for e in completed) == 80


def _write_in_a_forked_child(session: Session, engine: Engine, parents: int, dispose: bool) -> None:
    if dispose:
        engine.dispose(close=False)  # what SQLAlchemy asks of a forked child
    kb.create_task(session, title="from the child")
    assert isinstance(session, kb.KeepingSession)
    used = session._owned.dbapi_connection.info.backend_pid
    session.close()
    sys.exit(0 if used != parents else 3)


@pytest.mark.parametrize("dispose", [True, False], ids=["disposed", "not-disposed"])
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_forked_child_neither_uses_nor_closes_the_parents_kept_connection(
    db_url: str, engine: Engine, dispose: bool
) -> None:
    """The child writes on a connection of its own (two processes on one socket would
    garble each other's messages) and leaves the parent's open."""
    with kb.connect(db_url, keep_connection=True) as session:
        kb.create_task(session, title="from the parent")
        pid = session._owned.dbapi_connection.info.backend_pid
        child = multiprocessing.get_context("fork").Process(
            target=_write_in_a_forked_child, args=(session, engine, pid, dispose)
        )
        child.start()
        child.join(30)
        assert child.exitcode == 0
        kb.create_task(session, title="parent again")
        assert session._owned.dbapi_connection.info.backend_pid == pid
        titles = sorted(t.title for t in kb.list_tasks(session))
    assert titles == ["from the child", "from the parent", "parent again"]
