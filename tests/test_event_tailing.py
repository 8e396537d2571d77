"""A follower polling list_events(after_id=...) never misses an event.

On PostgreSQL concurrent transactions commit out of event-id order; the event log guard
(models.EVENT_LOG_GUARD_DDL, revision kb0003) makes the tailing read wait for them.
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
from kanban_orm import backends
from kanban_orm.backends.mysql import MySQLBackend
from kanban_orm.models import EVENT_LOG_GUARD_TRIGGER

from . import workers
from .conftest import fresh_postgres_database, postgres_url_or_skip

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


def test_follower_sees_every_event_of_concurrent_writers(
    db_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if isinstance(backends.named(sa.make_url(db_url).get_backend_name()), MySQLBackend):
        # Known gap (issue 16 follow-up): the locking read waits for uncommitted event
        # rows, but not for an AUTO_INCREMENT id drawn and not yet inserted; a follower
        # under load once saw 92 before 91. Writers need a shared guard, as on PostgreSQL.
        request.applymarker(
            pytest.mark.xfail(reason="MariaDB event tailing: id drawn before insert", strict=False)
        )
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
