"""Keeping a long-lived board small and auditable: prune, delete, reassign.

Every claim writes a run and two events and nothing else ever removes a row, so a busy
board grows forever. :func:`prune` removes finished history in small batches, each its
own short write transaction through the one retry layer (:func:`kanban_orm.db.run_write`),
so SQLite's write lock and PostgreSQL's row locks are held for one batch at a time.

What prune never does:

* touch a task that is not ``done`` or ``archived`` (its rows, its events);
* remove a finished parent while a child of it is unfinished (the child's history and its
  link stay readable until the child finishes too);
* let a follower skip events silently: every batch that removes events writes a
  ``kanban_board_events`` row whose ``events_through`` is the highest id it removed, and
  :func:`kanban_orm.service.list_events` raises :class:`EventsPruned` to a follower whose
  cursor is below it.

Statements here are portable SQLAlchemy Core: ``FOR UPDATE SKIP LOCKED`` renders on
PostgreSQL and is left out on SQLite, where ``BEGIN IMMEDIATE`` already makes each batch
the only writer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import (
    DateTime,
    Integer,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    false,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement, Select

from . import backends, config, queries, steps
from . import validation as check
from .clock import utcnow
from .db import connect, joins_caller_transaction, run_read, run_write
from .driver import Tx
from .errors import (
    DatabaseBusy,
    EventsPruned,
    InvalidInput,
    InvalidTransition,
    KanbanError,
    TaskNotFound,
)
from .models import TALLIED_STATUSES, BoardEvent, Task, TaskComment, TaskEvent, TaskLink, TaskRun
from .states import FINISHED, Status

log = logging.getLogger(__name__)

tasks: Table = Task.__table__  # type: ignore[assignment]
runs: Table = TaskRun.__table__  # type: ignore[assignment]
events: Table = TaskEvent.__table__  # type: ignore[assignment]
links: Table = TaskLink.__table__  # type: ignore[assignment]
comments: Table = TaskComment.__table__  # type: ignore[assignment]
board: Table = BoardEvent.__table__  # type: ignore[assignment]

_FINISHED = sorted(s.value for s in FINISHED)
#: prune's default batch: small enough that one batch holds SQLite's write lock for
#: milliseconds, large enough that the per-transaction cost is spread.
DEFAULT_BATCH = 500
MAX_BATCH = 10_000  # ids travel as bound parameters; PostgreSQL takes 65,535 at most

# -- statements -------------------------------------------------------------------------


def _finished(task: Any) -> ColumnElement[bool]:
    finished: ColumnElement[bool] = task.c.status.in_(_FINISHED)
    return finished


def _live_child(task: Any) -> ColumnElement[bool]:
    """``task`` has a child that is not finished: that child still counts on it."""
    child = tasks.alias("live_child")
    return exists().where(
        links.c.parent_id == task.c.id,
        child.c.id == links.c.child_id,
        *(child.c.status != finished for finished in _FINISHED),
    )


def _prunable(task: Any, done: bool, archived: bool) -> ColumnElement[bool]:
    """The tasks prune removes: done before ``:done_cutoff`` or archived (last changed)
    before ``:archived_cutoff``, and no unfinished child counts on them."""
    kinds = []
    if done:
        kinds.append(
            and_(
                task.c.status == Status.DONE.value,
                func.coalesce(task.c.completed_at, task.c.created_at)
                < bindparam("done_cutoff", type_=DateTime),
            )
        )
    if archived:
        kinds.append(
            and_(
                task.c.status == Status.ARCHIVED.value,
                task.c.updated_at < bindparam("archived_cutoff", type_=DateTime),
            )
        )
    if not kinds:
        return false()
    return and_(or_(*kinds), ~_live_child(task))


_BATCH_LIMIT = bindparam("batch", type_=Integer)


#: The done column's order (models.DONE_ORDER_SQL): prune walks that index.
_FINISHED_AT = func.coalesce(tasks.c.completed_at, tasks.c.created_at)
#: Where a prune's walk starts: before any task's time.
_EARLIEST = datetime(1, 1, 1)


@cache
def _task_candidates(status: Status) -> Select[Any]:
    """The next batch of prunable tasks of ``status`` after the cursor ``(:after_at,
    :after)``, locked (rows another transaction holds are skipped, and found by the next
    run). The walk follows ix_kanban_tasks_done_order from where the last batch stopped:
    ordered by id, each batch would sort every finished task again, and a prune of N
    tasks would cost N²/batch."""
    return (
        select(tasks.c.id, _FINISHED_AT.label("at"))
        .where(
            tasks.c.status == status.value,
            tuple_(_FINISHED_AT, tasks.c.id)
            > tuple_(bindparam("after_at", type_=DateTime), bindparam("after")),
            _prunable(tasks, status is Status.DONE, status is Status.ARCHIVED),
        )
        .order_by(_FINISHED_AT, tasks.c.id)
        .limit(_BATCH_LIMIT)
        .with_for_update(skip_locked=True)
    )


#: Of the locked ids, those a live child now counts on. A statement of its own: on
#: PostgreSQL it sees links committed while the candidates were being locked (a new link
#: locks its parent first, so one committed later waits for this batch and then finds
#: the parent gone).
_NEEDED_PARENTS = (
    select(links.c.parent_id)
    .distinct()
    .join(tasks, tasks.c.id == links.c.child_id)
    .where(
        links.c.parent_id.in_(bindparam("ids", expanding=True)),
        *(tasks.c.status != finished for finished in _FINISHED),
    )
)
_DELETE_TASK_EVENTS = (
    delete(events)
    .where(events.c.task_id.in_(bindparam("ids", expanding=True)))
    .returning(events.c.id)
)
_DELETE_TASK_RUNS = (
    delete(runs).where(runs.c.task_id.in_(bindparam("ids", expanding=True))).returning(runs.c.id)
)
_DELETE_TASK_COMMENTS = (
    delete(comments)
    .where(comments.c.task_id.in_(bindparam("ids", expanding=True)))
    .returning(comments.c.id)
)
_DELETE_TASK_LINKS = (
    delete(links)
    .where(
        or_(
            links.c.parent_id.in_(bindparam("ids", expanding=True)),
            links.c.child_id.in_(bindparam("child_ids", expanding=True)),
        )
    )
    .returning(links.c.parent_id)
)
_DELETE_TASKS = (
    delete(tasks).where(tasks.c.id.in_(bindparam("ids", expanding=True))).returning(tasks.c.id)
)


@cache
def _event_candidates(done: bool, archived: bool) -> Select[Any]:
    """The next batch of old events of finished tasks that stay (the events of tasks
    that go are counted with them). The tasks are share-locked so none is reopened
    while its events go."""
    return (
        select(events.c.id)
        .join(tasks, tasks.c.id == events.c.task_id)
        .where(
            events.c.id > bindparam("after"),
            events.c.created_at < bindparam("events_cutoff", type_=DateTime),
            _finished(tasks),
            ~_prunable(tasks, done, archived),
        )
        .order_by(events.c.id)
        .limit(_BATCH_LIMIT)
        .with_for_update(of=tasks, read=True, skip_locked=True)
    )


_DELETE_EVENTS = (
    delete(events).where(events.c.id.in_(bindparam("ids", expanding=True))).returning(events.c.id)
)
#: The board log's entry that holds the events horizon (the highest events_through):
#: it outlives every retention cutoff, or followers below it would lose their warning.
_HORIZON_ENTRY = select(func.max(board.c.id)).where(
    board.c.events_through == select(func.max(board.c.events_through)).scalar_subquery()
)
_OLD_BOARD_EVENTS = (
    select(board.c.id)
    .where(
        board.c.id > bindparam("after"),
        board.c.created_at < bindparam("events_cutoff", type_=DateTime),
        board.c.id != func.coalesce(bindparam("horizon_entry"), 0),
    )
    .order_by(board.c.id)
    .limit(_BATCH_LIMIT)
    .with_for_update(skip_locked=True)
)
_DELETE_BOARD_EVENTS = (
    delete(board).where(board.c.id.in_(bindparam("ids", expanding=True))).returning(board.c.id)
)
LOG_BOARD_EVENT = insert(board).returning(board.c.id)
#: The highest event id anything removed; NULL while nothing was.
EVENTS_HORIZON = select(func.max(board.c.events_through))
DB_NOW = select(utcnow())


@cache
def _dry_counts(done: bool, archived: bool, old_events: bool) -> tuple[Select[Any], ...]:
    """What a real run would remove, counted on one snapshot, per table."""
    going_ids = select(tasks.c.id).where(_prunable(tasks, done, archived))
    counts = [
        select(func.count()).select_from(tasks).where(tasks.c.id.in_(going_ids)),
        select(func.count()).select_from(runs).where(runs.c.task_id.in_(going_ids)),
        select(func.count()).select_from(events).where(events.c.task_id.in_(going_ids)),
        select(func.count()).select_from(comments).where(comments.c.task_id.in_(going_ids)),
        select(func.count())
        .select_from(links)
        .where(or_(links.c.parent_id.in_(going_ids), links.c.child_id.in_(going_ids))),
    ]
    if old_events:
        counts.append(
            select(func.count())
            .select_from(events.join(tasks, tasks.c.id == events.c.task_id))
            .where(
                events.c.created_at < bindparam("events_cutoff", type_=DateTime),
                _finished(tasks),
                ~_prunable(tasks, done, archived),
            )
        )
        counts.append(
            select(func.count()).where(
                board.c.created_at < bindparam("events_cutoff", type_=DateTime),
                board.c.id != func.coalesce(_HORIZON_ENTRY.scalar_subquery(), 0),
            )
        )
    return tuple(counts)


# -- prune ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune` removed (or, with ``dry_run``, would remove), per table."""

    tasks: int = 0
    runs: int = 0
    events: int = 0
    comments: int = 0
    links: int = 0
    #: board-level log entries older than ``events_before`` (the horizon's entry stays)
    board_events: int = 0
    #: write transactions the run committed (0 for a dry run)
    batches: int = 0
    dry_run: bool = False

    def removed(self) -> dict[str, int]:
        """The row counts alone, comparable between a dry run and a real one."""
        return {"tasks": self.tasks, "runs": self.runs, "events": self.events,
                "comments": self.comments, "links": self.links,
                "board_events": self.board_events}  # fmt: skip

    def __add__(self, other: PruneResult) -> PruneResult:
        summed = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        summed["dry_run"] = self.dry_run or other.dry_run
        return PruneResult(**summed)


Cutoff = datetime | timedelta | None


def prune(
    session: Session,
    *,
    done_before: Cutoff = None,
    archived_before: Cutoff = None,
    events_before: Cutoff = None,
    batch: int = DEFAULT_BATCH,
    dry_run: bool = False,
) -> PruneResult:
    """Remove finished history: tasks done before ``done_before``, tasks archived (last
    changed) before ``archived_before``, each with its runs, events, comments and links;
    and events older than ``events_before`` of finished tasks that stay.

    Each cutoff is a datetime (naive = UTC) or a timedelta, an age measured with the
    database's clock; None leaves that kind alone. ``events_before`` also removes the
    board-level log's entries (deletions, prune batches, repairs) older than it, all but
    the one that holds the events horizon (:class:`EventsPruned` keeps its word). A task
    whose unfinished child still counts on it stays. Runs in batches of at most
    ``batch`` tasks or events, each its own transaction (inside a transaction the caller
    began, all of them join it); a batch that removed events logs a ``pruned`` board
    event, so followers past a prune get :class:`EventsPruned` instead of a silent gap.
    With ``dry_run`` nothing is written and the result counts what a real run now would
    remove.

    Returns a :class:`PruneResult`. Raises :class:`InvalidInput` (no cutoff, a bad
    cutoff or batch), :class:`DatabaseBusy`.
    """
    size = check.integer(batch, "batch", minimum=1, maximum=MAX_BATCH)
    check.boolean(dry_run, "dry_run")
    given = {"done_before": done_before, "archived_before": archived_before,
             "events_before": events_before}  # fmt: skip
    if all(value is None for value in given.values()):
        raise InvalidInput("prune needs done_before, archived_before or events_before")
    now = _db_now(session) if any(isinstance(v, timedelta) for v in given.values()) else None
    cut = {name: _cutoff(value, name, now) for name, value in given.items()}
    done, archived = cut["done_before"] is not None, cut["archived_before"] is not None
    params: dict[str, Any] = {"done_cutoff": cut["done_before"],
                              "archived_cutoff": cut["archived_before"],
                              "events_cutoff": cut["events_before"]}  # fmt: skip
    params = {k: v for k, v in params.items() if v is not None}
    if dry_run:
        return _count(session, done, archived, params)
    result = PruneResult()
    if cut["events_before"] is not None:
        # First: the entry it keeps is then the horizon's as a dry run sees it (this
        # run's own `pruned` entries are younger than the cutoff anyway).
        result += _prune_board_events(session, params, size)
    if done or archived:
        result += _prune_tasks(session, done, archived, params, size)
    if cut["events_before"] is not None:
        result += _prune_events(session, done, archived, params, size)
    try:
        refresh_counts(session)  # the history just changed: count it where it stands
    except DatabaseBusy as busy:  # the counts stay exact, only slower, until the next one
        log.warning("prune: counting the finished tasks again gave way to writers: %s", busy)
    return result


def _cutoff(value: Cutoff, field: str, now: datetime | None) -> datetime | None:
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise InvalidInput(f"{field} must not be a negative age, not {value}")
        assert now is not None
        return now - value
    if value is not None and not isinstance(value, datetime):
        raise InvalidInput(f"{field} must be a datetime or a timedelta, not {type(value).__name__}")
    return check.timestamp(value, field)


def _db_now(session: Session) -> datetime:
    now: datetime = run_read(session, lambda s: s.execute(DB_NOW).scalar_one())
    return now


def _count(session: Session, done: bool, archived: bool, params: dict[str, Any]) -> PruneResult:
    statements = _dry_counts(done, archived, "events_cutoff" in params)

    def read(s: Session) -> PruneResult:
        # run_read has ended an auto-begun transaction: one open now is the caller's.
        if not joins_caller_transaction(s):
            # One snapshot for every count (at READ COMMITTED a task finishing between
            # two counts would skew them).
            backends.of(s).snapshot_reads(s)
        n = [int(s.execute(statement, params).scalar_one()) for statement in statements]
        old_events, old_board_events = n[5:] if len(n) > 5 else (0, 0)
        return PruneResult(
            n[0], n[1], n[2] + old_events, n[3], n[4], old_board_events, dry_run=True
        )

    return run_read(session, read)


def _prune_tasks(
    session: Session, done: bool, archived: bool, params: dict[str, Any], size: int
) -> PruneResult:
    total = PruneResult()
    for status, wanted in ((Status.DONE, done), (Status.ARCHIVED, archived)):
        if wanted:
            total += _prune_status(session, _task_candidates(status), params, size)
    return total


def _prune_status(
    session: Session, candidates: Select[Any], params: dict[str, Any], size: int
) -> PruneResult:
    total = PruneResult()
    after: tuple[datetime, int] = (_EARLIEST, 0)
    while True:

        def one_batch(
            s: Tx, after: tuple[datetime, int] = after
        ) -> tuple[PruneResult, int, tuple[datetime, int]]:
            cursor = {"after_at": after[0], "after": after[1]}
            return _task_batch(s, candidates, {**params, **cursor}, size)

        found, seen, last = run_write(session, one_batch)
        total += found
        if seen < size:
            return total
        after = last


def _task_batch(
    s: Tx, candidates: Select[Any], params: dict[str, Any], size: int
) -> tuple[PruneResult, int, tuple[datetime, int]]:
    """One batch: (what it removed, how many candidates it saw, the cursor after it)."""
    rows = s.execute(candidates, {**params, "batch": size}).all()
    if not rows:
        return PruneResult(), 0, (_EARLIEST, 0)
    seen = [row.id for row in rows]
    cursor = (rows[-1].at, rows[-1].id)
    needed = set(s.scalars(_NEEDED_PARENTS, {"ids": seen}))
    ids = [task_id for task_id in seen if task_id not in needed]
    if not ids:
        return PruneResult(), len(seen), cursor
    removed, through = remove_tasks(s, ids)
    payload = {"tasks": removed.tasks, "runs": removed.runs, "events": removed.events,
               "comments": removed.comments, "links": removed.links,
               "first_task_id": ids[0], "last_task_id": ids[-1]}  # fmt: skip
    log_board_event(s, "pruned", payload=payload, events_through=through)
    return replace(removed, batches=1), len(seen), cursor


def remove_tasks(s: Tx, ids: list[int]) -> tuple[PruneResult, int | None]:
    """Delete the tasks ``ids`` with every row that names them, inside the caller's
    transaction: the counts removed, and the highest event id removed (None if none),
    which the caller's board event must carry as ``events_through``."""
    gone_events = list(s.scalars(_DELETE_TASK_EVENTS, {"ids": ids}))
    gone_runs = s.execute(_DELETE_TASK_RUNS, {"ids": ids})
    gone_comments = s.execute(_DELETE_TASK_COMMENTS, {"ids": ids})
    gone_links = s.execute(_DELETE_TASK_LINKS, {"ids": ids, "child_ids": ids})
    gone_tasks = s.execute(_DELETE_TASKS, {"ids": ids})
    counts = PruneResult(
        len(gone_tasks), len(gone_runs), len(gone_events), len(gone_comments), len(gone_links)
    )
    return counts, max(gone_events) if gone_events else None


def _prune_events(
    session: Session, done: bool, archived: bool, params: dict[str, Any], size: int
) -> PruneResult:
    candidates = _event_candidates(done, archived)
    total = PruneResult()
    after = 0
    while True:

        def one_batch(s: Tx, after: int = after) -> tuple[PruneResult, int, int]:
            return _event_batch(s, candidates, {**params, "after": after}, size)

        found, seen, last = run_write(session, one_batch)
        total += found
        if seen < size:
            return total
        after = last


def _event_batch(
    s: Tx, candidates: Select[Any], params: dict[str, Any], size: int
) -> tuple[PruneResult, int, int]:
    seen = list(s.scalars(candidates, {**params, "batch": size}))
    if not seen:
        return PruneResult(), 0, 0
    gone = list(s.scalars(_DELETE_EVENTS, {"ids": seen}))
    if gone:
        log_board_event(
            s, "pruned", payload={"events": len(gone), "first_event_id": min(gone)},
            events_through=max(gone),
        )  # fmt: skip
    return PruneResult(events=len(gone), batches=1), len(seen), seen[-1]


def _prune_board_events(session: Session, params: dict[str, Any], size: int) -> PruneResult:
    """The board log's entries older than the events cutoff, in batches; the entry that
    holds the events horizon stays, so :func:`check_events_horizon` keeps warning."""
    total = PruneResult()
    after = 0
    while True:

        def one_batch(s: Tx, after: int = after) -> tuple[int, list[int]]:
            horizon_entry = s.execute(_HORIZON_ENTRY).scalar()
            cursor = {**params, "after": after, "horizon_entry": horizon_entry, "batch": size}
            seen = list(s.scalars(_OLD_BOARD_EVENTS, cursor))
            gone = list(s.scalars(_DELETE_BOARD_EVENTS, {"ids": seen})) if seen else []
            return len(gone), seen

        gone, seen = run_write(session, one_batch)
        if gone:
            total += PruneResult(board_events=gone, batches=1)
        if len(seen) < size:
            return total
        after = seen[-1]


#: How far behind the database's clock a refresh counts up to: a transaction that has
#: been writing longer than this while a refresh counts could be miscounted (doctor's
#: ``status_counts`` check finds it, and --repair counts again).
REFRESH_MARGIN = timedelta(minutes=10)


def refresh_counts(session: Session) -> dict[str, int]:
    """Count the finished statuses' tasks into their tallies (models.StatusTally), so
    :func:`~kanban_orm.board_cards` and :func:`~kanban_orm.board_stats` count only the
    tasks changed since. Reads every finished task once (an index-only count): prune
    and the housekeeper run it after each pass. Holds off, while it counts, the writes
    that move a task in or out of a tally (reopening, archiving, deleting old history);
    claims and completions, which the triggers skip, go on.

    Returns the tallied counts by status. Raises :class:`DatabaseBusy`.
    """

    def work(s: Tx) -> dict[str, int]:
        backends.of(s).lock_status_tallies(s)
        through = s.execute(_TALLY_THROUGH, {"margin": -REFRESH_MARGIN.total_seconds()})
        at = through.scalar_one()
        counted = {}
        for status in TALLIED_STATUSES:
            n = int(
                s.execute(queries.COUNT_TALLIED, {"status": status, "through": at}).scalar_one()
            )
            s.execute(queries.SET_TALLY, {"tallied": status, "tasks": n, "through": at})
            counted[status] = n
        return counted

    return run_write(session, work)


_TALLY_THROUGH = select(utcnow(bindparam("margin")))


def log_board_event(
    s: Tx,
    kind: str,
    *,
    task_id: int | None = None,
    payload: dict[str, Any] | None = None,
    events_through: int | None = None,
) -> int:
    """Append to the board-level log inside the caller's transaction; the entry's id."""
    entry_id: int = s.execute(
        LOG_BOARD_EVENT,
        {"kind": kind, "task_id": task_id, "payload": payload, "events_through": events_through},
    ).scalar_one()
    return entry_id


def check_events_horizon(session: Session, after_id: int) -> None:
    """Raise :class:`EventsPruned` when events after ``after_id`` may have been removed.

    For :func:`kanban_orm.service.list_events`, which calls it *after* reading the events:
    a prune that committed before that read is then seen here, so a follower is never
    handed a page with a hole in it and no word of it. ``after_id`` 0 (read whatever is
    kept) is never refused.
    """
    if after_id <= 0:
        return
    horizon = session.execute(EVENTS_HORIZON).scalar()
    if horizon is not None and after_id < horizon:
        raise EventsPruned(after_id, int(horizon))


def list_board_events(
    session: Session, *, after_id: int = 0, limit: int | None = None
) -> list[BoardEvent]:
    """Board-level log entries (deletions, prune batches, doctor repairs) with
    ``id > after_id``, oldest first."""
    statement = (
        select(BoardEvent)
        .where(BoardEvent.id > check.after_id(after_id))
        .order_by(BoardEvent.id)
        .execution_options(populate_existing=True)
    )
    count = check.limit(limit)
    if count is not None:
        statement = statement.limit(count)
    return run_read(session, lambda s: list(s.scalars(statement)))


# -- deleting and reassigning -----------------------------------------------------------

_LOCK_TASK_ROW = select(tasks).where(tasks.c.id == bindparam("task_id")).with_for_update()
#: Children of the task, each with its status, locked: they are told about the deletion.
_CHILDREN = (
    select(tasks.c.id, tasks.c.status)
    .join(links, links.c.child_id == tasks.c.id)
    .where(links.c.parent_id == bindparam("task_id"))
    .order_by(tasks.c.id)
    .with_for_update(of=tasks)
)
#: A waiting child whose unfinished parent is deleted can no longer wait for it: it is
#: blocked with the reason, for a person to decide (unblock runs it without the parent).
_BLOCK_ORPHAN = (
    update(tasks)
    .where(tasks.c.id == bindparam("child_id"), tasks.c.status == Status.TODO.value)
    .values(
        status=Status.BLOCKED.value,
        block_reason=bindparam("reason"),
        version=tasks.c.version + 1,
        updated_at=utcnow(),
    )
    .returning(tasks.c.id)
)
_CLOSE_RUN_DELETED = (
    update(runs)
    .where(runs.c.task_id == bindparam("run_task_id"), runs.c.ended_at.is_(None))
    .values(ended_at=utcnow(), outcome="deleted", error="task deleted")
    .returning(runs.c.id)
)
_REASSIGN = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"))
    .values(assignee=bindparam("new_assignee"), version=tasks.c.version + 1, updated_at=utcnow())
    .returning(tasks.c.id)
)


def delete_task(
    session: Session,
    task_id: int,
    *,
    force: bool = False,
    reason: str | None = None,
    deleted_by: str | None = None,
) -> int:
    """Delete a task with its runs, events, comments and links, and log one ``deleted``
    entry in the board-level log (title, status, assignee, who and why).

    A running task is refused (:class:`InvalidTransition`) unless ``force=True``, which
    closes its run as ``deleted`` and voids the claim first (the holder's later calls get
    :class:`TaskNotFound`). Children are told: each gets an ``unlinked`` event; a child
    waiting in ``todo`` for this (unfinished) parent is ``blocked`` instead, with the
    reason, rather than run without work it was waiting for. Followers whose cursor is
    below the task's last event get :class:`EventsPruned`.

    Returns the id of the board log entry. Raises :class:`TaskNotFound`,
    :class:`InvalidTransition`, :class:`InvalidInput`.
    """
    task_id = check.task_id(task_id)
    forced = check.boolean(force, "force")
    why = check.text(reason, "reason")
    who = check.name(deleted_by, "deleted_by")

    def work(s: Tx) -> int:
        row = s.execute(_LOCK_TASK_ROW, {"task_id": task_id}).first()
        if row is None:
            raise TaskNotFound(task_id)
        if row.status == Status.RUNNING.value and not forced:
            raise InvalidTransition(
                task_id, row.status, "deleted", unless="forced (releasing its claim)"
            )
        closed = s.execute(_CLOSE_RUN_DELETED, {"run_task_id": task_id}).scalar()
        unfinished = row.status not in _FINISHED
        for child in s.execute(_CHILDREN, {"task_id": task_id}).all():
            _tell_child(s, child.id, child.status, task_id, unfinished)
        removed, through = remove_tasks(s, [task_id])
        payload = {
            "title": row.title,
            "status": row.status,
            "assignee": row.assignee,
            "tenant": row.tenant,
            "forced": forced,
            "reason": why,
            "deleted_by": who,
            "released_run_id": closed,
            **{k: n for k, n in removed.removed().items() if k != "board_events"},
        }
        return log_board_event(
            s, "deleted", task_id=task_id, payload=payload, events_through=through
        )

    return run_write(session, work)


def _tell_child(s: Tx, child_id: int, status: str, parent_id: int, parent_unfinished: bool) -> None:
    if parent_unfinished and status == Status.TODO.value:
        reason = f"parent {parent_id} was deleted before it finished"
        if s.execute(_BLOCK_ORPHAN, {"child_id": child_id, "reason": reason}).first():
            steps.record(s, child_id, "blocked", None, {"reason": reason, "parent_id": parent_id})
            return
    steps.record(
        s, child_id, "unlinked", None, {"parent_id": parent_id, "status": status, "deleted": True}
    )


def reassign_task(
    session: Session, task_id: int, *, assignee: str | None, by: str | None = None
) -> Task:
    """Give the task to ``assignee`` (None: to anyone), in any state, and record one
    ``reassigned`` event with the previous and the new assignee. A running task keeps
    its claim and its run: the holder finishes the attempt, later claims follow the new
    assignee. Reassigning to the current assignee changes nothing and records nothing.

    Returns the task. Raises :class:`TaskNotFound`, :class:`InvalidInput`.
    """
    task_id = check.task_id(task_id)
    new = check.name(assignee, "assignee")
    who = check.name(by, "by")

    def work(s: Tx) -> Task:
        row = s.execute(_LOCK_TASK_ROW, {"task_id": task_id}).first()
        if row is None:
            raise TaskNotFound(task_id)
        if row.assignee == new:
            return s.attach(Task, row)
        s.execute(_REASSIGN, {"task_id": task_id, "new_assignee": new})
        payload = {"from": row.assignee, "to": new, "by": who}
        steps.record(s, task_id, "reassigned", row.current_run_id, payload)
        return steps.load_task(s, task_id)

    return run_write(session, work)


# -- the housekeeping thread ------------------------------------------------------------


class Housekeeper:
    """Runs :func:`prune` every ``settings.interval_seconds`` in a daemon thread.

    ``settings`` default to ``KANBAN_RETENTION_*`` (:func:`kanban_orm.config.retention_settings`,
    checked here, so a bad setting raises :class:`ConfigError` at construction). With no
    retention age set, :meth:`start` does nothing. ``sessions`` returns a new Session (a
    ``sessionmaker``); else ``url`` (or the default database) is used. A prune that fails
    is logged and retried at the next interval: housekeeping never stops a worker.
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        sessions: Callable[[], Session] | None = None,
        settings: config.RetentionSettings | None = None,
    ) -> None:
        self.settings = config.retention_settings() if settings is None else settings
        self._sessions: Callable[[], Session] = sessions or (lambda: connect(url))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.last_result: PruneResult | None = None
        self.last_error: BaseException | None = None

    def run_once(self) -> PruneResult:
        """One prune with the settings' ages, on a Session of its own."""
        session = self._sessions()
        try:
            return prune(
                session,
                done_before=self.settings.done_after,
                archived_before=self.settings.archived_after,
                events_before=self.settings.events_after,
                batch=self.settings.batch,
            )
        finally:
            session.close()

    def start(self) -> bool:
        """Start the thread (once); False when no retention age is set."""
        if not self.settings.enabled or self._thread is not None:
            return False
        self._thread = threading.Thread(target=self._loop, name="kanban-housekeeper", daemon=True)
        self._thread.start()
        return True

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to stop and wait for it (a prune under way finishes its batch
        loop first; each batch is short)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        # The first pass runs even when a stop came before the thread was scheduled: a
        # short-lived worker (a drain) still prunes once.
        while True:
            try:
                self.last_result = self.run_once()
                self.last_error = None
                if self.last_result.tasks or self.last_result.events:
                    log.info("housekeeping pruned %s", self.last_result.removed())
            except KanbanError as error:
                self.last_error = error
                log.warning("housekeeping prune failed (retried next interval): %s", error)
            self.runs += 1
            if self._stop.wait(self.settings.interval_seconds):
                return
