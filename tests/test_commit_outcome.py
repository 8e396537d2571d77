"""A COMMIT whose reply is lost: the retry layer replays the call, and a fenced call
whose first attempt had landed reports success instead of ClaimLost."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import db
from kanban_orm.driver import Tx
from kanban_orm.models import TaskEvent, TaskRun


def _autocommits(connection: Any) -> bool:
    """psycopg's ``autocommit`` is a property; MySQLdb's is a method (always truthy)."""
    if callable(connection.autocommit):
        return bool(connection.get_autocommit())
    return bool(connection.autocommit)


@pytest.fixture
def drop_after_next_commit(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], None]]:
    """Arm: the next COMMIT reaches the database, then the connection dies before the
    driver hears back, as when a server or network drops right after committing.

    The real COMMIT runs on the real connection, which is then closed; the driver's own
    commit that follows fails as a dropped connection does. A PostgreSQL statement in
    autocommit mode (one_statement) is its own commit: it runs, the connection is
    closed, and running it again fails as the lost reply would have."""
    armed: list[bool] = []
    real_raw, real_commit, real_execute = Tx.raw, Tx.commit, Tx.execute

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

    def execute(tx: Tx, *args: Any, **kw: Any) -> Any:
        connection: Any = tx._connection
        if armed and backend != "sqlite" and _autocommits(connection):
            armed.clear()
            real_execute(tx, *args, **kw)
            connection.close()
        return real_execute(tx, *args, **kw)

    monkeypatch.setattr(Tx, "raw", raw)
    monkeypatch.setattr(Tx, "commit", commit)
    monkeypatch.setattr(Tx, "execute", execute)
    yield lambda: armed.append(True)
    assert not armed, "an armed drop never happened: the test proved nothing"


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


def _claimed(session: Session, title: str) -> tuple[int, str]:
    task = kb.claim_task(session, kb.create_task(session, title=title), claimer="w")
    assert task is not None and task.claim_lock is not None
    return task.id, task.claim_lock


def test_every_fenced_write_whose_commit_reply_was_lost_reports_success(
    session: Session, drop_after_next_commit: Callable[[], None]
) -> None:
    """Block, submit for review and a batch completion: each finds its own landed
    outcome on the replay instead of reporting ClaimLost."""
    blocked, b_token = _claimed(session, "b")
    reviewed, r_token = _claimed(session, "r")
    batch = [_claimed(session, f"m{i}") for i in range(3)]
    drop_after_next_commit()
    assert kb.block_task(session, blocked, reason="x", claim_lock=b_token).status == "blocked"
    drop_after_next_commit()
    assert kb.submit_for_review(session, reviewed, claim_lock=r_token).status == "review"
    drop_after_next_commit()
    assert {t.status for t in kb.complete_many(session, batch)} == {"done"}
    assert [r.outcome for r in kb.list_runs(session, task_id=blocked)] == ["blocked"]
    assert [r.outcome for r in kb.list_runs(session, task_id=reviewed)] == ["submitted"]
    assert all(counts(session, task_id) == (1, 1) for task_id, _ in batch)


def test_commit_lost_beyond_the_retry_budget_is_unavailable_then_resolved(
    db_url: str, drop_after_next_commit: Callable[[], None]
) -> None:
    """The connection drops right after COMMIT and the server stays away longer than
    the budget: the caller gets DatabaseUnavailable, outcome unknown. Calling again
    inside db.resolving_unknown_outcome() (as the Worker does) reports the landed
    completion as success; called plainly, the second call is a fenced write whose
    claim is gone, ClaimLost, as documented."""
    engine = kb.create_engine(db_url, retry=kb.RetryPolicy(unavailable_seconds=0))
    try:
        with Session(engine) as session:
            task_id, token = _claimed(session, "t")
            drop_after_next_commit()
            with pytest.raises(kb.DatabaseUnavailable) as caught:
                kb.complete_task(session, task_id, claim_lock=token)
            assert isinstance(caught.value.__cause__, DBAPIError)
            with pytest.raises(kb.ClaimLost):
                kb.complete_task(session, task_id, claim_lock=token)
            with db.resolving_unknown_outcome():
                assert kb.complete_task(session, task_id, claim_lock=token).status == "done"
                with pytest.raises(kb.ClaimLost):  # a failure was not what landed
                    kb.fail_task(session, task_id, claim_lock=token, error="e")
            assert counts(session, task_id) == (1, 1)
    finally:
        engine.dispose()
