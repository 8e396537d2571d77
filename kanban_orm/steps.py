"""Steps that many transitions share: closing a run, recording events, explaining a
guard that matched nothing, loading the tasks a transition returns.

Each runs inside the caller's transaction; none commits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from sqlalchemy.orm import Session

from . import backends, config
from . import queries as q
from . import validation as check
from .backends.base import record_events, run_closing
from .db import replaying_after_disconnect
from .driver import Tx
from .errors import ClaimLost, InvalidTransition, TaskNotFound
from .models import NAME_MAX_LENGTH, Task
from .states import Status


def claimer_name(claimer: object) -> str:
    return check.required_text(claimer, "claimer", max_length=NAME_MAX_LENGTH)


def token(claim_lock: object) -> str:
    return check.required_text(claim_lock, "claim_lock")


def close_run(
    s: Tx,
    task_id: int,
    outcome: str,
    *,
    summary: str | None = None,
    metadata: dict[str, Any] | None = None,
    error: str | None = None,
) -> int | None:
    """Close the task's open run (at most one exists) with ``outcome``; its id, if any."""
    params = run_closing(task_id, outcome, summary, metadata, error)
    run_id: int | None = s.execute(q.CLOSE_OPEN_RUN, params).scalar()
    return run_id


def reclaim(
    s: Tx, lease: Any, statement: Any, why: str, detail: dict[str, Any] | None = None
) -> bool:
    """Take a claim back from a worker that cannot finish it: ``lease`` (a row with the
    task's ``id``, ``claim_lock``, ``attempts`` and ``max_attempts``) is moved by
    ``statement`` (a compare-and-swap on the token seen), its run closed as
    ``reclaimed`` with ``why`` as the error, its attempt counted, and one ``reclaimed``
    event written (``detail`` added to its payload). False if the claim moved first."""
    cap = lease.max_attempts or config.max_attempts()
    gave_up = lease.attempts >= cap
    next_status = Status.BLOCKED if gave_up else Status.READY
    reason = f"gave up after {lease.attempts} attempts: {why}" if gave_up else None
    moved = s.execute(
        statement,
        {
            "task_id": lease.id,
            "token": lease.claim_lock,
            "next_status": next_status.value,
            "reason": reason,
        },
    ).first()
    if moved is None:
        return False
    run_id = close_run(s, lease.id, "reclaimed", error=why)
    payload = {"status": next_status.value, "gave_up": gave_up, **(detail or {})}
    record(s, lease.id, "reclaimed", run_id, payload)
    return True


def finish_run(
    s: Tx,
    task_id: int,
    outcome: str,
    payload: dict[str, Any] | None,
    *,
    summary: str | None = None,
    metadata: dict[str, Any] | None = None,
    error: str | None = None,
) -> int | None:
    """After the task's own UPDATE: close its open run with ``outcome`` and write the
    event of the same name. Returns the closed run's id, if there was one. (A completion,
    which also promotes, goes through Backend.move_and_finish_run.)"""
    params = run_closing(task_id, outcome, summary, metadata, error)
    run_id, _ = s.backend.finish_run(s, params, payload, see_children=False)
    return run_id


def record(
    s: Tx,
    task_id: int,
    kind: str,
    run_id: int | None = None,
    payload: dict[str, Any] | None = None,
) -> None:
    record_many(s, kind, [(task_id, run_id, payload)])


#: Append one event of ``kind`` per ``(task_id, run_id, payload)``.
record_many = record_events


def batch_landed(s: Tx, pairs: Sequence[tuple[int, str]], outcome: str) -> list[Task] | None:
    """:func:`already_landed` for a batch written in one transaction (every claim's run
    must have the outcome, or none of them landed): the batch's tasks as they are now,
    or None."""
    if not pairs or not all(already_landed(s, t, token, outcome) for t, token in pairs):
        return None
    return [load_task(s, task_id) for task_id, _ in pairs]


def already_landed(s: Tx, task_id: int, token: str | None, outcome: str) -> bool:
    """True when this call is a replay after a dropped connection and its first attempt
    had in fact committed: the claim's run is already closed with ``outcome``.

    A COMMIT whose reply was lost may or may not have happened. The retry layer replays
    the call; without this check a completion that landed would be reported as
    :class:`ClaimLost`, and a worker would wrongly believe its work was discarded.
    """
    if token is None or not replaying_after_disconnect():
        return False
    landed = s.execute(q.RUN_OUTCOME_BY_TOKEN, {"task_id": task_id, "token": token}).scalar()
    return bool(landed == outcome)


def refused(s: Tx, task_id: int, target: Status, token: str | None, outcome: str) -> Task:
    """A fenced UPDATE matched no row: the task as it stands when this is a replay whose
    first attempt had landed with ``outcome`` (see :func:`already_landed`), else the
    error that says why (:func:`explain`)."""
    if already_landed(s, task_id, token, outcome):
        return load_task(s, task_id)
    explain(s, task_id, target, token)


def explain(
    s: Tx,
    task_id: int,
    target: Status | None,
    token: str | None,
    *,
    needs: tuple[Status, ...] = (),
    unless: Mapping[Status, str] | None = None,
) -> NoReturn:
    """Raise the error that says why a guarded UPDATE matched no row.

    ``needs`` names the states the guard accepts when they are narrower than "any state
    the table lets move to ``target``" (unblock needs ``blocked``, not just any state
    that may become ready). ``unless`` says, per state the task may be in, what would
    have let the call through (archiving a running task needs force).
    """
    state = s.execute(q.TASK_STATE, {"task_id": task_id}).first()
    if state is None:
        raise TaskNotFound(task_id)
    if token is not None and state.claim_lock != token:
        if state.status != Status.RUNNING:
            # No claim holds it at all: saying only that this lock does not hold it
            # would send the caller looking for the right lock.
            raise ClaimLost(
                task_id,
                f"task {task_id} is {str(state.status)!r}, not running: no claim holds it,"
                " so no claim_lock can",
            )
        raise ClaimLost(task_id)
    if token is None and state.status == Status.RUNNING and target is Status.BLOCKED:
        raise ClaimLost(task_id, f"task {task_id} is running: only its claim holder may do that")
    # Otherwise the task is not in a state this call may move it from.
    hint = (unless or {}).get(Status(state.status))
    raise InvalidTransition(task_id, state.status, target or state.status, needs=needs, unless=hint)


def load_task(s: Tx, task_id: int) -> Task:
    return s.attach(Task, s.execute(q.TASK_ROW, {"task_id": task_id}).first())


def load_tasks(s: Tx, task_ids: list[int]) -> list[Task]:
    return [s.attach(Task, row) for row in s.execute(q.TASK_ROWS, {"ids": task_ids})]


def require_task(session: Session | Tx, task_id: int) -> None:
    if session.execute(q.TASK_EXISTS, {"task_id": task_id}).first() is None:
        raise TaskNotFound(task_id)


def require_tasks(session: Tx, task_ids: Sequence[int]) -> None:
    """Raise :class:`TaskNotFound` for the first of ``task_ids`` that does not exist."""
    _require_found(task_ids, set(session.scalars(q.EXISTING_IDS, {"ids": list(task_ids)})))


def lock_parents(session: Tx, task_ids: Sequence[int]) -> None:
    """Lock tasks that are about to become parents (see queries.TOUCH_PARENTS); raise
    :class:`TaskNotFound` for the first that does not exist."""
    _require_found(task_ids, set(session.scalars(q.TOUCH_PARENTS, {"ids": list(task_ids)})))


def _require_found(task_ids: Sequence[int], found: set[int]) -> None:
    for task_id in task_ids:
        if task_id not in found:
            raise TaskNotFound(task_id)


def wait_for_event_writers(s: Session, after_id: int = 0) -> None:
    """Wait until no transaction has inserted events it has not committed, where the
    backend needs to (Backend.wait_for_event_writers; SQLite's one writer needs not).

    Reads after this (in the same transaction) cannot miss an event with a lower id
    that commits later; see ``models.EVENT_LOG_GUARD_DDL``.
    """
    backends.of(s).wait_for_event_writers(s, after_id)


def lock_for_ready_or_todo(s: Tx, task_id: int) -> None:
    """Before deciding between ready and todo for a task: lock it (a concurrent
    link_tasks locks it too, so its new link is seen) and then its parents (a parent
    finishing meanwhile is then seen, or sees this task; see queries.TOUCH_PARENTS_OF).
    Two statements: the second must see what committed while the first waited."""
    s.execute(q.LOCK_TASK, {"task_id": task_id})
    s.execute(q.TOUCH_PARENTS_OF, {"task_id": task_id})


def promote_children(s: Tx, task_id: int) -> None:
    """Children of a now-finished task whose parents are all finished become ready."""
    if not s.execute(q.LOCK_WAITING_CHILDREN, {"task_id": task_id}).first():
        return
    promoted = s.execute(q.PROMOTE_CHILDREN, {"task_id": task_id}).scalars().all()
    record_many(s, "promoted", [(c, None, {"parent_id": task_id}) for c in promoted])
