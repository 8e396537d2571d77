"""A COMMIT whose reply is lost: the retry layer replays the call, and a fenced call
whose first attempt had landed reports success instead of ClaimLost."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.driver import Tx
from kanban_orm.models import TaskEvent, TaskRun


@pytest.fixture
def drop_after_next_commit(backend: str, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Arm: the next COMMIT reaches the database, then the connection dies before the
    driver hears back, as when a server or network drops right after committing.

    The real COMMIT runs on the real connection, which is then closed; the driver's own
    commit that follows fails as a dropped connection does."""
    armed: list[bool] = []
    real_raw, real_commit = Tx.raw, Tx.commit

    def commit_then_close(tx: Tx) -> None:
        connection: Any = tx._connection
        if backend == "sqlite":
            connection.execute("COMMIT")
        else:
            connection.commit()
        connection.close()

    def raw(tx: Tx, sql: str) -> None:
        if sql == "COMMIT" and armed:
            armed.clear()
            commit_then_close(tx)
        real_raw(tx, sql)

    def commit(tx: Tx) -> None:
        if armed:
            armed.clear()
            commit_then_close(tx)
        real_commit(tx)

    monkeypatch.setattr(Tx, "raw", raw)
    monkeypatch.setattr(Tx, "commit", commit)
    return lambda: armed.append(True)


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
    assert [r.outcome for r in kb.list_runs(session, task_id=a)] == ["failed"]
    assert [r.outcome for r in kb.list_runs(session, task_id=b)] == ["released"]


def test_a_second_complete_without_a_lost_reply_is_still_claim_lost(session: Session) -> None:
    task = kb.claim_task(session, kb.create_task(session, title="t"), claimer="w")
    assert task is not None and task.claim_lock is not None
    token = task.claim_lock  # the task object itself is refreshed by the completion
    kb.complete_task(session, task.id, claim_lock=token)
    with pytest.raises(kb.ClaimLost):
        kb.complete_task(session, task.id, claim_lock=token)
