"""A tenant-scoped call never sees, claims or counts another tenant's task (property test)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import queries as q

TENANTS = ["acme", "globex", None]

boards = st.lists(
    st.tuples(st.sampled_from(TENANTS), st.integers(-3, 3), st.sampled_from(["a", "b", None])),
    max_size=12,
)


def clear(session: Session) -> None:
    for table in (q.comments, q.events, q.links, q.runs, q.tasks):
        session.execute(delete(table))
    session.commit()


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(board=boards, scope=st.sampled_from(["acme", "globex"]), claims=st.integers(1, 4))
def test_scoped_calls_stay_inside_their_tenant(
    session: Session, board: list[tuple[str | None, int, str | None]], scope: str, claims: int
) -> None:
    clear(session)
    owner = {
        kb.create_task(session, title="t", tenant=tenant, priority=priority, assignee=assignee): (
            tenant
        )
        for tenant, priority, assignee in board
    }
    mine = {task_id for task_id, tenant in owner.items() if tenant == scope}

    assert {t.id for t in kb.list_tasks(session, tenant=scope)} == mine
    stats = kb.board_stats(session, tenant=scope)
    assert sum(stats["by_status"].values()) == len(mine)

    claimed = kb.claim_many(session, claimer="w", limit=claims, tenant=scope)
    assert {t.id for t in claimed} <= mine
    assert len(claimed) == min(claims, len(mine))
    nxt = kb.claim_next(session, claimer="w", tenant=scope)
    assert nxt is None or nxt.id in mine
    others = [t for t in kb.list_tasks(session) if owner[t.id] != scope]
    assert all(t.status == "ready" and t.version == 1 for t in others)
