"""A COMMIT whose reply is lost: the retry layer replays the call, and a fenced call
whose first attempt had landed reports success instead of ClaimLost."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.models import TaskEvent, TaskRun


@pytest.fixture
def drop_after_next_commit(engine: Engine) -> Iterator[Callable[[], None]]:
    """Arm: the next COMMIT reaches the database, then the connection dies before the
    driver hears back, as when a server or network drops right after committing."""
    armed: list[bool] = []

    def commit_then_drop(conn: Connection) -> None:
        if not armed:
            return
        armed.clear()
        raw: Any = conn.connection.dbapi_connection
        if engine.dialect.name == "sqlite":
            raw.execute("COMMIT")  # the engine runs SQLite without implicit transactions
        else:
            raw.commit()
        raw.close()  # the driver's own commit, next, fails as a dropped connection

    event.listen(engine, "commit", commit_then_drop)
    yield lambda: armed.append(True)
    event.remove(engine, "commit", commit_then_drop)


def counts(session: Session, task_id: int) -> tuple[int, int]:
    completed = session.scalar(
        select(func.count()).where(TaskEvent.task_id == task_id, TaskEvent.kind == "completed")
    )
    closed = session.scalar(
        select(func.count()).where(TaskRun.task_id == task_id, TaskRun.outcome == "completed")
    )
    session.rollback()
    return int(completed or 0), int(closed or 0)


def test_complete_whose_commit_reply_was_lost_reports_success(
    session: Session, drop_after_next_commit: Callable[[], None]
) -> None:
    task = kb.claim_task(session, kb.create_task(session, title="t"), claimer="w")
    assert task is not None and task.claim_lock is not None
    drop_after_next_commit()
    done = kb.complete_task(session, task.id, claim_lock=task.claim_lock)
    assert done.status == "done"
    assert counts(session, task.id) == (1, 1)


def test_fail_and_release_whose_commit_reply_was_lost_report_success(
    session: Session, drop_after_next_commit: Callable[[], None]
) -> None:
    first = kb.claim_task(session, kb.create_task(session, title="f"), claimer="w")
    second = kb.claim_task(session, kb.create_task(session, title="r"), claimer="w")
    assert first is not None and first.claim_lock and second is not None and second.claim_lock
    # Plain values: a replay's rollback expires the ORM objects the session holds.
    (a, a_token), (b, b_token) = (first.id, first.claim_lock), (second.id, second.claim_lock)
    drop_after_next_commit()
    assert kb.fail_task(session, a, claim_lock=a_token, error="x").status == "ready"
    drop_after_next_commit()
    assert kb.release_task(session, b, claim_lock=b_token).status == "ready"
    assert [r.outcome for r in kb.list_runs(session, a)] == ["failed"]
    assert [r.outcome for r in kb.list_runs(session, b)] == ["released"]


def test_a_second_complete_without_a_lost_reply_is_still_claim_lost(session: Session) -> None:
    task = kb.claim_task(session, kb.create_task(session, title="t"), claimer="w")
    assert task is not None and task.claim_lock is not None
    token = task.claim_lock  # the task object itself is refreshed by the completion
    kb.complete_task(session, task.id, claim_lock=token)
    with pytest.raises(kb.ClaimLost):
        kb.complete_task(session, task.id, claim_lock=token)
