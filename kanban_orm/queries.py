"""Every statement the library issues, named, built once, run with parameters.

This module is the only place SQL is written. Each task UPDATE is a compare-and-swap:
its WHERE clause names the state it expects (and, for a fenced call, the caller's
claim_lock), and it bumps ``version``. Zero rows back means the expectation did not
hold; the service then explains why (:func:`kanban_orm.steps.explain`), never
retries blindly.

Statements are module constants (or cached per filter combination), so each is
compiled once per dialect (:mod:`kanban_orm.driver`) and run with parameters.

Naming: a statement constant is ``VERB_OBJECT[_QUALIFIER]`` (``CLAIM_BY_ID``,
``CLOSE_OPEN_RUN_SEEING_CHILDREN``, ``TASK_COMMENTS`` for a read); a function that builds
one, for a filter combination or from checked arguments, is ``*_statement``
(``claim_next_statement``, ``tasks_statement``). Private pieces (``_CLAIM_VALUES``,
``claimable``) are the portable parts the statements share.

One home: the portable statements live here, and so do the backend-only ones built
from those shared pieces (PostgreSQL's data-modifying CTEs, ``ctid`` check and
``unnest`` batches; SQLite's numbered runs and ``json_each`` batches), each labelled
"PostgreSQL only:" or "SQLite only:" with the reason, because moving them would mean
exporting every shared piece to the backend modules and keeping two copies of the
claim and completion values in step. A backend-only statement that shares nothing
with the portable ones lives in its backend's module (``kanban_orm.backends.*``:
PostgreSQL's advisory locks, MariaDB's claim pick and RETURNING emulation). Reads of
the public API (``tasks_statement``, ``events_statement``, ...) are here too: the
service, workflow and CLI modules write no SQL.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Integer,
    String,
    Table,
    and_,
    bindparam,
    case,
    column,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql import ColumnElement, Executable, Select
from sqlalchemy.sql.dml import Insert, ReturningUpdate
from sqlalchemy.sql.selectable import Exists
from sqlalchemy.types import TypeDecorator

from .clock import new_claim_token, utcnow, utcnow_at_statement_start
from .models import (
    TALLIED_WHERE,
    JsonDoc,
    RegisteredWorker,
    StatusTally,
    Task,
    TaskComment,
    TaskEvent,
    TaskLink,
    TaskRun,
)
from .states import FINISHED, Status, can_move, sources_of

tasks: Table = Task.__table__  # type: ignore[assignment]
runs: Table = TaskRun.__table__  # type: ignore[assignment]
events: Table = TaskEvent.__table__  # type: ignore[assignment]
links: Table = TaskLink.__table__  # type: ignore[assignment]
comments: Table = TaskComment.__table__  # type: ignore[assignment]
tallies: Table = StatusTally.__table__  # type: ignore[assignment]
workers: Table = RegisteredWorker.__table__  # type: ignore[assignment]

_FINISHED = [s.value for s in FINISHED]
_UNFINISHED = [s.value for s in Status if s not in FINISHED]


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
    (Status.READY, Status.TODO),  # a new unfinished parent, or a reopened one
    (Status.DONE, Status.READY),  # reopen
    (Status.DONE, Status.TODO),  # reopen while a parent is unfinished
    (Status.TRIAGE, Status.READY),  # specify
    (Status.TRIAGE, Status.TODO),  # specify while a parent is unfinished
    (Status.RUNNING, Status.REVIEW),  # hand in for review
    (Status.REVIEW, Status.DONE),  # approve
    (Status.REVIEW, Status.READY),  # request changes
    (Status.REVIEW, Status.TODO),  # request changes while a parent is unfinished
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
        # Spelled out rather than NOT IN (list): a list renders at execution time,
        # and this predicate is in every claim.
        *(parent.c.status != finished for finished in _FINISHED),
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
# inline(): nothing reads these rows back, so PostgreSQL need not return their ids.
INSERT_LINK = insert(links).inline()
INSERT_COMMENT = insert(comments).returning(*comments.c)
INSERT_EVENT = insert(events).inline()


@cache
def live_by_idempotency_key_statement(has_tenant: bool) -> Select[Any]:
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

CLAIM_BY_ID = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"), claimable(tasks))
    .values(_CLAIM_VALUES)
    .returning(*tasks.c)
)

#: SQLite only: it numbers a claim's runs itself, as it would (the highest run id plus one, then
#: up): its writers are serialised, so no other transaction can take those ids between
#: the claim and the INSERT of the runs, and the claim sets current_run_id in passing.
_LAST_RUN_ID = select(func.coalesce(func.max(runs.c.id), 0)).scalar_subquery()

#: SQLite only: CLAIM_BY_ID, numbering its run (see _LAST_RUN_ID).
CLAIM_BY_ID_NUMBERED = CLAIM_BY_ID.values(current_run_id=_LAST_RUN_ID + 1)


@cache
def claim_next_statement(
    by_assignee: bool, by_tenant: bool, numbered: bool = False, after: Any = None
) -> ReturningUpdate[Any]:
    """Claim up to ``:limit`` of the best ready tasks in one statement.

    PostgreSQL picks candidates ``FOR UPDATE SKIP LOCKED``, so concurrent claimers
    divide the queue instead of queueing behind one row; SQLite (which renders no
    locking clause) runs it under ``BEGIN IMMEDIATE``, one writer at a time.
    ``numbered`` (SQLite) also sets each task's ``current_run_id`` (see _LAST_RUN_ID).
    ``after`` (PostgreSQL, a CTE of the same statement): pick nothing unless it has a
    row, so the claim happens only if that earlier step did.
    """
    candidate = tasks.alias("candidate")
    pick: Select[Any] = select(candidate.c.id).where(claimable(candidate))
    if after is not None:
        pick = pick.where(exists(select(after.c.id)))
    if by_assignee:
        pick = pick.where(candidate.c.assignee == bindparam("only_assignee"))
    if by_tenant:
        pick = pick.where(candidate.c.tenant == bindparam("only_tenant"))
    pick = (
        pick.order_by(candidate.c.priority.desc(), candidate.c.id)
        # The limit is written into the SQL (one prepared statement per batch size):
        # with a bound LIMIT, PostgreSQL's generic plan is costed for a tenth of the
        # table, so it kept re-planning the statement on every call instead.
        .limit(bindparam("limit", type_=Integer, literal_execute=True))
        .with_for_update(skip_locked=True, of=candidate)
    )
    # A MATERIALIZED CTE joined with UPDATE ... FROM: PostgreSQL evaluates the pick
    # exactly once. Written as "id IN (subquery LIMIT n)" the planner may re-run the
    # subquery and, skipping the rows it has just locked, claim more than n.
    picked = pick.cte("picked").prefix_with("MATERIALIZED", dialect="postgresql")
    values = _CLAIM_VALUES
    if numbered:
        # Numbered over the picked rows only, in no particular order (the ids need only be
        # distinct): a window over the pick itself would rank every claimable task before
        # the LIMIT, and PostgreSQL forbids one with FOR UPDATE.
        rank = func.row_number().over().label("rank")
        picked = select(picked.c.id, rank).cte("numbered")
        values = {**values, "current_run_id": _LAST_RUN_ID + picked.c.rank}
    # The pick re-checked its WHERE on the latest row version as it locked each row
    # (SQLite: under the write lock), so the picked rows are claimable and stay so.
    # Repeating the whole guard here made PostgreSQL's planner drive the UPDATE from
    # the ready index and scan the entire backlog for the one picked id; the unclaimed
    # check alone leaves it the primary-key lookup.
    return (
        update(tasks)
        .where(tasks.c.id == picked.c.id, tasks.c.claim_lock.is_(None))
        .values(values)
        .returning(*tasks.c)
    )


_claimer = bindparam("claimer", type_=runs.c.claimer.type)
#: The registered worker that claims (kb0011), or NULL for a caller that is none.
_worker_id = bindparam("worker_id", type_=runs.c.worker_id.type)


def _runs_and_events(
    claimed: Any, json_object: Any, *where: ColumnElement[bool]
) -> tuple[Insert, Insert]:
    """The run and the ``claimed`` event of each claimed task: INSERT ... SELECT from
    ``claimed`` (task rows whose ``current_run_id`` names the new run), ``where`` given."""
    opened = insert(runs).from_select(
        [
            "id",
            "task_id",
            "attempt",
            "claimer",
            "worker_id",
            "claim_lock",
            "started_at",
            "last_heartbeat_at",
        ],
        select(
            claimed.c.current_run_id,
            claimed.c.id,
            claimed.c.attempts,
            _claimer,
            _worker_id,
            claimed.c.claim_lock,
            utcnow(),
            utcnow(),
        ).where(*where),
    )
    logged = insert(events).from_select(
        ["task_id", "run_id", "kind", "payload", "created_at"],
        select(
            claimed.c.id,
            claimed.c.current_run_id,
            literal("claimed"),
            _claimed_payload(json_object, claimed.c.attempts),
            utcnow(),
        ).where(*where),
    )
    return opened, logged


def _claimed_payload(json_object: Any, attempt: Any) -> Any:
    """A ``claimed`` event's payload: who claimed, and which attempt this is."""
    return json_object(literal("claimer"), _claimer, literal("attempt"), attempt)


#: The run ids a PostgreSQL claim hands out before it inserts the runs.
_NEXT_RUN_ID = func.nextval(func.pg_get_serial_sequence(runs.name, runs.c.id.name))


@cache
def claim_opening_runs_statement(claim: ReturningUpdate[Any]) -> Select[Any]:
    """PostgreSQL only: ``claim`` (a claim UPDATE above) and everything a claim writes, in one
    statement, so the row lock is held for one round trip instead of five.

    Data-modifying CTEs: the claim takes a run id from the runs' sequence as it sets
    ``current_run_id``, the run rows and one ``claimed`` event per task are inserted from
    its RETURNING, and the claimed task rows come back best first.
    """
    claimed = claim.values(current_run_id=_NEXT_RUN_ID).cte("claimed")
    opened, logged = _runs_and_events(claimed, func.jsonb_build_object)
    return (
        select(claimed)
        .add_cte(opened.cte("opened"), logged.cte("logged"))
        .order_by(claimed.c.priority.desc(), claimed.c.id)
    )


# -- leases -----------------------------------------------------------------------------

#: The caller's claim still holds the task. A claim_lock is set only while the task runs
#: (CHECK claim_lock_iff_running), so the token says ``status = 'running'`` too; naming
#: the status as well invited PostgreSQL to find the task through the claim-order index,
#: walking every entry for 'running', dead ones of finished claims included, instead of
#: looking up the primary key.
_HELD = and_(tasks.c.id == bindparam("task_id"), tasks.c.claim_lock == bindparam("token"))

HEARTBEAT = (
    update(tasks)
    .where(_HELD)
    .values(claim_expires=utcnow(bindparam("ttl")), version=tasks.c.version + 1)
    .returning(tasks.c.current_run_id, tasks.c.claim_expires)
)
TOUCH_RUN = update(runs).where(runs.c.id == bindparam("run_id")).values(last_heartbeat_at=utcnow())


@cache
def expired_claims_statement(by_assignee: bool, by_tenant: bool) -> Select[Any]:
    """Up to ``:limit`` expired leases, oldest first, within the same filters a claim uses
    (a claimer scoped to one tenant must not touch another tenant's tasks)."""
    statement = select(
        tasks.c.id, tasks.c.claim_lock, tasks.c.attempts, tasks.c.max_attempts
    ).where(
        tasks.c.status == Status.RUNNING.value,
        tasks.c.claim_expires < utcnow_at_statement_start(),
    )
    if by_assignee:
        statement = statement.where(tasks.c.assignee == bindparam("only_assignee"))
    if by_tenant:
        statement = statement.where(tasks.c.tenant == bindparam("only_tenant"))
    return (
        statement.order_by(tasks.c.claim_expires)
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(skip_locked=True)
    )


@cache
def claimable_exists_statement(by_assignee: bool, by_tenant: bool) -> Select[Any]:
    """True when :func:`claim_next_statement` (or the takeover of an expired lease)
    within the same filters would find a task: what kanban_orm.wait_for_ready asks.
    Two EXISTS rather than one OR, so each can use its own index."""
    ready, expired = tasks.alias("ready"), tasks.alias("expired")
    waiting = [claimable(ready)]
    lapsed = [
        expired.c.status == Status.RUNNING.value,
        expired.c.claim_expires < utcnow_at_statement_start(),
    ]
    for wanted, field in ((by_assignee, "assignee"), (by_tenant, "tenant")):
        if wanted:
            waiting.append(ready.c[field] == bindparam(f"only_{field}"))
            lapsed.append(expired.c[field] == bindparam(f"only_{field}"))
    return select(or_(exists().where(*waiting), exists().where(*lapsed)))


# -- registered workers (kanban_orm.registry) -------------------------------------------

INSERT_WORKER = insert(workers).values(
    claimer=bindparam("claimer"),
    host=bindparam("host"),
    pid=bindparam("pid"),
    process_start=bindparam("process_start"),
    started_at=utcnow(),
    last_seen_at=utcnow(),
    locked_at=utcnow(),
)
_THE_WORKER = workers.c.id == bindparam("worker_id")
WORKER_SEEN = update(workers).where(_THE_WORKER).values(last_seen_at=utcnow())
#: The worker took its liveness lock again (a new connection after the old one died).
WORKER_LOCKED = update(workers).where(_THE_WORKER).values(locked_at=utcnow(), last_seen_at=utcnow())
#: A clean stop, or a death proven by another worker: the row is history from now on.
WORKER_ENDED = (
    update(workers)
    .where(
        workers.c.id.in_(bindparam("worker_ids", expanding=True)), workers.c.stopped_at.is_(None)
    )
    .values(stopped_at=utcnow(), end_reason=bindparam("end_reason"))
)
FORGET_ENDED_WORKERS = delete(workers).where(
    workers.c.stopped_at < utcnow(-bindparam("keep_seconds"))
)
#: The tasks a registered worker still holds, through each task's open run.
_HELD_BY_WORKERS = tasks.join(runs, runs.c.id == tasks.c.current_run_id).join(
    workers, workers.c.id == runs.c.worker_id
)
_WORKER_LIVENESS = (
    workers.c.host,
    workers.c.pid,
    workers.c.process_start,
    workers.c.locked_at,
    workers.c.stopped_at,
)


@cache
def worker_claims_statement(by_assignee: bool, by_tenant: bool) -> Select[Any]:
    """Up to ``:limit`` running tasks held by registered workers, with what proves each
    worker alive, within the same filters a claim uses."""
    statement = (
        select(
            tasks.c.id,
            tasks.c.claim_lock,
            tasks.c.attempts,
            tasks.c.max_attempts,
            workers.c.id.label("worker_id"),
            workers.c.claimer,
            *_WORKER_LIVENESS,
        )
        .select_from(_HELD_BY_WORKERS)
        .where(tasks.c.status == Status.RUNNING.value)
    )
    if by_assignee:
        statement = statement.where(tasks.c.assignee == bindparam("only_assignee"))
    if by_tenant:
        statement = statement.where(tasks.c.tenant == bindparam("only_tenant"))
    return statement.limit(bindparam("limit", type_=Integer))


#: Take back the claim of a worker proven dead: a compare-and-swap on the token seen,
#: whatever the lease says (RECLAIM_EXPIRED's twin without its expiry guard).
RECLAIM_HELD = (
    update(tasks)
    .where(_HELD)
    .values(
        status=bindparam("next_status"), block_reason=bindparam("reason"), **_RELEASE_CLAIM, **_BUMP
    )
    .returning(tasks.c.id)
)
_claims_held = (
    select(func.count())
    .select_from(tasks.join(runs, runs.c.id == tasks.c.current_run_id))
    .where(runs.c.worker_id == workers.c.id, tasks.c.status == Status.RUNNING.value)
    .scalar_subquery()
)
#: Registered workers, newest first, each with the number of claims it holds.
LIST_WORKERS = (
    select(workers, _claims_held.label("claims"))
    .order_by(workers.c.id.desc())
    .limit(bindparam("limit", type_=Integer))
)
LIST_LIVE_WORKERS = LIST_WORKERS.where(workers.c.stopped_at.is_(None))


# -- finishing a run --------------------------------------------------------------------

_CLOSING_RUN: dict[str, Any] = {
    "ended_at": utcnow(),
    "outcome": bindparam("run_outcome"),
    "summary": bindparam("run_summary"),
    # the Core column is "metadata" (only the ORM attribute is metadata_)
    "metadata": bindparam("run_metadata", type_=JsonDoc),
    "error": bindparam("run_error"),
}
CLOSE_OPEN_RUN = (
    update(runs)
    .where(runs.c.task_id == bindparam("run_task_id"), runs.c.ended_at.is_(None))
    .values(_CLOSING_RUN)
    .returning(runs.c.id)
)


def children_waiting() -> Exists:
    """Whether :run_task_id has a child waiting in todo (one a promotion may free)."""
    child = tasks.alias("child")
    return exists().where(
        links.c.parent_id == bindparam("run_task_id"),
        child.c.id == links.c.child_id,
        child.c.status == Status.TODO.value,
    )


#: SQLite only: CLOSE_OPEN_RUN that also says whether a child waits, so a finished task with
#: none is spared the promotion's statement (what FINISH_RUN does on PostgreSQL).
CLOSE_OPEN_RUN_SEEING_CHILDREN = CLOSE_OPEN_RUN.returning(children_waiting().label("waiting"))


def _finish_run() -> Select[Any]:
    """PostgreSQL only: close the task's open run and write the transition's event, in one
    statement; returns the run id and whether the task has children waiting in todo.

    Run after the task's own UPDATE, as a statement of its own: its snapshot then sees
    every transaction that committed while that UPDATE waited for the row lock (a child
    linked meanwhile), which the UPDATE's snapshot would not.
    """
    closed = CLOSE_OPEN_RUN.cte("closed")
    run_id = select(closed.c.id).scalar_subquery()
    logged = insert(events).from_select(
        ["task_id", "run_id", "kind", "payload", "created_at"],
        select(
            bindparam("run_task_id", type_=events.c.task_id.type),
            run_id,
            bindparam("event_kind", type_=events.c.kind.type),
            bindparam("event_payload", type_=JsonDoc),
            utcnow(),
        ),
    )
    waiting = children_waiting().label("waiting")
    return select(run_id.label("run_id"), waiting).add_cte(logged.cte("logged"))


_DONE_VALUES: dict[str, Any] = {
    "status": Status.DONE.value,
    "result": bindparam("task_result"),
    "block_reason": None,
    "completed_at": utcnow(),
    **_RELEASE_CLAIM,
    **_BUMP,
}
COMPLETE_HELD = update(tasks).where(_HELD).values(_DONE_VALUES).returning(*tasks.c)
COMPLETE_FORCED = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"), tasks.c.status.in_(_values(sources_of(Status.DONE))))
    .values(_DONE_VALUES)
    .returning(*tasks.c)
)

# Promotion and its races (PostgreSQL, READ COMMITTED). A child becomes ready when its
# last unfinished parent finishes, but each statement sees only what had committed when
# it began: two parents finishing at once would each see the other still running, and a
# child linked to a parent that is finishing would be seen by neither side. So the
# transaction that enables a promotion (finishing a parent, unlinking) first locks the
# waiting children, and one that adds a dependency or puts a child back into the
# ready-or-todo decision (specify, unblock, request changes, reopen) first locks the
# parents and writes a new version of their rows (TOUCH_PARENTS): the second of two such
# transactions waits for the first to commit, and its next statement sees it; a
# completion in one statement (COMPLETE_UNCONTESTED) sees the new row version and steps
# aside. SQLite renders no locking clause; BEGIN IMMEDIATE already serialises writers.

#: Lock the waiting children of :task_id (in id order, so two finishers cannot deadlock).
LOCK_WAITING_CHILDREN = (
    select(tasks.c.id)
    .where(
        tasks.c.status == Status.TODO.value,
        tasks.c.id.in_(select(links.c.child_id).where(links.c.parent_id == bindparam("task_id"))),
    )
    .order_by(tasks.c.id)
    .with_for_update(of=tasks)
)
#: Lock the children of :task_id that have not started (a reopened parent's).
LOCK_UNSTARTED_CHILDREN = (
    select(tasks.c.id)
    .where(
        tasks.c.status.in_([Status.TODO.value, Status.READY.value]),
        tasks.c.id.in_(select(links.c.child_id).where(links.c.parent_id == bindparam("task_id"))),
    )
    .order_by(tasks.c.id)
    .with_for_update(of=tasks)
)
#: Lock one task (a child about to be re-checked).
LOCK_TASK = select(tasks.c.id).where(tasks.c.id == bindparam("task_id")).with_for_update()


def _touching(parents: Select[Any]) -> ReturningUpdate[Any]:
    """Lock the tasks ``parents`` selects, in id order (two touchers cannot deadlock each
    other; one that locks a child first, as the ready-or-todo deciders do, can deadlock
    with create_task locking that child as a parent, and PostgreSQL's deadlock error is
    retried), and write a new version of each row with nothing changed; their ids.

    A row lock alone would make a concurrent completion wait, but not show it that
    anything happened; the new row version does (see :data:`COMPLETE_UNCONTESTED`).
    ``version`` is left alone: the task itself did not change.
    """
    locked = (
        parents.order_by(tasks.c.id)
        .with_for_update(key_share=True)
        .cte("locked")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    return (
        update(tasks)
        .where(tasks.c.id == locked.c.id)
        .values(version=tasks.c.version)
        .returning(tasks.c.id)
    )


#: Before deciding between ready and todo for :task_id (specify, unblock, request
#: changes, reopen): touch its parents. A parent finishing meanwhile either committed
#: before (and is seen done) or waits, and then its promotion sees the child in todo.
TOUCH_PARENTS_OF = _touching(
    select(tasks.c.id).where(
        tasks.c.id.in_(select(links.c.parent_id).where(links.c.child_id == bindparam("task_id")))
    )
)
#: Touch tasks about to become parents (a new link); returns those that exist.
TOUCH_PARENTS = _touching(
    select(tasks.c.id).where(tasks.c.id.in_(bindparam("ids", expanding=True)))
)


def _held_pairs() -> Any:
    """``:ids`` and ``:tokens``, parallel arrays, as rows (id, token)."""
    return (
        func.unnest(
            bindparam("ids", type_=ARRAY(BigInteger)), bindparam("tokens", type_=ARRAY(String))
        )
        .table_valued(column("id", BigInteger), column("token", String))
        .render_derived(name="wanted")
    )


def _completing(*where: ColumnElement[bool]) -> Select[Any]:
    """PostgreSQL only: complete the running tasks ``where`` selects, close each one's run and
    write one ``completed`` event per task, in one statement; the tasks' new rows."""
    done, logged = _completion_ctes(*where)
    return select(done).add_cte(logged)


def _completion_ctes(*where: ColumnElement[bool]) -> tuple[Any, Any]:
    """The CTEs of :func:`_completing`: ``done`` (the tasks' new rows) and ``logged``
    (their ``completed`` events' ids), which needs the runs closed first."""
    done = update(tasks).where(*where).values(_DONE_VALUES).returning(*tasks.c).cte("done")
    closed = (
        update(runs)
        .where(runs.c.task_id == done.c.id, runs.c.ended_at.is_(None))
        .values(
            ended_at=utcnow(),
            outcome="completed",
            summary=bindparam("run_summary"),
            **{"metadata": bindparam("run_metadata", type_=JsonDoc)},
            error=None,
        )
        .returning(runs.c.id, runs.c.task_id)
        .cte("closed")
    )
    logged = insert(events).from_select(
        ["task_id", "run_id", "kind", "payload", "created_at"],
        select(
            done.c.id,
            closed.c.id,
            literal("completed"),
            func.jsonb_build_object(literal("forced"), false()),
            utcnow(),
        ).select_from(done.outerjoin(closed, closed.c.task_id == done.c.id)),
    )
    return done, logged.returning(events.c.id).cte("logged")


def _complete_batch() -> Select[Any]:
    """PostgreSQL only: complete a batch of held claims in one statement (complete_many).

    A task whose token no longer holds it (see _HELD) is simply not in the result, and
    the caller rolls the whole batch back. Promotion is the caller's next statement.
    """
    wanted = _held_pairs()
    return _completing(tasks.c.id == wanted.c.id, tasks.c.claim_lock == wanted.c.token)


def _uncontested() -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """The conditions of a completion that needs no promotion, on ``tasks`` rows: still
    the row version this statement's snapshot saw, and no child waiting in it."""
    seen = tasks.alias("seen")
    child = tasks.alias("child")
    unchanged = literal_column(f"{tasks.name}.ctid") == (
        select(literal_column(f"{seen.name}.ctid"))
        .select_from(seen)
        .where(seen.c.id == tasks.c.id)
        .scalar_subquery()
    )
    nothing_waits = ~exists().where(
        links.c.parent_id == tasks.c.id,
        child.c.id == links.c.child_id,
        child.c.status == Status.TODO.value,
    )
    return unchanged, nothing_waits


def _complete_uncontested(one: bool) -> Select[Any]:
    """PostgreSQL only: complete held claims in one statement that is its own transaction,
    when nothing can need promoting; all of ``:ids`` or none of them (then nothing is
    written and the caller takes the transaction path).

    Completing a parent must promote the children that wait for it, and a child can
    start waiting (a link, a ready-or-todo decision) in a transaction that commits after
    this statement's snapshot was taken, invisible to it. Every such transaction updates
    the parent's row first (:data:`TOUCH_PARENTS`), so here the parent's row is no longer
    the version the snapshot saw. A task is completed only if it is held by its token,
    has no child waiting in the snapshot, and is still the snapshot's row version (same
    ``ctid``: PostgreSQL re-checks a row that changed while the statement waited for its
    lock against the newest version, where the snapshot's ``ctid`` no longer matches).

    ``one``: a single claim, ``:task_id`` and ``:token``, completed by the guarded UPDATE
    itself. Its own statement, also because PostgreSQL plans a prepared statement once
    for all calls only if the generic plan costs no more than the ones made for the
    actual values, and a generic plan must assume an array of several elements. A batch
    (``:ids``, ``:tokens``) locks its tasks first and updates only if it locked them all.
    """
    unchanged, nothing_waits = _uncontested()
    if one:
        return _completing(_HELD, unchanged, nothing_waits)
    wanted = _held_pairs()
    locked = (
        select(tasks.c.id)
        .where(
            tasks.c.id == wanted.c.id,
            tasks.c.claim_lock == wanted.c.token,  # so running (see _HELD)
            unchanged,
            nothing_waits,
        )
        .order_by(tasks.c.id)
        .with_for_update(of=tasks, key_share=True)
        .cte("locked")
        .prefix_with("MATERIALIZED")
    )
    wanted_count = func.cardinality(bindparam("ids", type_=ARRAY(BigInteger)))
    every_one = select(func.count()).select_from(locked).scalar_subquery() == wanted_count
    return _completing(tasks.c.id == locked.c.id, every_one)


# -- SQLite batches: SQLite has no data-modifying CTEs, so a batch takes one statement
# per step, with its ids (and tokens) bound as one JSON array that json_each turns into
# rows: one statement, prepared once, whatever the batch size.


class _IdList(TypeDecorator[list[int]]):
    """A list of ids, bound as the JSON array json_each reads (made without the json
    module, which costs more than the statement's own work for a claim of one)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: list[int] | None, dialect: Any) -> str | None:
        return None if value is None else "[" + ",".join([str(int(v)) for v in value]) + "]"


def _json_each(name: str, of: Any = JSON) -> Any:
    """SQLite only: the list bound as ``:name``, as rows with its members in ``value``."""
    return func.json_each(bindparam(name, type_=of)).table_valued("value")


def _ids(name: str) -> Select[Any]:
    """SQLite only: the ids bound as ``:name``, one row each."""
    return select(_json_each(name, _IdList()).c.value)


#: SQLite only: after the numbered claim UPDATE: the run each claim of ``:ids`` named,
#: then a ``claimed`` event for each.
OPEN_NUMBERED_RUNS, LOG_CLAIMS = _runs_and_events(
    tasks, func.json_object, tasks.c.id.in_(_ids("ids"))
)

#: The same for a claim of one task, from its claimed row's values. SQLite runs these
#: two INSERT ... VALUES in about half the time of the two above for one id (9 vs 16-21
#: µs; claim_next + complete_task 3-4% faster), while for a batch of 50 the INSERT ...
#: SELECT costs 40% less than an INSERT ... VALUES per row.
_attempt = bindparam("attempt", type_=Integer)
OPEN_RUN = insert(runs).values(
    id=bindparam("run_id"),
    task_id=bindparam("task_id"),
    attempt=_attempt,
    claimer=_claimer,
    worker_id=_worker_id,
    claim_lock=bindparam("token"),
    started_at=utcnow(),
    last_heartbeat_at=utcnow(),
)
LOG_CLAIM = insert(events).values(
    task_id=bindparam("task_id"),
    run_id=bindparam("run_id"),
    kind=literal("claimed"),
    payload=_claimed_payload(func.json_object, _attempt),
    created_at=utcnow(),
)


def _complete_pairs() -> ReturningUpdate[Any]:
    """SQLite only: complete the held claims ``:pairs``, a list of [task_id, token]; the new
    rows of those the token still holds (see _HELD)."""
    members = _json_each("pairs")
    wanted = select(
        func.json_extract(members.c.value, "$[0]").label("id"),
        func.json_extract(members.c.value, "$[1]").label("token"),
    ).subquery("wanted")
    return (
        update(tasks)
        .where(tasks.c.id == wanted.c.id, tasks.c.claim_lock == wanted.c.token)
        .values(_DONE_VALUES)
        .returning(*tasks.c)
    )


COMPLETE_PAIRS = _complete_pairs()

#: SQLite only: close the open runs of the tasks in ``:ids``; (id, task_id) of each.
CLOSE_OPEN_RUNS = (
    update(runs)
    .where(runs.c.task_id.in_(_ids("ids")), runs.c.ended_at.is_(None))
    .values(_CLOSING_RUN)
    .returning(runs.c.id, runs.c.task_id)
)

#: Which of :ids have children waiting in todo (a statement after the batch's UPDATE, so
#: its snapshot sees links committed while that UPDATE waited; see _finish_run).
PARENTS_WITH_WAITING_CHILDREN = (
    select(links.c.parent_id)
    .distinct()
    .join(tasks, tasks.c.id == links.c.child_id)
    .where(
        links.c.parent_id.in_(bindparam("ids", expanding=True)),
        tasks.c.status == Status.TODO.value,
    )
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
BLOCK_HELD = update(tasks).where(_HELD).values(_BLOCK_VALUES).returning(*tasks.c)
BLOCK_UNHELD = (
    update(tasks)
    .where(
        tasks.c.id == bindparam("task_id"),
        tasks.c.status.in_([s for s in _values(sources_of(Status.BLOCKED)) if s != "running"]),
        tasks.c.claim_lock.is_(None),
    )
    .values(_BLOCK_VALUES)
    .returning(*tasks.c)
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
    .returning(*tasks.c)
)
#: Hand back without counting a failure: the attempt the claim counted is returned.
RELEASE_HELD = (
    update(tasks)
    .where(_HELD)
    .values(status=Status.READY.value, attempts=tasks.c.attempts - 1, **_RELEASE_CLAIM, **_BUMP)
    .returning(*tasks.c)
)
#: Reclaim an expired lease: a compare-and-swap on the token the reaper saw, so it
#: cannot overwrite a completion that landed after the reaper looked.
RECLAIM_EXPIRED = (
    update(tasks)
    .where(_HELD, tasks.c.claim_expires < utcnow())
    .values(
        status=bindparam("next_status"), block_reason=bindparam("reason"), **_RELEASE_CLAIM, **_BUMP
    )
    .returning(tasks.c.id)
)


@cache
def completing_and_claiming(by_assignee: bool, by_tenant: bool) -> Select[Any]:
    """PostgreSQL: :data:`COMPLETE_ONE_UNCONTESTED` of ``:task_id`` and then, only if it
    completed, the claim of up to ``:limit`` tasks (as :func:`claim_opening_runs_statement`), in one
    statement: what complete_and_claim_many writes when nothing needs promoting.

    The claim's pick waits for the completion's event (``after``), so the completed
    task's ``completed`` event is numbered before the ``claimed`` events, as with two
    calls, and a completion that stepped aside claims nothing. Rows: the claimed tasks'
    columns and ``completed_id``; no row when nothing was completed, one row of NULL
    task columns when nothing was claimed.
    """
    unchanged, nothing_waits = _uncontested()
    done, completed = _completion_ctes(_HELD, unchanged, nothing_waits)
    claim = claim_next_statement(by_assignee, by_tenant, after=completed)
    claimed = claim.values(current_run_id=_NEXT_RUN_ID).cte("claimed")
    opened, logged = _runs_and_events(claimed, func.jsonb_build_object)
    return (
        select(*claimed.c, done.c.id.label("completed_id"))
        .select_from(done.outerjoin(claimed, true()))
        .add_cte(completed, opened.cte("opened"), logged.cte("claims_logged"))
        .order_by(claimed.c.priority.desc(), claimed.c.id)
    )


FINISH_RUN = _finish_run()
COMPLETE_BATCH = _complete_batch()
COMPLETE_UNCONTESTED = _complete_uncontested(one=False)
COMPLETE_ONE_UNCONTESTED = _complete_uncontested(one=True)

# -- reads ------------------------------------------------------------------------------

RUN_OUTCOME_BY_TOKEN = select(runs.c.outcome).where(
    runs.c.task_id == bindparam("task_id"), runs.c.claim_lock == bindparam("token")
)
TASK_STATE = select(
    tasks.c.status, tasks.c.claim_lock, tasks.c.attempts, tasks.c.max_attempts
).where(tasks.c.id == bindparam("task_id"))
TASK_EXISTS = select(tasks.c.id).where(tasks.c.id == bindparam("task_id"))
#: Whole task rows, for the tasks a transition returns.
TASK_ROW = select(tasks).where(tasks.c.id == bindparam("task_id"))
TASK_ROWS = (
    select(tasks)
    .where(tasks.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(tasks.c.priority.desc(), tasks.c.id)
)

DELETE_LINK = (
    delete(links)
    .where(links.c.parent_id == bindparam("parent_id"), links.c.child_id == bindparam("child_id"))
    .returning(links.c.parent_id)
)

# -- board workflow: links, triage, review, archive, edits -------------------------------

_READY_OR_WAITING = case((parents_finished(tasks), Status.READY.value), else_=Status.TODO.value)
_children_of_task = select(links.c.child_id).where(links.c.parent_id == bindparam("task_id"))

LINK_EXISTS = select(links.c.parent_id).where(
    links.c.parent_id == bindparam("parent_id"), links.c.child_id == bindparam("child_id")
)
#: Every task reachable from :child_id by following links downwards; a new link
#: parent -> child closes a cycle exactly when parent is among them.
_descendants = (
    select(links.c.child_id.label("id"))
    .where(links.c.parent_id == bindparam("child_id"))
    .cte("descendants", recursive=True)
)
_descendants = _descendants.union(
    select(links.c.child_id).where(links.c.parent_id == _descendants.c.id)
)
WOULD_CYCLE = select(_descendants.c.id).where(_descendants.c.id == bindparam("parent_id")).limit(1)

#: A ready child whose new parent :parent_id is unfinished waits again. Only that parent
#: is read: it is the row link_tasks locked and touched, so a finisher running meanwhile
#: is seen or sees the link. Reading the child's other parents too could see one still
#: running that completes meanwhile without a promotion (it was not touched, so
#: COMPLETE_UNCONTESTED does not step aside), stranding the child in todo.
_new_parent = tasks.alias("new_parent")
WAIT_FOR_PARENTS = (
    update(tasks)
    .where(
        tasks.c.id == bindparam("child_id"),
        tasks.c.status == Status.READY.value,
        exists().where(
            _new_parent.c.id == bindparam("parent_id"),
            *(_new_parent.c.status != finished for finished in _FINISHED),
        ),
    )
    .values(status=Status.TODO.value, **_BUMP)
    .returning(tasks.c.id)
)
PROMOTE_ONE = (
    update(tasks)
    .where(
        tasks.c.id == bindparam("task_id"),
        tasks.c.status == Status.TODO.value,
        parents_finished(tasks),
    )
    .values(status=Status.READY.value, **_BUMP)
    .returning(tasks.c.id)
)
#: Reopening a parent sends its children that have not started back to waiting.
DEMOTE_CHILDREN = (
    update(tasks)
    .where(tasks.c.status == Status.READY.value, tasks.c.id.in_(_children_of_task))
    .values(status=Status.TODO.value, **_BUMP)
    .returning(tasks.c.id)
)

REOPEN = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"), tasks.c.status == Status.DONE.value)
    .values(status=_READY_OR_WAITING, result=None, completed_at=None, **_BUMP)
    .returning(tasks.c.status)
)
SPECIFY = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"), tasks.c.status == Status.TRIAGE.value)
    .values(status=_READY_OR_WAITING, **_BUMP)
    .returning(tasks.c.status)
)
SUBMIT_FOR_REVIEW = (
    update(tasks)
    .where(_HELD)
    .values(status=Status.REVIEW.value, result=bindparam("task_result"), **_RELEASE_CLAIM, **_BUMP)
    .returning(tasks.c.id)
)
APPROVE = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"), tasks.c.status == Status.REVIEW.value)
    .values(status=Status.DONE.value, block_reason=None, completed_at=utcnow(), **_BUMP)
    .returning(tasks.c.id)
)
REQUEST_CHANGES = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"), tasks.c.status == Status.REVIEW.value)
    .values(status=_READY_OR_WAITING, **_BUMP)
    .returning(tasks.c.status)
)

_archivable = [s for s in _values(sources_of(Status.ARCHIVED)) if s != Status.RUNNING.value]
ARCHIVE_IDLE = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"), tasks.c.status.in_(_archivable))
    .values(status=Status.ARCHIVED.value, **_RELEASE_CLAIM, **_BUMP)
    .returning(tasks.c.id)
)
ARCHIVE_ANY = (
    update(tasks)
    .where(
        tasks.c.id == bindparam("task_id"),
        tasks.c.status.in_(_values(sources_of(Status.ARCHIVED))),
    )
    .values(status=Status.ARCHIVED.value, **_RELEASE_CLAIM, **_BUMP)
    .returning(tasks.c.id)
)

#: Fields a caller may edit on a task with update_task, and their columns.
EDITABLE = {
    "title": tasks.c.title,
    "body": tasks.c.body,
    "assignee": tasks.c.assignee,
    "priority": tasks.c.priority,
    "max_attempts": tasks.c.max_attempts,
    "run_at": tasks.c.run_at,
    "max_runtime": tasks.c.max_runtime_ms,  # seconds in, milliseconds stored
}


@cache
def edit_statement(fields: tuple[str, ...]) -> ReturningUpdate[Any]:
    """Set ``fields`` (a sorted subset of :data:`EDITABLE`) on a task that still exists."""
    changed = {
        EDITABLE[field]: bindparam(f"new_{field}", type_=EDITABLE[field].type) for field in fields
    }
    return (
        update(tasks)
        .where(tasks.c.id == bindparam("task_id"))
        .values({**changed, **_BUMP})
        .returning(tasks.c.id)
    )


#: Before every task's time: a tally never refreshed (``through`` NULL) counts them all.
BEFORE_ANY_TASK = datetime(1900, 1, 1)
#: The tallies, read before the counts that add to them (see :func:`tally_params`).
READ_TALLIES = select(tallies.c.status, tallies.c.tasks, tallies.c.through)
#: In every count of a tallied status, so it can read the partial
#: ix_kanban_tasks_status_updated_at (see models.TALLIED_WHERE).
_IN_TALLY_INDEX = text(TALLIED_WHERE)


def _finished_count(status: str) -> Select[Any]:
    """``status``'s tasks: its kept tally (models.StatusTally) plus those changed since
    the tally's ``through``, an index range over recent rows. Both come as parameters
    (:func:`tally_params`): as a subquery, ``through`` would be unknown to PostgreSQL's
    planner, which would then plan for a third of the table, in parallel."""
    since = select(func.count()).where(
        _IN_TALLY_INDEX,
        tasks.c.status == status,
        tasks.c.updated_at > bindparam(f"{status}_through", type_=DateTime),
    )
    kept = bindparam(f"{status}_kept", type_=BigInteger)
    return select(literal(status), kept + since.scalar_subquery())  # type: ignore[return-value]


def tally_params(rows: Any) -> dict[str, Any]:
    """The parameters of the unscoped count by status, from the rows of READ_TALLIES (a
    missing or never refreshed tally: count everything)."""
    kept = {status: (n, through) for status, n, through in rows if through is not None}
    params: dict[str, Any] = {}
    for status in _FINISHED:
        n, through = kept.get(status, (0, BEFORE_ANY_TASK))
        params[f"{status}_kept"], params[f"{status}_through"] = n, through
    return params


#: refresh_counts: the tasks of a tallied status changed by ``:through``.
COUNT_TALLIED = select(func.count()).where(
    _IN_TALLY_INDEX,
    tasks.c.status == bindparam("status"),
    tasks.c.updated_at <= bindparam("through", type_=DateTime),
)
#: NOWAIT: writers queue behind a waiting exclusive lock, so a refresh must never wait
#: on a transaction left open; it fails at once and the retry layer tries again.
LOCK_TALLIES = select(tallies.c.status).order_by(tallies.c.status).with_for_update(nowait=True)
SET_TALLY = (
    update(tallies)
    .where(tallies.c.status == bindparam("tallied"))
    .values(tasks=bindparam("tasks"), through=bindparam("through", type_=DateTime))
)


@cache
def stats_statements(by_tenant: bool) -> tuple[Executable, Executable, Executable]:
    """Counts by status, open tasks by assignee, and the oldest ready task's creation."""
    scope = [tasks.c.tenant == bindparam("only_tenant")] if by_tenant else []
    # Every condition names the statuses it reads (IN, never NOT IN), so each is a range
    # of the status-led indexes: a board's finished history is most of the table, and
    # the live statuses are then read without scanning it. Each finished status is one
    # count over its own range (an index-only count: the one part that grows with
    # history, prune's to bound).
    live = tasks.c.status.in_(_UNFINISHED)
    finished = (
        _finished_count(status)
        if not by_tenant
        else select(literal(status), func.count()).where(*scope, tasks.c.status == status)
        for status in _FINISHED
    )
    by_status = union_all(
        select(tasks.c.status, func.count()).where(*scope, live).group_by(tasks.c.status),
        *finished,
    )
    by_assignee = (
        select(tasks.c.assignee, func.count()).where(*scope, live).group_by(tasks.c.assignee)
    )
    oldest_ready = select(func.min(tasks.c.created_at), utcnow()).where(
        *scope, tasks.c.status == Status.READY.value
    )
    return by_status, by_assignee, oldest_ready


# -- reads of the public API: ORM entities, built per call from checked arguments ----
# Each read refreshes the objects it returns (populate_existing): a Session that keeps
# objects across calls sees the board as it is now, not as it was when first loaded.

_FRESH = {"populate_existing": True}


def latest_run_statement(task_id: int) -> Select[Any]:
    """The task's most recent run (one row, or none)."""
    return runs_statement(task_id).order_by(None).order_by(TaskRun.id.desc()).limit(1)


def runs_statement(task_id: int) -> Select[Any]:
    """Every run of the task, oldest first."""
    return (
        select(TaskRun)
        .where(TaskRun.task_id == task_id)
        .order_by(TaskRun.id)
        .execution_options(**_FRESH)
    )


def tasks_statement(
    status: str | None, assignee: str | None, tenant: str | None, limit: int | None
) -> Select[Any]:
    """Tasks in id order, filtered; archived tasks only when ``status`` names them."""
    statement = select(Task).order_by(Task.id).execution_options(**_FRESH)
    if status is None:
        statement = statement.where(Task.status != Status.ARCHIVED.value)
    else:
        statement = statement.where(Task.status == status)
    if assignee is not None:
        statement = statement.where(Task.assignee == assignee)
    if tenant is not None:
        statement = statement.where(Task.tenant == tenant)
    return statement if limit is None else statement.limit(limit)


def events_statement(after_id: int, task_id: int | None, limit: int | None) -> Select[Any]:
    """Events with ``id > after_id`` in id order, optionally of one task."""
    statement = (
        select(TaskEvent)
        .where(TaskEvent.id > after_id)
        .order_by(TaskEvent.id)
        .execution_options(**_FRESH)
    )
    if task_id is not None:
        statement = statement.where(TaskEvent.task_id == task_id)
    return statement if limit is None else statement.limit(limit)


#: The parents and the children of ``:task_id``, by id.
PARENT_IDS = (
    select(links.c.parent_id)
    .where(links.c.child_id == bindparam("task_id"))
    .order_by(links.c.parent_id)
)
CHILD_IDS = (
    select(links.c.child_id)
    .where(links.c.parent_id == bindparam("task_id"))
    .order_by(links.c.child_id)
)

#: The comments of ``:task_id``, oldest first.
TASK_COMMENTS = (
    select(TaskComment)
    .where(TaskComment.task_id == bindparam("task_id"))
    .order_by(TaskComment.id)
    .execution_options(**_FRESH)
)


def column_cards_statement(status: str, by_tenant: bool, limit: int | None) -> Select[Any]:
    """The tasks of one board column (of ``:only_tenant`` when ``by_tenant``) in the
    column's display order: newest finished first in done (the order
    ``ix_kanban_tasks_done_order`` serves), claim order elsewhere."""
    in_column = [Task.status == status]
    if by_tenant:
        in_column.append(Task.tenant == bindparam("only_tenant"))
    order: list[ColumnElement[Any]]
    if status == Status.DONE.value:
        order = [func.coalesce(Task.completed_at, Task.created_at).desc(), Task.id.desc()]
    else:
        order = [Task.priority.desc(), Task.id.asc()]
    statement = select(Task).where(*in_column).order_by(*order).execution_options(**_FRESH)
    return statement if limit is None else statement.limit(limit)


#: The database's clock, read on its own (the CLI measures ages with it, as leases are).
DATABASE_NOW = select(utcnow())
#: The claimer of each run of ``:ids``.
RUN_CLAIMERS = select(runs.c.id, runs.c.claimer).where(
    runs.c.id.in_(bindparam("ids", expanding=True))
)
