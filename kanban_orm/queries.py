"""Every statement the library issues, named, built once, run with parameters.

This module is the only place SQL is written. Each task UPDATE is a compare-and-swap:
its WHERE clause names the state it expects (and, for a fenced call, the caller's
claim_lock), and it bumps ``version``. Zero rows back means the expectation did not
hold; the service then explains why (:func:`kanban_orm.service._explain`), never
retries blindly.

Statements are module constants (or cached per filter combination), so SQLAlchemy's
compiled cache serves every call after the first.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import (
    Integer,
    Table,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.sql.dml import ReturningUpdate

from .clock import new_claim_token, utcnow
from .models import JsonDoc, Task, TaskEvent, TaskLink, TaskRun
from .states import FINISHED, Status, can_move, sources_of

tasks: Table = Task.__table__  # type: ignore[assignment]
runs: Table = TaskRun.__table__  # type: ignore[assignment]
events: Table = TaskEvent.__table__  # type: ignore[assignment]
links: Table = TaskLink.__table__  # type: ignore[assignment]

_FINISHED = [s.value for s in FINISHED]


def _values(statuses: tuple[Status, ...] | list[Status]) -> list[str]:
    return [s.value for s in statuses]


# Moves hard-wired into the statements below; the transition table must allow each one,
# checked at import so the SQL and the table cannot drift apart.
_WIRED_MOVES = [
    (Status.READY, Status.RUNNING),  # claim
    (Status.RUNNING, Status.DONE),  # complete
    (Status.RUNNING, Status.READY),  # fail with retry, release, reclaim
    (Status.RUNNING, Status.BLOCKED),  # fail without retry, reclaim past max_attempts
    (Status.TODO, Status.READY),  # promote a child
    (Status.BLOCKED, Status.READY),  # unblock
    (Status.BLOCKED, Status.TODO),  # unblock while a parent is unfinished
]
_illegal = [move for move in _WIRED_MOVES if not can_move(*move)]
if _illegal:  # pragma: no cover - a developer error caught on import
    raise RuntimeError(f"queries use moves the transition table forbids: {_illegal}")


# -- predicates -------------------------------------------------------------------------


def parents_finished(task: Any) -> ColumnElement[bool]:
    """No parent of ``task`` (a table or alias) is still unfinished."""
    parent = tasks.alias("parent")
    return ~exists().where(
        links.c.child_id == task.c.id,
        parent.c.id == links.c.parent_id,
        parent.c.status.not_in(_FINISHED),
    )


def claimable(task: Any) -> ColumnElement[bool]:
    """Ready, unclaimed, due by the database clock, and every parent finished."""
    return and_(
        task.c.status == Status.READY.value,
        task.c.claim_lock.is_(None),
        or_(task.c.run_at.is_(None), task.c.run_at <= utcnow()),
        parents_finished(task),
    )


_BUMP: dict[str, Any] = {"version": tasks.c.version + 1, "updated_at": utcnow()}
_RELEASE_CLAIM: dict[str, Any] = {"claim_lock": None, "claim_expires": None, "current_run_id": None}

# -- creating ---------------------------------------------------------------------------

INSERT_TASK = insert(tasks).returning(tasks.c.id)
INSERT_LINK = insert(links)
INSERT_EVENT = insert(events)
INSERT_RUN = (
    insert(runs)
    .values(started_at=utcnow(), last_heartbeat_at=utcnow())
    .returning(runs.c.id, runs.c.task_id, sort_by_parameter_order=True)
)


@cache
def find_live_by_idempotency_key(has_tenant: bool) -> Select[Any]:
    """The live (not archived) task holding ``:key`` in ``:tenant`` (or no tenant)."""
    tenant = tasks.c.tenant == bindparam("tenant") if has_tenant else tasks.c.tenant.is_(None)
    return select(tasks.c.id).where(
        tasks.c.idempotency_key == bindparam("key"),
        tenant,
        tasks.c.status != Status.ARCHIVED.value,
    )


EXISTING_IDS = select(tasks.c.id).where(tasks.c.id.in_(bindparam("ids", expanding=True)))
ANY_UNFINISHED = (
    select(tasks.c.id)
    .where(tasks.c.id.in_(bindparam("ids", expanding=True)), tasks.c.status.not_in(_FINISHED))
    .limit(1)
)

# -- claiming ---------------------------------------------------------------------------

_CLAIM_VALUES: dict[str, Any] = {
    "status": Status.RUNNING.value,
    "claim_lock": new_claim_token(),
    "claim_expires": utcnow(bindparam("ttl")),
    "attempts": tasks.c.attempts + 1,
    "started_at": func.coalesce(tasks.c.started_at, utcnow()),
    **_BUMP,
}
_CLAIMED = (tasks.c.id, tasks.c.claim_lock, tasks.c.attempts)

CLAIM_BY_ID = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"), claimable(tasks))
    .values(_CLAIM_VALUES)
    .returning(*_CLAIMED)
)


@cache
def claim_next_statement(by_assignee: bool, by_tenant: bool) -> ReturningUpdate[Any]:
    """Claim up to ``:limit`` of the best ready tasks in one statement.

    PostgreSQL picks candidates ``FOR UPDATE SKIP LOCKED``, so concurrent claimers
    divide the queue instead of queueing behind one row; SQLite (which renders no
    locking clause) runs it under ``BEGIN IMMEDIATE``, one writer at a time. The outer
    WHERE repeats the guard: the UPDATE itself is the compare-and-swap.
    """
    candidate = tasks.alias("candidate")
    pick: Select[Any] = select(candidate.c.id).where(claimable(candidate))
    if by_assignee:
        pick = pick.where(candidate.c.assignee == bindparam("only_assignee"))
    if by_tenant:
        pick = pick.where(candidate.c.tenant == bindparam("only_tenant"))
    pick = (
        pick.order_by(candidate.c.priority.desc(), candidate.c.id)
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(skip_locked=True, of=candidate)
    )
    # A MATERIALIZED CTE joined with UPDATE ... FROM: PostgreSQL evaluates the pick
    # exactly once. Written as "id IN (subquery LIMIT n)" the planner may re-run the
    # subquery and, skipping the rows it has just locked, claim more than n.
    picked = pick.cte("picked").prefix_with("MATERIALIZED", dialect="postgresql")
    return (
        update(tasks)
        .where(tasks.c.id == picked.c.id, claimable(tasks))
        .values(_CLAIM_VALUES)
        .returning(*_CLAIMED)
    )


SET_CURRENT_RUN = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"), tasks.c.claim_lock == bindparam("token"))
    .values(current_run_id=bindparam("run_id"), version=tasks.c.version + 1)
)

# -- leases -----------------------------------------------------------------------------

_HELD = and_(
    tasks.c.id == bindparam("task_id"),
    tasks.c.status == Status.RUNNING.value,
    tasks.c.claim_lock == bindparam("token"),
)

HEARTBEAT = (
    update(tasks)
    .where(_HELD)
    .values(claim_expires=utcnow(bindparam("ttl")), version=tasks.c.version + 1)
    .returning(tasks.c.current_run_id)
)
TOUCH_RUN = update(runs).where(runs.c.id == bindparam("run_id")).values(last_heartbeat_at=utcnow())

EXPIRED_CLAIMS = (
    select(tasks.c.id, tasks.c.claim_lock, tasks.c.attempts, tasks.c.max_attempts)
    .where(tasks.c.status == Status.RUNNING.value, tasks.c.claim_expires < utcnow())
    .order_by(tasks.c.claim_expires)
    .limit(bindparam("limit", type_=Integer))
    .with_for_update(skip_locked=True)
)

# -- finishing a run --------------------------------------------------------------------

CLOSE_OPEN_RUN = (
    update(runs)
    .where(runs.c.task_id == bindparam("run_task_id"), runs.c.ended_at.is_(None))
    .values(
        ended_at=utcnow(),
        outcome=bindparam("run_outcome"),
        summary=bindparam("run_summary"),
        # the Core column is "metadata" (only the ORM attribute is metadata_)
        **{"metadata": bindparam("run_metadata", type_=JsonDoc)},
        error=bindparam("run_error"),
    )
    .returning(runs.c.id)
)

_DONE_VALUES: dict[str, Any] = {
    "status": Status.DONE.value,
    "result": bindparam("task_result"),
    "block_reason": None,
    "completed_at": utcnow(),
    **_RELEASE_CLAIM,
    **_BUMP,
}
COMPLETE_HELD = update(tasks).where(_HELD).values(_DONE_VALUES).returning(tasks.c.id)
COMPLETE_FORCED = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"), tasks.c.status.in_(_values(sources_of(Status.DONE))))
    .values(_DONE_VALUES)
    .returning(tasks.c.id)
)

PROMOTE_CHILDREN = (
    update(tasks)
    .where(
        tasks.c.status == Status.TODO.value,
        tasks.c.id.in_(select(links.c.child_id).where(links.c.parent_id == bindparam("task_id"))),
        parents_finished(tasks),
    )
    .values(status=Status.READY.value, **_BUMP)
    .returning(tasks.c.id)
)

_BLOCK_VALUES: dict[str, Any] = {
    "status": Status.BLOCKED.value,
    "block_reason": bindparam("reason"),
    **_RELEASE_CLAIM,
    **_BUMP,
}
BLOCK_HELD = update(tasks).where(_HELD).values(_BLOCK_VALUES).returning(tasks.c.id)
BLOCK_UNHELD = (
    update(tasks)
    .where(
        tasks.c.id == bindparam("task_id"),
        tasks.c.status.in_([s for s in _values(sources_of(Status.BLOCKED)) if s != "running"]),
        tasks.c.claim_lock.is_(None),
    )
    .values(_BLOCK_VALUES)
    .returning(tasks.c.id)
)
UNBLOCK = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"), tasks.c.status == Status.BLOCKED.value)
    .values(
        status=case((parents_finished(tasks), Status.READY.value), else_=Status.TODO.value),
        block_reason=None,
        **_BUMP,
    )
    .returning(tasks.c.status)
)

#: running -> ready (retry later) or blocked (gave up); the attempts seen are part of the
#: guard so the decision made from them cannot go stale.
FAIL_HELD = (
    update(tasks)
    .where(_HELD, tasks.c.attempts == bindparam("seen_attempts"))
    .values(
        status=bindparam("next_status"),
        run_at=utcnow(bindparam("delay")),
        block_reason=bindparam("reason"),
        **_RELEASE_CLAIM,
        **_BUMP,
    )
    .returning(tasks.c.id)
)
#: Hand back without counting a failure: the attempt the claim counted is returned.
RELEASE_HELD = (
    update(tasks)
    .where(_HELD)
    .values(status=Status.READY.value, attempts=tasks.c.attempts - 1, **_RELEASE_CLAIM, **_BUMP)
    .returning(tasks.c.id)
)
#: Reclaim an expired lease: a compare-and-swap on the token the reaper saw, so it
#: cannot overwrite a completion that landed after the reaper looked.
RECLAIM_EXPIRED = (
    update(tasks)
    .where(
        tasks.c.id == bindparam("task_id"),
        tasks.c.status == Status.RUNNING.value,
        tasks.c.claim_lock == bindparam("token"),
        tasks.c.claim_expires < utcnow(),
    )
    .values(
        status=bindparam("next_status"), block_reason=bindparam("reason"), **_RELEASE_CLAIM, **_BUMP
    )
    .returning(tasks.c.id)
)

# -- reads ------------------------------------------------------------------------------

TASK_STATE = select(
    tasks.c.status, tasks.c.claim_lock, tasks.c.attempts, tasks.c.max_attempts
).where(tasks.c.id == bindparam("task_id"))
TASK_EXISTS = select(tasks.c.id).where(tasks.c.id == bindparam("task_id"))

DELETE_LINK = delete(links).where(
    links.c.parent_id == bindparam("parent_id"), links.c.child_id == bindparam("child_id")
)
