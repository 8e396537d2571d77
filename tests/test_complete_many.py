"""complete_many: a batch of fenced completions in one transaction, all or none."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.models import TaskEvent

from .helpers import snapshot


def claim_batch(session: Session, n: int) -> list[tuple[int, str]]:
    for i in range(n):
        kb.create_task(session, title=f"t{i}")
    claimed = kb.claim_many(session, claimer="w", limit=n)
    assert len(claimed) == n
    return [(t.id, str(t.claim_lock)) for t in claimed]


def test_completes_every_claim_with_its_run_and_event(session: Session) -> None:
    pairs = claim_batch(session, 5)
    done = kb.complete_many(session, pairs, result="ok", summary="batch")
    assert [(t.id, t.status, t.result, t.claim_lock) for t in done] == [
        (task_id, "done", "ok", None) for task_id, _ in pairs
    ]
    for task_id, _ in pairs:
        assert [(r.outcome, r.summary) for r in kb.list_runs(session, task_id=task_id)] == [
            ("completed", "batch")
        ]
    completed = session.scalar(select(func.count()).where(TaskEvent.kind == "completed"))
    session.rollback()
    assert completed == 5


def test_takes_the_tasks_claim_many_returned(session: Session) -> None:
    for i in range(3):
        kb.create_task(session, title=f"t{i}")
    claimed = kb.claim_many(session, claimer="w", limit=3)
    assert {t.status for t in kb.complete_many(session, claimed)} == {"done"}


def test_one_lost_claim_completes_none_and_names_it(session: Session) -> None:
    pairs = claim_batch(session, 3)
    lost_id, lost_token = pairs[1]
    kb.complete_task(session, lost_id, claim_lock=lost_token)
    before = snapshot(session)
    with pytest.raises(kb.ClaimLost) as raised:
        kb.complete_many(session, pairs)
    assert str(lost_id) in str(raised.value)
    assert snapshot(session) == before


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param("not a list", id="string"),
        pytest.param([(1, "a", "extra")], id="triple"),
        pytest.param([(0, "a")], id="bad id"),
        pytest.param([(1, "")], id="empty token"),
    ],
)
def test_bad_input_is_refused_before_any_sql(session: Session, claims: object) -> None:
    before = snapshot(session)
    with pytest.raises(kb.InvalidInput):
        kb.complete_many(session, claims)  # type: ignore[arg-type]
    assert snapshot(session) == before


def test_a_task_listed_twice_is_refused(session: Session) -> None:
    pairs = claim_batch(session, 2)
    before = snapshot(session)
    with pytest.raises(kb.InvalidInput, match="more than once"):
        kb.complete_many(session, [*pairs, pairs[0]])
    assert snapshot(session) == before


def test_an_empty_batch_writes_nothing(session: Session) -> None:
    assert kb.complete_many(session, []) == []


def test_promotes_children_and_writes_the_rows_complete_task_writes(session: Session) -> None:
    pairs = claim_batch(session, 3)
    child = kb.create_task(session, title="child", parents=[pairs[0][0], pairs[1][0]])
    single_id, single_token = pairs[2]
    kb.complete_task(session, single_id, claim_lock=single_token)

    kb.complete_many(session, pairs[:2])

    assert kb.get_task(session, child).status == "ready"
    assert [e.kind for e in kb.list_events(session, task_id=child)] == ["created", "promoted"]
    for task_id, _ in pairs:
        completed = [e for e in kb.list_events(session, task_id=task_id) if e.kind == "completed"]
        (run,) = kb.list_runs(session, task_id=task_id)
        assert [(e.run_id, e.payload) for e in completed] == [(run.id, {"forced": False})]
        assert (run.outcome, run.ended_at is not None) == ("completed", True)
