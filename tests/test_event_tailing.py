"""A follower polling list_events(after_id=...) never misses an event.

On PostgreSQL and MariaDB/MySQL concurrent transactions commit out of event-id order;
the event log guard (models.EVENT_LOG_GUARD_DDL, revision kb0003; on MariaDB/MySQL a
guard row and trigger, revision kb0007) makes the tailing read wait for them.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.backends.mysql import EVENT_GUARD_TABLE, EVENT_GUARD_TRIGGER_DDL
from kanban_orm.models import EVENT_LOG_GUARD_TRIGGER

from . import workers
from .conftest import _empty_mysql_tables, fresh_postgres_database, postgres_url_or_skip

SPAWN = mp.get_context("spawn")


def follow(session: Session, until: threading.Event) -> list[list[int]]:
    """Poll like ``kanban-orm events --follow``: every batch after the last id seen."""
    batches: list[list[int]] = []
    last = 0
    while True:
        finished = until.is_set()  # read before polling: one more poll after the end
        batch = [e.id for e in kb.list_events(session, after_id=last)]
        if batch:
            batches.append(batch)
            last = batch[-1]
        if finished:
            return batches
        time.sleep(0.005)


def test_follower_sees_every_event_of_concurrent_writers(db_url: str, tmp_path: Path) -> None:
    writers, per_writer = 4, 25
    barrier = SPAWN.Barrier(writers)
    procs = [
        SPAWN.Process(
            target=workers.write_events_slowly,
            args=(db_url, f"w{i}", per_writer, barrier, str(tmp_path / f"w{i}")),
        )
        for i in range(writers)
    ]
    for proc in procs:
        proc.start()
    done = threading.Event()
    session = kb.connect(db_url)
    try:
        result: list[list[list[int]]] = []
        follower = threading.Thread(target=lambda: result.append(follow(session, done)))
        follower.start()
        for proc in procs:
            proc.join(timeout=120)
            assert proc.exitcode == 0
        done.set()
        follower.join(timeout=60)
        seen = [event_id for batch in result[0] for event_id in batch]
        every_id = [e.id for e in kb.list_events(session)]
    finally:
        session.close()
    assert len(every_id) == writers * per_writer
    assert seen == every_id, "the follower missed or repeated events"


@pytest.fixture
def pg_url() -> object:
    yield from fresh_postgres_database(postgres_url_or_skip())


def test_tailing_read_waits_for_an_uncommitted_lower_id_on_postgresql(pg_url: str) -> None:
    # Only PostgreSQL can commit out of id order: SQLite runs one writer at a time.
    engine = kb.init_db(pg_url)
    slow, fast, follower = (kb.session_factory(engine)() for _ in range(3))
    try:
        slow.begin()
        kb.create_task(slow, title="slow: inserted first, commits last")
        kb.create_task(fast, title="fast: inserted second, commits first")
        committer = threading.Timer(0.5, slow.commit)
        committer.start()
        first_read = [e.id for e in kb.list_events(follower)]
        committer.join()
        assert first_read == [1, 2], "the read must wait for id 1's transaction to commit"
    finally:
        for s in (slow, fast, follower):
            s.close()


def test_without_the_guard_a_follower_skips_the_late_commit_on_postgresql(pg_url: str) -> None:
    # The counter-proof: the same interleaving with the trigger dropped loses id 1.
    engine = kb.init_db(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TRIGGER {EVENT_LOG_GUARD_TRIGGER} ON kanban_task_events"))
    slow, fast, follower = (kb.session_factory(engine)() for _ in range(3))
    try:
        slow.begin()
        kb.create_task(slow, title="slow")
        kb.create_task(fast, title="fast")
        first_read = [e.id for e in kb.list_events(follower)]
        slow.commit()
        second_read = [e.id for e in kb.list_events(follower, after_id=first_read[-1])]
        assert first_read == [2] and second_read == []
        with pytest.raises(kb.SchemaOutOfDate, match=EVENT_LOG_GUARD_TRIGGER):
            kb.check(engine)
    finally:
        for s in (slow, fast, follower):
            s.close()


@pytest.fixture
def mysql_db_url(mysql_engine: sa.Engine) -> str:
    _empty_mysql_tables(mysql_engine)
    return mysql_engine.url.render_as_string(hide_password=False)


def test_tailing_read_waits_for_a_writer_holding_the_guard_on_mysql(mysql_db_url: str) -> None:
    # The state the row locks of the old tailing read missed: a writer past the
    # trigger's shared lock, its AUTO_INCREMENT id drawn, its row not yet inserted.
    engine = kb.cached_engine(mysql_db_url)
    with engine.connect() as writer:
        writer.execute(
            sa.text(f"SELECT id FROM {EVENT_GUARD_TABLE} WHERE id = 1 LOCK IN SHARE MODE")
        )
        committer = threading.Timer(0.5, writer.commit)
        committer.start()
        follower = kb.connect(mysql_db_url)
        try:
            started = time.monotonic()
            kb.list_events(follower)
            waited = time.monotonic() - started
        finally:
            follower.close()
            committer.join()
    assert waited >= 0.4, "the tailing read must wait for every holder of the guard"


def test_an_event_insert_takes_the_guard_and_check_wants_the_trigger_on_mysql(
    mysql_db_url: str,
) -> None:
    engine = kb.cached_engine(mysql_db_url)
    writer = kb.session_factory(engine)()
    try:
        writer.begin()
        kb.create_task(writer, title="holds the guard until it commits")
        with engine.connect() as reader, pytest.raises(sa.exc.OperationalError, match="1205"):
            reader.execute(
                sa.text(f"SELECT id FROM {EVENT_GUARD_TABLE} WHERE id = 1 FOR UPDATE NOWAIT")
            )
        writer.rollback()
    finally:
        writer.close()
    kb.check(engine)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TRIGGER {EVENT_LOG_GUARD_TRIGGER}"))
    try:
        with pytest.raises(kb.SchemaOutOfDate, match=EVENT_LOG_GUARD_TRIGGER):
            kb.check(engine)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(EVENT_GUARD_TRIGGER_DDL))
