"""Board workflow transitions: dependencies, triage, review, reopen, archive, edits.

Same rules as :mod:`kanban_orm.service`: each function is one transaction through the
retry layer, the guarded UPDATE comes first so a rejected call writes nothing, and every
transition writes its event in the same transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy.orm import Session

from . import backends, steps
from . import queries as q
from . import validation as check
from ._deprecation import keyword_only_since
from .db import joins_caller_transaction, run_read, run_write
from .driver import Tx
from .errors import InvalidInput
from .models import Task, TaskComment
from .states import Status

# -- dependencies -----------------------------------------------------------------------


@keyword_only_since("parent", "child", renamed={"parent_id": "parent", "child_id": "child"})
def link_tasks(session: Session, *, parent: int, child: int) -> Task:
    """Make task ``child`` wait for task ``parent``; return the child.

    A ready child whose new parent is unfinished goes back to ``todo``. Linking twice is
    a no-op. Raises :class:`InvalidInput` when the link would close a cycle (including
    a task with itself) and :class:`TaskNotFound`; nothing is written then. The ids are
    keyword-only, as two ids are easily swapped (``link_tasks(s, 1, 2)`` still works
    until 0.3, with a DeprecationWarning).
    """
    parent_id = check.task_id(parent, "parent")
    child_id = check.task_id(child, "child")
    if parent_id == child_id:
        raise InvalidInput(f"task {child_id} cannot depend on itself")
    ids = {"parent_id": parent_id, "child_id": child_id}

    def work(s: Tx) -> Task:
        steps.require_tasks(s, [child_id])
        # Before any lock: holding the child of an existing link while waiting for its
        # parent would deadlock with that parent's finisher, which locks the other way.
        if s.execute(q.LINK_EXISTS, ids).first() is not None:
            return steps.load_task(s, child_id)
        # The child too: a specify/unblock/... deciding ready-or-todo for it meanwhile
        # would not see this link and could make it ready (see queries.TOUCH_PARENTS_OF).
        # Child first, then parent: the order those deciders lock in.
        s.execute(q.LOCK_TASK, {"task_id": child_id})
        steps.lock_parents(s, [parent_id])
        s.backend.lock_link_graph(s)
        if s.execute(q.LINK_EXISTS, ids).first() is not None:
            return steps.load_task(s, child_id)  # linked while this call waited
        if s.execute(q.WOULD_CYCLE, ids).first() is not None:
            raise InvalidInput(
                f"linking {parent_id} -> {child_id} would make a cycle: "
                f"{parent_id} already depends on {child_id}"
            )
        s.execute(q.INSERT_LINK, ids)
        s.execute(q.WAIT_FOR_PARENTS, ids)
        return _recorded_with_status(s, child_id, "linked", parent_id)

    return run_write(session, work)


@keyword_only_since("parent", "child", renamed={"parent_id": "parent", "child_id": "child"})
def unlink_tasks(session: Session, *, parent: int, child: int) -> Task:
    """Remove the dependency of ``child`` on ``parent``; a waiting child whose parents are
    now all finished is ready. Returns the child.

    Raises :class:`InvalidInput` when there is no such link, :class:`TaskNotFound`.
    """
    parent_id = check.task_id(parent, "parent")
    child_id = check.task_id(child, "child")
    ids = {"parent_id": parent_id, "child_id": child_id}

    def work(s: Tx) -> Task:
        if s.execute(q.DELETE_LINK, ids).first() is None:
            steps.require_tasks(s, [parent_id, child_id])
            raise InvalidInput(f"task {child_id} does not depend on task {parent_id}")
        s.execute(q.LOCK_TASK, {"task_id": child_id})
        s.execute(q.PROMOTE_ONE, {"task_id": child_id})
        return _recorded_with_status(s, child_id, "unlinked", parent_id)

    return run_write(session, work)


def _recorded_with_status(s: Tx, child_id: int, kind: str, parent_id: int) -> Task:
    """The child after a link change, and its event, which names the child's status
    (a link may move it between ready and todo: the log must say so)."""
    child = steps.load_task(s, child_id)
    steps.record(s, child_id, kind, payload={"parent_id": parent_id, "status": child.status})
    return child


class TaskLinks(NamedTuple):
    """A task's dependency edges, as task ids in ascending order."""

    #: The tasks it waits for.
    parents: list[int]
    #: The tasks that wait for it.
    children: list[int]


@keyword_only_since("task_id")
def list_links(session: Session, *, task_id: int) -> TaskLinks:
    """The task's parents and children. Raises :class:`TaskNotFound`."""
    task_id = check.task_id(task_id)
    params = {"task_id": task_id}

    def read(s: Session) -> TaskLinks:
        found = TaskLinks(
            list(s.scalars(q.PARENT_IDS, params)), list(s.scalars(q.CHILD_IDS, params))
        )
        if not found.parents and not found.children:
            steps.require_task(s, task_id)
        return found

    return run_read(session, read)


# -- triage, review, reopen, archive ----------------------------------------------------


def specify_task(session: Session, task_id: int) -> Task:
    """Move a task out of ``triage``: to ``ready``, or ``todo`` while a parent is unfinished.

    Raises :class:`InvalidTransition` unless the task is in triage, :class:`TaskNotFound`.
    """
    task_id = check.task_id(task_id)

    def work(s: Tx) -> Task:
        steps.lock_for_ready_or_todo(s, task_id)
        status = s.execute(q.SPECIFY, {"task_id": task_id}).scalar()
        if status is None:
            steps.explain(s, task_id, Status.READY, None, needs=(Status.TRIAGE,))
        steps.record(s, task_id, "specified", payload={"status": status})
        return steps.load_task(s, task_id)

    return run_write(session, work)


def submit_for_review(
    session: Session,
    task_id: int,
    *,
    claim_lock: str,
    result: str | None = None,
    summary: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Task:
    """The claim holder hands the task in for review; the run is closed as ``submitted``.

    Raises :class:`ClaimLost`, :class:`TaskNotFound`, :class:`InvalidInput`.
    """
    task_id = check.task_id(task_id)
    token = steps.token(claim_lock)
    params = {"task_id": task_id, "token": token, "task_result": check.text(result, "result")}
    run_summary = check.text(summary, "summary")
    run_metadata = check.json_object(metadata, "metadata")

    def work(s: Tx) -> Task:
        if s.execute(q.SUBMIT_FOR_REVIEW, params).first() is None:
            return steps.refused(s, task_id, Status.REVIEW, token, "submitted")
        run_id = steps.close_run(
            s, task_id, "submitted", summary=run_summary, metadata=run_metadata
        )
        steps.record(s, task_id, "submitted", run_id)
        return steps.load_task(s, task_id)

    return run_write(session, work)


def approve_task(session: Session, task_id: int, *, reviewer: str | None = None) -> Task:
    """Accept a task in review: it is ``done`` and its waiting children are promoted.

    Raises :class:`InvalidTransition` unless the task is in review, :class:`TaskNotFound`.
    """
    task_id = check.task_id(task_id)
    who = check.name(reviewer, "reviewer")

    def work(s: Tx) -> Task:
        if s.execute(q.APPROVE, {"task_id": task_id}).first() is None:
            steps.explain(s, task_id, Status.DONE, None, needs=(Status.REVIEW,))
        steps.record(s, task_id, "approved", payload={"reviewer": who})
        steps.promote_children(s, task_id)
        return steps.load_task(s, task_id)

    return run_write(session, work)


def request_changes(
    session: Session, task_id: int, *, reason: str, reviewer: str | None = None
) -> Task:
    """Send a task in review back to ``ready``; the reason is kept in its event.

    Raises :class:`InvalidTransition` unless the task is in review, :class:`TaskNotFound`.
    """
    task_id = check.task_id(task_id)
    why = check.required_text(reason, "reason")
    who = check.name(reviewer, "reviewer")

    def work(s: Tx) -> Task:
        steps.lock_for_ready_or_todo(s, task_id)
        status = s.execute(q.REQUEST_CHANGES, {"task_id": task_id}).scalar()
        if status is None:
            steps.explain(s, task_id, Status.READY, None, needs=(Status.REVIEW,))
        steps.record(s, task_id, "changes_requested", payload={"reason": why, "reviewer": who})
        return steps.load_task(s, task_id)

    return run_write(session, work)


def reopen_task(session: Session, task_id: int, *, reason: str | None = None) -> Task:
    """Send a done task back to ``ready``; its children that had not started wait again.

    Raises :class:`InvalidTransition` unless the task is done, :class:`TaskNotFound`.
    """
    task_id = check.task_id(task_id)
    why = check.text(reason, "reason")

    def work(s: Tx) -> Task:
        steps.lock_for_ready_or_todo(s, task_id)
        status = s.execute(q.REOPEN, {"task_id": task_id}).scalar()
        if status is None:
            steps.explain(s, task_id, Status.READY, None, needs=(Status.DONE,))
        steps.record(s, task_id, "reopened", payload={"reason": why, "status": status})
        # Lock the children first, as a statement of its own: a finisher of another
        # parent promoting one of them meanwhile either committed before (the demote
        # then sees it ready) or waits and then sees this task reopened.
        s.execute(q.LOCK_UNSTARTED_CHILDREN, {"task_id": task_id})
        demoted = s.execute(q.DEMOTE_CHILDREN, {"task_id": task_id}).scalars().all()
        steps.record_many(s, "waiting", [(c, None, {"parent_id": task_id}) for c in demoted])
        return steps.load_task(s, task_id)

    return run_write(session, work)


_ARCHIVE_UNLESS = {Status.RUNNING: "forced (voiding its claim)"}


def archive_task(session: Session, task_id: int, *, force: bool = False) -> Task:
    """Archive a task: hidden from default lists, and finished as far as children go.

    A running task is refused (:class:`InvalidTransition`) unless ``force=True``, which
    closes its run as ``archived`` and voids the holder's claim (its later calls get
    :class:`ClaimLost`). Raises :class:`InvalidTransition` for a task already archived,
    :class:`TaskNotFound`.
    """
    task_id = check.task_id(task_id)
    statement = q.ARCHIVE_ANY if check.boolean(force, "force") else q.ARCHIVE_IDLE

    def work(s: Tx) -> Task:
        if s.execute(statement, {"task_id": task_id}).first() is None:
            steps.explain(s, task_id, Status.ARCHIVED, None, unless=_ARCHIVE_UNLESS)
        run_id = steps.close_run(s, task_id, "archived")
        steps.record(s, task_id, "archived", run_id, {"forced": force})
        steps.promote_children(s, task_id)
        return steps.load_task(s, task_id)

    return run_write(session, work)


# -- comments ---------------------------------------------------------------------------


def add_comment(
    session: Session, task_id: int, *, body: str, author: str | None = None
) -> TaskComment:
    """Add a comment to a task, in any state, with a ``commented`` event.

    Raises :class:`TaskNotFound`, :class:`InvalidInput` (empty body); nothing is written.
    """
    task_id = check.task_id(task_id)
    text = check.required_text(body, "body")
    who = check.name(author, "author")

    def work(s: Tx) -> TaskComment:
        steps.require_task(s, task_id)
        values = {"task_id": task_id, "author": who, "body": text}
        row = s.execute(q.INSERT_COMMENT, values).first()
        steps.record(s, task_id, "commented", payload={"comment_id": row.id, "author": who})
        return s.attach(TaskComment, row)

    return run_write(session, work)


@keyword_only_since("task_id")
def list_comments(session: Session, *, task_id: int) -> list[TaskComment]:
    """The task's comments, oldest first. Raises :class:`TaskNotFound`."""
    task_id = check.task_id(task_id)

    def read(s: Session) -> list[TaskComment]:
        found = list(s.scalars(q.TASK_COMMENTS, {"task_id": task_id}))
        if not found:
            steps.require_task(s, task_id)
        return found

    return run_read(session, read)


# -- edits ------------------------------------------------------------------------------

_UNSET: Any = object()


def update_task(
    session: Session,
    task_id: int,
    *,
    title: str = _UNSET,
    body: str | None = _UNSET,
    assignee: str | None = _UNSET,
    priority: int = _UNSET,
    max_attempts: int | None = _UNSET,
    run_at: datetime | None = _UNSET,
    max_runtime: float | None = _UNSET,
) -> Task:
    """Edit the fields given (assign, reprioritise, retitle, reschedule) in any state.
    ``max_runtime=None`` removes the task's own run limit; a run under way keeps the
    limit it started with.

    One ``edited`` event records the new values. Raises :class:`InvalidInput`,
    :class:`TaskNotFound`; with no field given, :class:`InvalidInput`.
    """
    task_id = check.task_id(task_id)
    given = {
        "title": (title, check.title),
        "body": (body, lambda v: check.text(v, "body")),
        "assignee": (assignee, lambda v: check.name(v, "assignee")),
        "priority": (priority, lambda v: check.integer(v, "priority")),
        "max_attempts": (
            max_attempts,
            lambda v: check.optional_integer(v, "max_attempts", minimum=1),
        ),
        "run_at": (run_at, lambda v: check.timestamp(v, "run_at")),
        "max_runtime": (max_runtime, lambda v: check.runtime_limit(v, "max_runtime")),
    }
    changes = {
        name: validate(value) for name, (value, validate) in given.items() if value is not _UNSET
    }
    if not changes:
        raise InvalidInput("update_task needs at least one field to change")
    statement = q.edit_statement(tuple(sorted(changes)))
    params = {"task_id": task_id, **{f"new_{k}": v for k, v in changes.items()}}
    payload = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in changes.items()}

    def work(s: Tx) -> Task:
        if s.execute(statement, params).first() is None:
            steps.require_task(s, task_id)
        steps.record(s, task_id, "edited", payload=payload)
        return steps.load_task(s, task_id)

    return run_write(session, work)


# -- board overview ---------------------------------------------------------------------


@keyword_only_since("tenant")
def board_stats(session: Session, *, tenant: str | None = None) -> dict[str, Any]:
    """Counts by status, open (unfinished) tasks by assignee, and the oldest ready task's age.

    ``{"by_status": {"ready": 3, ...}, "by_assignee": {"agents": 2, None: 1},
    "oldest_ready_age_seconds": 12.5 | None}``, every status present (0 when empty). Ages
    are measured with the database's clock.
    """
    scoped = tenant is not None
    params = {"only_tenant": check.name(tenant, "tenant")} if scoped else {}
    _, by_assignee_q, oldest_q = q.stats_statements(scoped)

    def read(s: Session) -> dict[str, Any]:
        if not joins_caller_transaction(s):
            backends.of(s).snapshot_reads(s)  # the tallies and the counts, as of one moment
        by_status = count_by_status(s, tenant=tenant if scoped else None)
        by_assignee: dict[str | None, int] = {who: n for who, n in s.execute(by_assignee_q, params)}
        oldest, now = s.execute(oldest_q, params).one()
        age = None if oldest is None else max(0.0, (now - oldest).total_seconds())
        return {
            "by_status": by_status,
            "by_assignee": by_assignee,
            "oldest_ready_age_seconds": age,
        }

    return run_read(session, read)


def count_by_status(s: Session, *, tenant: str | None = None) -> dict[str, int]:
    """Tasks per status, every status present (0 when empty), inside the caller's read:
    the finished statuses from their kept tallies plus what changed since (all tasks),
    or exactly (one tenant's). Run it on one snapshot: it reads the tallies first."""
    scoped = tenant is not None
    params: dict[str, Any] = (
        {"only_tenant": tenant} if scoped else q.tally_params(s.execute(q.READ_TALLIES))
    )
    counts = dict.fromkeys((status.value for status in Status), 0)
    counts.update(
        {status: int(n) for status, n in s.execute(q.stats_statements(scoped)[0], params)}
    )
    return counts


def board_cards(
    session: Session, *, tenant: str | None = None, per_column: int | None = None
) -> tuple[list[Task], dict[str, int]]:
    """What the board draws, read on one snapshot: the tasks of every status but
    archived, at most ``per_column`` of each (None: all) in the column's order (that of
    :func:`kanban_orm.board.column_order`), and how many tasks each status has.

    A long-lived board keeps every finished task: only the cards a column shows become
    objects, instead of the board's whole history on every redraw.
    """
    tenant = None if tenant is None else check.name(tenant, "tenant")
    shown = check.optional_integer(per_column, "per_column", minimum=1)
    params = {} if tenant is None else {"only_tenant": tenant}
    drawn = [status for status in Status if status is not Status.ARCHIVED]
    columns = [
        q.column_cards_statement(status.value, tenant is not None, shown) for status in drawn
    ]

    def read(s: Session) -> tuple[list[Task], dict[str, int]]:
        # run_read has ended an auto-begun transaction: one open now is the caller's.
        if not joins_caller_transaction(s):
            # One snapshot for all the statements: a task claimed between two of them
            # would be drawn in two columns (the same object, refreshed).
            backends.of(s).snapshot_reads(s)
        counts = count_by_status(s, tenant=tenant)
        cards = [task for column in columns for task in s.scalars(column, params)]
        return cards, counts

    return run_read(session, read)
