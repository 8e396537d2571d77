"""The transitions: each function is one atomic change of the board.

Every write function takes the Session first and runs as one transaction through
:func:`kanban_orm.db.run_write`: it commits on success, rolls back and raises on failure,
and is retried as a whole on lock contention. If the caller began the transaction
(``session.begin()``, or a Session joined into its Connection's transaction: see
:func:`kanban_orm.db.joins_caller_transaction`) the call joins it (in a SAVEPOINT) and
the caller commits, so a task created inside a host application's rolled-back
transaction never existed.

Within each transition the guarded UPDATE comes first, so a rejected call has written
nothing when it raises; then the run row, ``current_run_id`` and exactly one event for
the transition are written in the same transaction.
"""

from __future__ import annotations

import random
import time
import weakref
from collections import Counter, namedtuple
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import backends, config, maintenance, registry, steps
from . import queries as q
from . import validation as check
from ._deprecation import keyword_only_since
from .backends.base import run_closing
from .db import joins_caller_transaction, run_read, run_write
from .driver import Tx
from .errors import ClaimLost, DatabaseError, InvalidInput, TaskNotFound
from .models import Task, TaskEvent, TaskRun
from .states import Status

#: release_stale_claims handles at most this many expired leases per transaction.
RECLAIM_BATCH = 1000

# -- creating ---------------------------------------------------------------------------


def create_task(
    session: Session,
    *,
    title: str,
    body: str | None = None,
    assignee: str | None = None,
    tenant: str | None = None,
    priority: int = 0,
    parents: Iterable[int] = (),
    idempotency_key: str | None = None,
    max_attempts: int | None = None,
    run_at: datetime | None = None,
    created_by: str | None = None,
    triage: bool = False,
    max_runtime: float | None = None,
) -> int:
    """Create a task and return its id.

    The task starts in ``triage`` when ``triage=True``, in ``todo`` while any of
    ``parents`` is unfinished, else in ``ready``. With an ``idempotency_key`` that a live
    (not archived) task of the same tenant already holds, that task's id is returned
    and nothing is written.

    ``max_runtime`` (seconds) limits each run of the task: a
    :class:`~kanban_orm.worker.Worker` cancels a run that outlasts it and fails the task.

    Raises :class:`InvalidInput` (empty or over-long title, bad types) and
    :class:`TaskNotFound` (a parent that does not exist); nothing is written then.
    """
    values: dict[str, Any] = {
        "title": check.title(title),
        "body": check.text(body, "body"),
        "assignee": check.name(assignee, "assignee"),
        "tenant": check.name(tenant, "tenant"),
        "created_by": check.name(created_by, "created_by"),
        "idempotency_key": check.name(idempotency_key, "idempotency_key"),
        "priority": check.integer(priority, "priority"),
        "max_attempts": check.optional_integer(max_attempts, "max_attempts", minimum=1),
        "run_at": check.timestamp(run_at, "run_at"),
        "max_runtime_ms": check.runtime_limit(max_runtime, "max_runtime"),
    }
    parent_ids = check.task_ids(parents, "parents")
    triage = check.boolean(triage, "triage")

    def work(s: Tx) -> int:
        if idempotency_key is not None:
            found = s.execute(
                q.live_by_idempotency_key_statement(tenant is not None),
                {"key": idempotency_key, "tenant": tenant},
            ).scalar()
            if found is not None:
                return int(found)
        status = _initial_status(s, parent_ids, triage)
        task_id: int = s.execute(q.INSERT_TASK, {**values, "status": status.value}).scalar_one()
        if parent_ids:
            s.execute(q.INSERT_LINK, [{"parent_id": p, "child_id": task_id} for p in parent_ids])
        steps.record(
            s,
            task_id,
            "created",
            payload={
                "title": values["title"],
                "status": status.value,
                "priority": values["priority"],
                "assignee": values["assignee"],
                "tenant": values["tenant"],
                "parents": parent_ids,
            },
        )
        return task_id

    for attempt in range(3):
        try:
            return run_write(session, work)
        except DatabaseError as error:
            # Another creator inserted the same key between our lookup and our insert
            # (PostgreSQL; SQLite's write lock serialises them). The unique index made
            # this call fail and write nothing; run again and the lookup finds theirs.
            duplicate = isinstance(error.__cause__, IntegrityError)
            if not duplicate or idempotency_key is None or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _initial_status(s: Tx, parent_ids: list[int], triage: bool) -> Status:
    if parent_ids:
        try:
            steps.lock_parents(s, parent_ids)
        except TaskNotFound as missing:
            raise TaskNotFound(
                missing.task_id, f"parent task {missing.task_id} does not exist"
            ) from None
    if triage:
        return Status.TRIAGE
    if parent_ids and s.execute(q.ANY_UNFINISHED, {"ids": parent_ids}).first() is not None:
        return Status.TODO
    return Status.READY


# -- claiming ---------------------------------------------------------------------------


def claim_task(
    session: Session,
    task_id: int,
    *,
    claimer: str,
    ttl_seconds: float | None = None,
    worker_id: int | None = None,
) -> Task | None:
    """Claim one specific ready task for ``claimer``; return it running, or None.

    None means another worker won the race or the task is not claimable (not ready,
    not yet due, or waiting for a parent): contention is normal, never an exception.
    The returned task carries a fresh ``claim_lock`` (a fencing token unique to this
    claim) that later fenced calls must present, and ``current_run_id``, the new run.

    ``worker_id`` names the registered worker claiming (see :mod:`kanban_orm.registry`),
    recorded on the run, so the claim is released as soon as that worker is proven
    dead; a :class:`~kanban_orm.worker.Worker` passes its own.

    Raises :class:`TaskNotFound` for an unknown id, :class:`InvalidInput` for a bad
    claimer, TTL or worker id.
    """
    task_id = check.task_id(task_id)
    who = steps.claimer_name(claimer)
    ttl = check.ttl(ttl_seconds)
    params = {"task_id": task_id, "ttl": ttl, "worker_id": _worker_id(worker_id)}

    def work(s: Tx) -> Task | None:
        claimed = s.backend.claim_by_id(s, params, who)
        if not claimed:
            if s.execute(q.TASK_EXISTS, {"task_id": task_id}).first() is None:
                raise TaskNotFound(task_id)
            return None
        return s.attach(Task, claimed[0])

    return run_write(session, work, one_statement=True)


def claim_next(
    session: Session,
    *,
    claimer: str,
    assignee: str | None = None,
    tenant: str | None = None,
    ttl_seconds: float | None = None,
    worker_id: int | None = None,
) -> Task | None:
    """Claim the best claimable task (highest priority, then oldest), or return None.

    Expired leases, and the claims of workers proven dead, are taken over (see
    :func:`claim_many`), so a board with no reaper still heals.
    """
    claimed = claim_many(
        session,
        claimer=claimer,
        limit=1,
        assignee=assignee,
        tenant=tenant,
        ttl_seconds=ttl_seconds,
        worker_id=worker_id,
    )
    return claimed[0] if claimed else None


def claim_many(
    session: Session,
    *,
    claimer: str,
    limit: int,
    assignee: str | None = None,
    tenant: str | None = None,
    ttl_seconds: float | None = None,
    worker_id: int | None = None,
) -> list[Task]:
    """Claim up to ``limit`` claimable tasks in one transaction, best first.

    Each claimed task gets its own run, fencing token and ``claimed`` event. An empty
    list means nothing was claimable. ``worker_id`` is as for :func:`claim_task`.

    Expired leases within the same filters are taken over, and so are the claims of
    registered workers proven dead (:func:`kanban_orm.registry.release_dead_claims`),
    so a board with no reaper still heals: whenever the claimable tasks fall short of
    ``limit``, and otherwise at most once every :data:`RECLAIM_CHECK_SECONDS` per
    process and engine (looking for them costs a query, which a busy claimer should
    not pay on every call).
    """
    wanted = _ClaimFilter.of(claimer, limit, assignee, tenant, ttl_seconds, worker_id)
    return _claiming(session, wanted, lambda limit: _claim_only(session, wanted, limit))


class _ClaimFilter:
    """A claim's checked arguments: who claims, how many, within which filters."""

    __slots__ = ("by_assignee", "by_tenant", "count", "params", "who")

    def __init__(self, who: str, count: int, params: dict[str, Any], a: bool, t: bool) -> None:
        self.who, self.count, self.params = who, count, params
        self.by_assignee, self.by_tenant = a, t

    @classmethod
    def of(
        cls,
        claimer: str,
        limit: int,
        assignee: str | None,
        tenant: str | None,
        ttl_seconds: float | None,
        worker_id: int | None = None,
    ) -> _ClaimFilter:
        who = steps.claimer_name(claimer)
        count = check.integer(limit, "limit", minimum=1)
        params: dict[str, Any] = {
            "limit": count,
            "ttl": check.ttl(ttl_seconds),
            "worker_id": _worker_id(worker_id),
        }
        if assignee is not None:
            params["only_assignee"] = check.name(assignee, "assignee")
        if tenant is not None:
            params["only_tenant"] = check.name(tenant, "tenant")
        return cls(who, count, params, assignee is not None, tenant is not None)

    def limited(self, limit: int) -> dict[str, Any]:
        return {**self.params, "limit": limit}

    def claim(self, s: Tx, limit: int) -> list[Task]:
        """The claim itself, inside the caller's transaction (Backend.claim_next)."""
        rows = s.backend.claim_next(
            s, self.by_assignee, self.by_tenant, self.limited(limit), self.who
        )
        return [s.attach(Task, row) for row in rows]


def _claim_only(session: Session, wanted: _ClaimFilter, limit: int) -> list[Task]:
    return run_write(session, lambda s: wanted.claim(s, limit), one_statement=True)


def _claiming(
    session: Session,
    wanted: _ClaimFilter,
    first: Callable[[int], list[Task]],
    *,
    reclaim_first: bool = True,
) -> list[Task]:
    """``first(limit)`` (a transaction that claims), with the takeover of expired leases
    and of dead workers' claims that every claim does (see :func:`claim_many`): looked
    for when due, before ``first`` (or, without ``reclaim_first``, after it), and
    whenever ``first`` fell short, the tasks reclaimed then claimed in a transaction of
    their own."""
    expired = q.expired_claims_statement(wanted.by_assignee, wanted.by_tenant)
    engine = session.get_bind().engine

    def reclaim() -> int:
        # Proving workers dead costs a query per worker holding claims: at most once a
        # second per process, not on every empty poll.
        dead_too = registry.check_due(engine)
        return run_write(
            session,
            lambda s: (
                _reclaim_expired(s, expired, wanted.params)
                + (registry.release_dead(s, wanted.params) if dead_too else 0)
            ),
        )

    due = _reclaim_check_due(engine)
    looked = due and reclaim_first
    if looked:
        reclaim()
    claimed = first(wanted.count)
    short = len(claimed) < wanted.count
    if not looked and (short or due) and reclaim() and short:
        claimed += _claim_only(session, wanted, wanted.count - len(claimed))
    return claimed


#: claim_many looks for expired leases at least this often while claims keep succeeding.
RECLAIM_CHECK_SECONDS = 1.0
_last_reclaim_check: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()


def _reclaim_check_due(key: Engine) -> bool:
    now = time.monotonic()
    if now - _last_reclaim_check.get(key, float("-inf")) < RECLAIM_CHECK_SECONDS:
        return False
    _last_reclaim_check[key] = now
    return True


# -- leases -----------------------------------------------------------------------------


def heartbeat(
    session: Session, task_id: int, *, claim_lock: str, ttl_seconds: float | None = None
) -> datetime:
    """Extend the caller's lease to ``ttl_seconds`` from now (database clock); return the
    new lease expiry (the task's ``claim_expires``: naive UTC, and truthy, as the True
    this used to return was).

    Raises :class:`ClaimLost` when ``claim_lock`` no longer holds the task (its lease
    was reclaimed, it was finished, or it never held it) and :class:`TaskNotFound`.
    """
    task_id = check.task_id(task_id)
    token = steps.token(claim_lock)
    ttl = check.ttl(ttl_seconds)

    def work(s: Tx) -> datetime:
        held = s.execute(q.HEARTBEAT, {"task_id": task_id, "token": token, "ttl": ttl}).first()
        if held is None:
            steps.explain(s, task_id, None, token)
        s.execute(q.TOUCH_RUN, {"run_id": held.current_run_id})
        expires: datetime = held.claim_expires
        return expires

    return run_write(session, work)


def release_stale_claims(session: Session) -> int:
    """Reclaim every expired lease (database clock); return how many were reclaimed.

    Each reclaimed run is closed with outcome ``reclaimed`` and its attempt counts; the
    task goes back to ``ready``, or to ``blocked`` once its attempts are used up; one
    ``reclaimed`` event each. A lease renewed or finished after it was seen expired is
    left alone: the reclaim is a compare-and-swap on the token it saw.

    The claims of registered workers proven dead are reclaimed the same way, lease or
    no lease (see :func:`kanban_orm.registry.release_dead_claims`), and counted too.
    """
    every_lease = q.expired_claims_statement(False, False)
    limit = {"limit": RECLAIM_BATCH}
    return run_write(
        session,
        lambda s: _reclaim_expired(s, every_lease, limit) + registry.release_dead(s, limit),
    )


def _reclaim_expired(s: Tx, expired: Select[Any], params: dict[str, Any]) -> int:
    leases = s.execute(expired, params).all()
    return sum(steps.reclaim(s, lease, q.RECLAIM_EXPIRED, "lease expired") for lease in leases)


def _worker_id(worker_id: object) -> int | None:
    return None if worker_id is None else check.task_id(worker_id, "worker_id")


# -- finishing a run --------------------------------------------------------------------


def complete_task(
    session: Session,
    task_id: int,
    *,
    claim_lock: str | None = None,
    result: str | None = None,
    summary: str | None = None,
    metadata: dict[str, Any] | None = None,
    force: bool = False,
) -> Task:
    """Mark the task done, close its run as ``completed`` and promote ready children.

    With ``claim_lock`` the call is fenced: it succeeds only while that claim holds the
    task, else :class:`ClaimLost`. Without it, ``force=True`` is required and completes
    the task from any state that may move to ``done`` (closing an open run, if any).
    Raises :class:`InvalidInput` (neither or both given, non-JSON ``metadata``),
    :class:`TaskNotFound`, :class:`InvalidTransition`.
    """
    task_id = check.task_id(task_id)
    if (claim_lock is None) == (not check.boolean(force, "force")):
        raise InvalidInput(
            "complete_task needs the claim_lock of the claim it completes, or force=True;"
            " exactly one of them"
        )
    token = None if claim_lock is None else steps.token(claim_lock)
    task_result = check.text(result, "result")
    run_summary = check.text(summary, "summary")
    run_metadata = check.json_object(metadata, "metadata")

    def work(s: Tx) -> Task:
        return _complete(s, task_id, token, task_result, run_summary, run_metadata)

    if token is not None:
        done = _complete_uncontested(
            session, [(task_id, token)], task_result, run_summary, run_metadata
        )
        if done is not None:
            return done[0]
    return run_write(session, work)


def complete_many(
    session: Session,
    claims: Iterable[tuple[int, str] | Task],
    *,
    result: str | None = None,
    summary: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> list[Task]:
    """Complete several claimed tasks in one transaction: all of them, or none.

    ``claims`` holds ``(task_id, claim_lock)`` pairs or the tasks ``claim_many`` returned;
    each completion is fenced and does exactly what :func:`complete_task` does, with
    the same ``result``, ``summary`` and ``metadata``. One transaction (one commit)
    for the batch is what makes batch workers fast. If any claim is no longer held the
    call raises :class:`ClaimLost` for it and completes none; complete the others one
    by one. Raises :class:`InvalidInput` (a task listed twice), :class:`TaskNotFound`.
    """
    pairs = [_held(claim) for claim in check.collection(claims, "claims")]
    repeated = [task_id for task_id, n in Counter(t for t, _ in pairs).items() if n > 1]
    if repeated:
        raise InvalidInput(f"complete_many lists task {repeated[0]} more than once")
    task_result = check.text(result, "result")
    run_summary = check.text(summary, "summary")
    run_metadata = check.json_object(metadata, "metadata")

    def work(s: Tx) -> list[Task]:
        return _complete_batch(s, pairs, task_result, run_summary, run_metadata)

    if not pairs:
        return []
    done = _complete_uncontested(session, pairs, task_result, run_summary, run_metadata)
    return done if done is not None else run_write(session, work)


def complete_and_claim_next(
    session: Session,
    task_id: int,
    *,
    claim_lock: str,
    claimer: str,
    result: str | None = None,
    summary: str | None = None,
    metadata: dict[str, Any] | None = None,
    assignee: str | None = None,
    tenant: str | None = None,
    ttl_seconds: float | None = None,
    worker_id: int | None = None,
) -> Task | None:
    """Complete a claimed task and claim the next one, in one transaction.

    What :func:`complete_task` (fenced by ``claim_lock``) and then :func:`claim_next`
    (with ``claimer``, ``assignee``, ``tenant``, ``ttl_seconds``, ``worker_id``) would do, with the
    same runs, events and promotions, for one commit instead of two; a worker loop's
    call. Returns the newly claimed task, or None when nothing was claimable (the
    completion stands either way).

    Raises what :func:`complete_task` raises: :class:`ClaimLost` when ``claim_lock`` no
    longer holds the task, and then nothing was completed *and nothing was claimed*;
    :class:`TaskNotFound`; :class:`InvalidInput` for a bad argument of either part,
    before anything is written. A call whose connection dropped as it committed is
    retried like any other, and knows its completion had landed; a task that landed
    claimed with it is then lost to this caller until its lease expires, as with
    :func:`claim_next`.
    """
    claimed = complete_and_claim_many(
        session,
        task_id,
        claim_lock=claim_lock,
        claimer=claimer,
        limit=1,
        result=result,
        summary=summary,
        metadata=metadata,
        assignee=assignee,
        tenant=tenant,
        ttl_seconds=ttl_seconds,
        worker_id=worker_id,
    )
    return claimed[0] if claimed else None


def complete_and_claim_many(
    session: Session,
    task_id: int,
    *,
    claim_lock: str,
    claimer: str,
    limit: int,
    result: str | None = None,
    summary: str | None = None,
    metadata: dict[str, Any] | None = None,
    assignee: str | None = None,
    tenant: str | None = None,
    ttl_seconds: float | None = None,
    worker_id: int | None = None,
) -> list[Task]:
    """:func:`complete_and_claim_next` claiming up to ``limit`` tasks, as
    :func:`claim_many` does; an empty list when nothing was claimable.

    On PostgreSQL a completion with no child waiting and its claim are one statement
    (:func:`~kanban_orm.queries.completing_and_claiming`); otherwise, and on SQLite and
    MariaDB/MySQL, one transaction runs the completion's statements, then the claim's.
    Expired leases are taken over as :func:`claim_many` does, in a transaction of their
    own after this one (before it, they could take over the very task being completed).
    """
    task_id = check.task_id(task_id)
    token = steps.token(claim_lock)
    completion = _Completion(
        task_id,
        token,
        check.text(result, "result"),
        check.text(summary, "summary"),
        check.json_object(metadata, "metadata"),
    )
    wanted = _ClaimFilter.of(claimer, limit, assignee, tenant, ttl_seconds, worker_id)

    def work(s: Tx, limit: int) -> list[Task]:
        completion.write(s)
        return wanted.claim(s, limit)

    def first(limit: int) -> list[Task]:
        claimed = _complete_uncontested_and_claim(session, completion, wanted, limit)
        if claimed is not None:
            return claimed
        return run_write(session, lambda s: work(s, limit))

    return _claiming(session, wanted, first, reclaim_first=False)


def complete_many_and_claim_many(
    session: Session,
    completions: Sequence[tuple[int, str, str | None]],
    *,
    claimer: str,
    limit: int,
    assignee: str | None = None,
    tenant: str | None = None,
    ttl_seconds: float | None = None,
    worker_id: int | None = None,
) -> list[Task]:
    """Complete several claimed tasks, each with its own result, and claim up to
    ``limit`` more, in one transaction: the Worker's buffered acknowledgements.

    ``completions`` holds ``(task_id, claim_lock, result)`` triples; each completion is
    fenced and writes what :func:`complete_task` writes (promotions included), and the
    claim is :func:`claim_many`'s (``limit=0`` claims nothing). As with
    :func:`complete_many`, a claim no longer held raises :class:`ClaimLost` and then
    nothing is completed and nothing claimed. Expired leases are taken over after the
    transaction, as :func:`complete_and_claim_many` does.
    """
    limit = check.integer(limit, "limit", minimum=0)
    triples = [_held_with_result(claim) for claim in check.collection(completions, "completions")]
    repeated = [task_id for task_id, n in Counter(t for t, _, _ in triples).items() if n > 1]
    if repeated:
        raise InvalidInput(f"a batch of completions lists task {repeated[0]} more than once")
    # Grouped by result: each group is one Backend.complete_pairs (a single statement
    # on PostgreSQL), and a worker's results are mostly alike (often None).
    groups: dict[str | None, list[tuple[int, str]]] = {}
    for task_id, token, result in triples:
        groups.setdefault(result, []).append((task_id, token))

    def complete(s: Tx) -> None:
        for result, pairs in groups.items():
            _complete_batch(s, pairs, result, None, None)

    if limit == 0:
        if triples:
            run_write(session, complete)
        return []
    wanted = _ClaimFilter.of(claimer, limit, assignee, tenant, ttl_seconds, worker_id)

    def work(s: Tx, limit: int) -> list[Task]:
        complete(s)
        return wanted.claim(s, limit)

    return _claiming(
        session,
        wanted,
        lambda limit: run_write(session, lambda s: work(s, limit)),
        reclaim_first=False,
    )


def _held_with_result(claim: object) -> tuple[int, str, str | None]:
    if not isinstance(claim, tuple) or len(claim) != 3:
        raise InvalidInput(f"completions must be (task_id, claim_lock, result), not {claim!r}")
    task_id, token = _held(claim[:2])
    return task_id, token, check.text(claim[2], "result")


class _Completion:
    """A fenced completion's checked arguments (complete_and_claim_many)."""

    __slots__ = ("metadata", "result", "summary", "task_id", "token")

    def __init__(
        self,
        task_id: int,
        token: str,
        result: str | None,
        summary: str | None,
        metadata: dict[str, Any] | None,
    ) -> None:
        self.task_id, self.token, self.result = task_id, token, result
        self.summary, self.metadata = summary, metadata

    def write(self, s: Tx) -> None:
        """The transaction path of complete_task, in the caller's transaction (the
        completed task is not returned, so it is not built)."""
        _record_completion(s, self.task_id, self.token, self.result, self.summary, self.metadata)

    def params(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "token": self.token,
            "task_result": self.result,
            "run_summary": self.summary,
            "run_metadata": self.metadata,
        }


#: A claimed task's row from completing_and_claiming's, whose last column is not the
#: task's (Tx.attach maps every column it is given).
_TaskRow = namedtuple("_TaskRow", [column.key for column in q.tasks.c])  # type: ignore[misc]


def _complete_uncontested_and_claim(
    session: Session, completion: _Completion, wanted: _ClaimFilter, limit: int
) -> list[Task] | None:
    """The completion and the claim in one statement that is its own transaction, where
    the backend has one (Backend.uncontested_completion_and_claim): the claimed tasks;
    None when it completed nothing or there is no such statement, and the caller takes
    the transaction path (which promotes, and explains a claim that no longer holds)."""
    statement = backends.of(session).uncontested_completion_and_claim(
        wanted.by_assignee, wanted.by_tenant
    )
    if statement is None:
        return None
    params = {**completion.params(), **wanted.limited(limit), "claimer": wanted.who}

    def work(s: Tx) -> list[Task] | None:
        rows = s.execute(statement, params).all()
        if rows:
            claimed = [_TaskRow(*row[:-1]) for row in rows if row.id is not None]
            return [s.attach(Task, row) for row in claimed]
        # A replay whose first attempt had landed: completed, and whatever it claimed is
        # not ours to know (as a replayed claim_next's); claim now.
        pair = [(completion.task_id, completion.token)]
        if steps.batch_landed(s, pair, "completed") is None:
            return None
        return wanted.claim(s, limit)

    return run_write(session, work, one_statement=True)


def _complete_uncontested(
    session: Session,
    pairs: list[tuple[int, str]],
    task_result: str | None,
    summary: str | None,
    metadata: dict[str, Any] | None,
) -> list[Task] | None:
    """Complete every held claim in ``pairs`` with one statement that is its own
    transaction, where the backend has one (Backend.uncontested_completion), the tasks in
    the order given; None when it completed none, or the backend has no such statement:
    the caller then runs the transaction path, which promotes waiting children and
    explains a claim that no longer holds.
    """
    statement = backends.of(session).uncontested_completion(one=len(pairs) == 1)
    if statement is None:
        return None
    ids = [task_id for task_id, _ in pairs]
    params: dict[str, Any] = {
        "task_result": task_result,
        "run_summary": summary,
        "run_metadata": metadata,
    }
    if len(pairs) == 1:
        params.update(task_id=pairs[0][0], token=pairs[0][1])
    else:
        params.update(ids=ids, tokens=[token for _, token in pairs])

    def work(s: Tx) -> list[Task] | None:
        rows = s.execute(statement, params).all()
        if rows:
            by_id = {row.id: row for row in rows}
            return [s.attach(Task, by_id[task_id]) for task_id in ids]
        # A replay whose first attempt had landed (all of the batch: one statement).
        return steps.batch_landed(s, pairs, "completed")

    return run_write(session, work, one_statement=True)


def _complete_batch(
    s: Tx,
    pairs: list[tuple[int, str]],
    task_result: str | None,
    summary: str | None,
    metadata: dict[str, Any] | None,
) -> list[Task]:
    """The whole batch (Backend.complete_pairs: its UPDATE, runs and events), then
    promotion where children wait."""
    rows = s.backend.complete_pairs(s, pairs, task_result, summary, metadata)
    by_id = {row.id: row for row in rows}
    if len(by_id) < len(pairs):
        # Only a replay whose whole batch had landed finds every pair done (the batch
        # is one transaction); anything else is a real loss.
        landed = None if rows else steps.batch_landed(s, pairs, "completed")
        if landed is not None:
            return landed
        task_id, token = next(pair for pair in pairs if pair[0] not in by_id)
        steps.explain(s, task_id, Status.DONE, token)  # raising rolls the batch back
    ids = [task_id for task_id, _ in pairs]
    for parent_id in s.scalars(q.PARENTS_WITH_WAITING_CHILDREN, {"ids": ids}):
        steps.promote_children(s, parent_id)
    return [s.attach(Task, by_id[task_id]) for task_id in ids]


def _held(claim: object) -> tuple[int, str]:
    """``(task_id, claim_lock)`` from a pair or from a claimed Task."""
    if isinstance(claim, Task):
        return check.task_id(claim.id), steps.token(claim.claim_lock)
    if isinstance(claim, tuple) and len(claim) == 2:
        return check.task_id(claim[0]), steps.token(claim[1])
    raise InvalidInput(
        f"claims must be (task_id, claim_lock) pairs or claimed tasks, not {claim!r}"
    )


def _complete(
    s: Tx,
    task_id: int,
    token: str | None,
    task_result: str | None,
    summary: str | None,
    metadata: dict[str, Any] | None,
) -> Task:
    done = _record_completion(s, task_id, token, task_result, summary, metadata)
    return steps.load_task(s, task_id) if done is None else s.attach(Task, done)


def _record_completion(
    s: Tx,
    task_id: int,
    token: str | None,
    task_result: str | None,
    summary: str | None,
    metadata: dict[str, Any] | None,
) -> Any:
    """complete_task's writes, in the caller's transaction: the task's new row, or None
    for a replay whose first attempt had landed (see steps.refused)."""
    statement = q.COMPLETE_FORCED if token is None else q.COMPLETE_HELD
    done, waiting = s.backend.move_and_finish_run(
        s,
        statement,
        {"task_id": task_id, "token": token, "task_result": task_result},
        run_closing(task_id, "completed", summary, metadata, None),
        {"forced": token is None},
    )
    if done is None:
        if steps.already_landed(s, task_id, token, "completed"):
            return None
        steps.explain(s, task_id, Status.DONE, token)
    if waiting:
        steps.promote_children(s, task_id)
    return done


def fail_task(
    session: Session, task_id: int, *, claim_lock: str, error: str, retry: bool = True
) -> Task:
    """Record a failed attempt: close the run as ``failed`` with ``error`` kept on it.

    With ``retry`` and attempts left (``max_attempts``, else the configured default)
    the task goes back to ``ready``, claimable after an exponential, jittered backoff
    (``run_at``). Otherwise it is ``blocked``, its reason saying it gave up. Raises
    :class:`ClaimLost`, :class:`TaskNotFound`, :class:`InvalidInput`.
    """
    task_id = check.task_id(task_id)
    token = steps.token(claim_lock)
    message = check.required_text(error, "error")
    retry = check.boolean(retry, "retry")

    def work(s: Tx) -> Task:
        state = s.execute(q.TASK_STATE, {"task_id": task_id}).first()
        if state is None:
            raise TaskNotFound(task_id)
        if state.claim_lock != token:
            if steps.already_landed(s, task_id, token, "failed"):
                return steps.load_task(s, task_id)
            raise ClaimLost(task_id)
        cap = state.max_attempts or config.max_attempts()
        will_retry = retry and state.attempts < cap
        if will_retry:
            next_status, delay, reason = Status.READY, retry_delay(state.attempts), None
        else:
            next_status, delay = Status.BLOCKED, 0.0
            reason = f"gave up after {state.attempts} attempts: {message}" if retry else message
        moved = s.execute(
            q.FAIL_HELD,
            {
                "task_id": task_id,
                "token": token,
                "seen_attempts": state.attempts,
                "next_status": next_status.value,
                "delay": delay,
                "reason": reason,
            },
        ).first()
        if moved is None:
            steps.explain(s, task_id, next_status, token)
        payload = {
            "error": message,
            "attempt": state.attempts,
            "status": next_status.value,
            "retry_in_seconds": round(delay, 3) if will_retry else None,
            "gave_up": not will_retry,
        }
        steps.finish_run(s, task_id, "failed", payload, error=message)
        return s.attach(Task, moved)

    return run_write(session, work)


def retry_delay(attempts: int) -> float:
    """Seconds before a failed task is claimable again: exponential, half-jittered."""
    ceiling = min(
        config.RETRY_BACKOFF_MAX_SECONDS,
        config.RETRY_BACKOFF_BASE_SECONDS * 2 ** max(0, attempts - 1),
    )
    return float(ceiling * random.uniform(0.5, 1.0))


def release_task(
    session: Session, task_id: int, *, claim_lock: str, reason: str | None = None
) -> Task:
    """Hand a claimed task back to ``ready`` without counting a failed attempt.

    For a worker shutting down or rate-limited. The run is closed as ``released``.
    Raises :class:`ClaimLost`, :class:`TaskNotFound`.
    """
    task_id = check.task_id(task_id)
    token = steps.token(claim_lock)
    why = check.text(reason, "reason")

    def work(s: Tx) -> Task:
        released = s.execute(q.RELEASE_HELD, {"task_id": task_id, "token": token}).first()
        if released is None:
            return steps.refused(s, task_id, Status.READY, token, "released")
        steps.finish_run(s, task_id, "released", {"reason": why}, summary=why)
        return s.attach(Task, released)

    return run_write(session, work)


def block_task(
    session: Session, task_id: int, *, reason: str, claim_lock: str | None = None
) -> Task:
    """Move the task to ``blocked`` with ``reason``, closing its run if it was running.

    A running task can only be blocked by its claim holder (pass ``claim_lock``), else
    :class:`ClaimLost`. Raises :class:`InvalidTransition` (already blocked, done, ...),
    :class:`TaskNotFound`, :class:`InvalidInput`.
    """
    task_id = check.task_id(task_id)
    why = check.required_text(reason, "reason")
    token = None if claim_lock is None else steps.token(claim_lock)
    statement = q.BLOCK_UNHELD if token is None else q.BLOCK_HELD

    def work(s: Tx) -> Task:
        moved = s.execute(statement, {"task_id": task_id, "token": token, "reason": why}).first()
        if moved is None:
            return steps.refused(s, task_id, Status.BLOCKED, token, "blocked")
        # Closes the run of a running task; a task that was not running has none.
        steps.finish_run(s, task_id, "blocked", {"reason": why}, error=why)
        return s.attach(Task, moved)

    return run_write(session, work)


def unblock_task(session: Session, task_id: int) -> Task:
    """Move a blocked task back to ``ready`` (``todo`` while a parent is unfinished).

    Raises :class:`InvalidTransition` when the task is not blocked, :class:`TaskNotFound`.
    """
    task_id = check.task_id(task_id)

    def work(s: Tx) -> Task:
        steps.lock_for_ready_or_todo(s, task_id)
        status = s.execute(q.UNBLOCK, {"task_id": task_id}).scalar()
        if status is None:
            steps.explain(s, task_id, Status.READY, None, needs=(Status.BLOCKED,))
        steps.record(s, task_id, "unblocked", None, {"status": status})
        return steps.load_task(s, task_id)

    return run_write(session, work)


# -- shared steps -----------------------------------------------------------------------


# -- reads ------------------------------------------------------------------------------
# Reads take no write lock, see a fresh snapshot and leave no transaction open
# (kanban_orm.db.run_read). They refresh objects the session already holds
# (populate_existing), since transitions change rows behind the ORM's back.


def get_task(session: Session, task_id: int) -> Task:
    """The task with this id. Raises :class:`TaskNotFound`."""
    task_id = check.task_id(task_id)

    def read(s: Session) -> Task:
        task = s.get(Task, task_id, populate_existing=True)
        if task is None:
            raise TaskNotFound(task_id)
        return task

    return run_read(session, read)


def latest_run(session: Session, task_id: int) -> TaskRun | None:
    """The task's most recent run, or None if it was never claimed. Raises :class:`TaskNotFound`."""
    task_id = check.task_id(task_id)
    statement = q.latest_run_statement(task_id)

    def read(s: Session) -> TaskRun | None:
        run = s.scalars(statement).first()
        if run is None:
            steps.require_task(s, task_id)
        return run

    return run_read(session, read)


@keyword_only_since("task_id")
def list_runs(session: Session, *, task_id: int) -> list[TaskRun]:
    """Every run of the task, oldest first. Raises :class:`TaskNotFound`."""
    task_id = check.task_id(task_id)
    statement = q.runs_statement(task_id)

    def read(s: Session) -> list[TaskRun]:
        runs = list(s.scalars(statement))
        if not runs:
            steps.require_task(s, task_id)
        return runs

    return run_read(session, read)


def list_tasks(
    session: Session,
    *,
    status: Status | str | None = None,
    assignee: str | None = None,
    tenant: str | None = None,
    limit: int | None = None,
) -> list[Task]:
    """Tasks in id order, filtered; archived tasks are left out unless ``status='archived'``."""
    statement = q.tasks_statement(
        None if status is None else check.status(status).value,
        None if assignee is None else check.name(assignee, "assignee"),
        None if tenant is None else check.name(tenant, "tenant"),
        check.limit(limit),
    )
    return run_read(session, lambda s: list(s.scalars(statement)))


def list_events(
    session: Session, *, task_id: int | None = None, after_id: int = 0, limit: int | None = None
) -> list[TaskEvent]:
    """Events with ``id > after_id`` in id order, optionally for one task.

    Raises :class:`EventsPruned` when events after ``after_id`` (> 0) may have been
    removed by :func:`kanban_orm.prune` or :func:`kanban_orm.delete_task`.

    Safe for tailing: a follower that passes the last id it saw as ``after_id`` never
    misses an event, even on PostgreSQL where concurrent transactions commit out of id
    order (the read waits, briefly, for transactions that have written events and not
    yet committed). The guarantee needs the call to run in its own transaction: inside
    one the caller began (``session.begin()``, or a Session joined into the transaction
    of its Connection) it is a plain read, which holds no lock until the caller's
    transaction ends.
    """
    after_id = check.after_id(after_id)
    statement = q.events_statement(
        after_id, None if task_id is None else check.task_id(task_id), check.limit(limit)
    )

    def read(s: Session) -> list[TaskEvent]:
        # run_read has ended an auto-begun transaction: one open now is the caller's.
        if not joins_caller_transaction(s):
            steps.wait_for_event_writers(s, after_id)
        found = list(s.scalars(statement))
        maintenance.check_events_horizon(s, after_id)  # after the read: see its docstring
        return found

    return run_read(session, read)


__all__ = [
    "block_task",
    "claim_many",
    "claim_next",
    "claim_task",
    "complete_and_claim_many",
    "complete_and_claim_next",
    "complete_many",
    "complete_task",
    "create_task",
    "fail_task",
    "get_task",
    "heartbeat",
    "latest_run",
    "list_events",
    "list_runs",
    "list_tasks",
    "release_stale_claims",
    "release_task",
    "retry_delay",
    "unblock_task",
]
