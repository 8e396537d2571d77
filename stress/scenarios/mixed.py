"""Every transition at once, with leases short enough to expire under the workers' feet.

worker-0 is the reclaimer: it calls ``release_stale_claims`` every 50-250 ms. The other
workers pick ready tasks at random, claim them with a short TTL and then, at random
(seeded), complete them (some after a heartbeat), fail them (with or without retry),
release them, block them, or overstay the lease before completing or heartbeating, so
that some leases are reclaimed while their holders still think they hold them. Now and
then a worker blocks a ready task nobody holds, and blocked tasks are unblocked, until
every task is done.

Only the reclaimer reclaims: the workers claim by id (``claim_task``), which never takes
over an expired lease, so the ``reclaimed`` events must add up to the reclaimer's counts.
Workers log only what they committed, so the event counts per kind must match the logs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.clock import utcnow

from .. import invariants as inv
from ..harness import (
    DB_ERROR,
    DB_ERRORS,
    TRANSACTION,
    WORKING,
    Check,
    Config,
    Outcome,
    StallWatch,
    WorkerContext,
    one_line,
    read,
)

DESCRIPTION = (
    "random claim/complete/fail/release/block/unblock with a 1 s TTL and a reclaimer; "
    "event counts must match the workers' logs"
)
TENANT = "mixed"
#: The lease every claim asks for; overstaying workers sleep 1.2-2 times this.
TTL_SECONDS = 1.0
OVERSTAY = (1.2, 2.0)
RECLAIM_EVERY_MS = (50.0, 250.0)
#: Each task's max_attempts. fail_task(retry=True) is used on a first attempt (a 5-10 s
#: backoff: later attempts would wait 10-40 s, too long for a short run) and at the
#: last one (it gives up: blocked at once); other failures pass retry=False.
MAX_ATTEMPTS = 3
RETRY_FIRST = 0.3
#: What a worker does with a claim, and how often (weights).
ACTIONS = {
    "complete": 40,
    "heartbeat_complete": 15,
    "fail": 10,
    "release": 8,
    "block": 7,
    "overstay": 20,
}
#: Share of loop turns spent on tasks nobody holds (block a ready one / unblock one).
BLOCK_UNHELD, UNBLOCK = 0.03, 0.08
PICK_AMONG = 5
IDLE_MS = (5.0, 20.0)
#: No board change for this long: the run has stalled; workers give up.
STALL_SECONDS = 30.0

#: Log kinds beyond the event kinds: a fenced call refused, a move refused because the
#: task had moved on (contention, not an error), and other kernel errors.
CLAIM_LOST, REFUSED, KANBAN_ERROR, STALLED = "claim_lost", "refused", "kanban_error", "stalled"
#: Event kinds the workers log when their call committed (and ``reclaimed``, with a count).
EVENT_KINDS = ("claimed", "completed", "failed", "released", "blocked", "unblocked", "reclaimed")


def setup(session: Session, config: Config) -> None:
    for i in range(config.tasks):
        kb.create_task(session, title=f"mixed #{i}", tenant=TENANT, max_attempts=MAX_ATTEMPTS)


# -- the workers ------------------------------------------------------------------------


def work(worker: WorkerContext) -> None:
    session = kb.connect(worker.config.db_url)
    try:
        if worker.index == 0:
            reclaimer(worker, session)
        else:
            churn(worker, session)
    finally:
        session.close()


def unfinished(session: Session) -> int:
    query = select(func.count()).where(kb.Task.status != kb.Status.DONE.value)
    count = read(session, lambda s: s.scalar(query))
    return int(count or 0)


def reclaimer(worker: WorkerContext, session: Session) -> None:
    while not worker.out_of_time():
        try:
            with worker.stage(TRANSACTION):
                count = kb.release_stale_claims(session)
            if count:
                worker.log("reclaimed", count=count)
            if not unfinished(session):
                return
        except DB_ERRORS as error:
            session.rollback()
            worker.log(DB_ERROR, task=None, during="reclaim", error=one_line(error))
        time.sleep(worker.random.uniform(*RECLAIM_EVERY_MS) / 1000)


def pick(session: Session, status: str, n: int = PICK_AMONG) -> list[int]:
    """Up to ``n`` tasks in ``status`` at random; ready ones only once due (a failed
    task waits out its retry backoff)."""
    query = select(kb.Task.id).where(kb.Task.status == status)
    if status == "ready":
        query = query.where(or_(kb.Task.run_at.is_(None), kb.Task.run_at <= utcnow()))
    ids = session.scalars(query.order_by(func.random()).limit(n)).all()
    session.rollback()
    return list(ids)


def churn(worker: WorkerContext, session: Session) -> None:
    progress = StallWatch(STALL_SECONDS)
    while not worker.out_of_time():
        try:
            roll = worker.random.random()
            if roll < BLOCK_UNHELD:
                for task_id in pick(session, "ready", 1):
                    unheld(worker, session, task_id, "blocked")
                continue
            if roll < BLOCK_UNHELD + UNBLOCK:
                for task_id in pick(session, "blocked", 1):
                    unheld(worker, session, task_id, "unblocked")
                continue
            candidates = pick(session, "ready")
            if candidates:
                claim_and_act(worker, session, worker.random.choice(candidates))
                continue
            # Nothing ready: unblock what waits, or see whether the board is finished.
            for task_id in pick(session, "blocked", 1):
                unheld(worker, session, task_id, "unblocked")
            left = unfinished(session)
        except DB_ERRORS as error:
            session.rollback()
            worker.log(DB_ERROR, task=None, during="poll", error=one_line(error))
            continue
        if not left:
            return
        if progress.stalled(left):
            worker.log(STALLED, left=left, seconds=STALL_SECONDS)
            return
        time.sleep(worker.random.uniform(*IDLE_MS) / 1000)


def unheld(worker: WorkerContext, session: Session, task_id: int, kind: str) -> None:
    """Block a ready task nobody holds, or unblock a blocked one; losing the race to
    another worker is contention (``refused``), not an error."""
    try:
        with worker.stage(TRANSACTION, task_id):
            if kind == "blocked":
                kb.block_task(session, task_id, reason=f"parked by {worker.name}")
            else:
                kb.unblock_task(session, task_id)
    except (kb.InvalidTransition, kb.ClaimLost) as error:
        session.rollback()
        worker.log(REFUSED, task=task_id, op=kind, error=one_line(error))
        return
    except DB_ERRORS as error:
        session.rollback()
        worker.log(DB_ERROR, task=task_id, during=kind, error=one_line(error))
        return
    except kb.KanbanError as error:
        session.rollback()
        worker.log(KANBAN_ERROR, task=task_id, during=kind, error=one_line(error))
        return
    worker.log(kind, task=task_id, run_id=None)


def claim_and_act(worker: WorkerContext, session: Session, task_id: int) -> None:
    try:
        with worker.stage(TRANSACTION, task_id):
            task = kb.claim_task(session, task_id, claimer=worker.name, ttl_seconds=TTL_SECONDS)
    except DB_ERRORS as error:
        session.rollback()
        worker.log(DB_ERROR, task=task_id, during="claim", error=one_line(error))
        return
    except kb.KanbanError as error:
        session.rollback()
        worker.log(KANBAN_ERROR, task=task_id, during="claim", error=one_line(error))
        return
    if task is None:
        worker.log("lost_claim_race", task=task_id)
        time.sleep(worker.random.uniform(*IDLE_MS) / 1000)
        return
    token, run_id = task.claim_lock, task.current_run_id
    assert token is not None
    worker.log("claimed", task=task_id, run_id=run_id, claim_lock=token, attempt=task.attempts)
    action = worker.random.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
    with worker.stage(WORKING, task_id):
        if action == "overstay":
            time.sleep(TTL_SECONDS * worker.random.uniform(*OVERSTAY))
        else:
            worker.work_pause()
    held = Held(worker, session, task_id, token, run_id)
    beat = action == "heartbeat_complete" or (action == "overstay" and worker.random.random() < 0.3)
    if beat and not held.call("heartbeat", kb.heartbeat, ttl_seconds=TTL_SECONDS):
        return
    if action == "fail":
        attempt = task.attempts
        retry = attempt >= MAX_ATTEMPTS or (attempt == 1 and worker.random.random() < RETRY_FIRST)
        held.call("failed", kb.fail_task, error=f"{worker.name} failed", retry=retry)
    elif action == "release":
        held.call("released", kb.release_task, reason=f"{worker.name} let go")
    elif action == "block":
        held.call("blocked", kb.block_task, reason=f"{worker.name} is stuck")
    else:
        held.call(
            "completed",
            kb.complete_task,
            result=f"done by {worker.name}",
            metadata={"worker": worker.name, "run_id": run_id},
        )


class Held:
    """A claim a worker holds: fenced calls with its token, each logged by outcome."""

    def __init__(
        self,
        worker: WorkerContext,
        session: Session,
        task_id: int,
        token: str,
        run_id: int | None,
    ) -> None:
        self.worker, self.session, self.task_id = worker, session, task_id
        self.token, self.run_id = token, run_id
        #: How many of its calls were refused with ClaimLost.
        self.lost = 0

    def call(self, kind: str, function: Callable[..., Any], **kwargs: Any) -> bool:
        """Call ``function(session, task_id, claim_lock=token, **kwargs)``; log ``kind``
        (the event it wrote) when it committed. False when it did not."""
        worker = self.worker
        try:
            with worker.stage(TRANSACTION, self.task_id):
                result = function(self.session, self.task_id, claim_lock=self.token, **kwargs)
        except kb.ClaimLost as error:
            self.session.rollback()
            self.lost += 1
            worker.log(
                CLAIM_LOST,
                task=self.task_id,
                run_id=self.run_id,
                claim_lock=self.token,
                op=kind,
                error=one_line(error),
            )
            return False
        except DB_ERRORS as error:
            self.session.rollback()
            worker.log(DB_ERROR, task=self.task_id, during=kind, error=one_line(error))
            return False
        except kb.KanbanError as error:
            self.session.rollback()
            worker.log(KANBAN_ERROR, task=self.task_id, during=kind, error=one_line(error))
            return False
        extra = {"status": result.status} if isinstance(result, kb.Task) else {}
        worker.log(kind, task=self.task_id, run_id=self.run_id, claim_lock=self.token, **extra)
        return True


# -- invariants -------------------------------------------------------------------------


def checks(outcome: Outcome, session: Session) -> list[Check]:
    board = inv.board_violations(session)
    events = inv.load_events(session)
    runs = inv.load_runs(session)
    tasks = session.execute(select(kb.Task.id, kb.Task.status)).all()
    session.rollback()
    db_counts = inv.event_kind_counts(events)
    logged = logged_counts(outcome)
    lost = list(outcome.entries(CLAIM_LOST))
    outcome.numbers.update(
        {
            "reclaims": db_counts.get("reclaimed", 0),
            "claim_lost": len(lost),
            "late_heartbeats_refused": sum(1 for e in lost if e["op"] == "heartbeat"),
            "events": dict(sorted(db_counts.items())),
        }
    )
    return [
        Check(
            "1. board consistent: current_run_id iff one open run, claim_lock iff running, "
            "every ended run has an outcome",
            not board,
            inv.sample(board),
        ),
        replay_check(events, "2."),
        holder_check(events, runs, outcome, "3."),
        refusal_check(lost, runs, "4."),
        counts_check(db_counts, logged, outcome.config.tasks, "5."),
        all_done(tasks, outcome.config.tasks, "6."),
        errors_check(outcome, "7."),
    ]


def logged_counts(outcome: Outcome) -> dict[str, int]:
    counts = {kind: 0 for kind in EVENT_KINDS}
    for entry in outcome.entries():
        if entry["kind"] == "reclaimed":
            counts["reclaimed"] += entry["count"]
        elif entry["kind"] in counts:
            counts[entry["kind"]] += 1
    return counts


def replay_check(events: list[inv.Event], number: str) -> Check:
    problems = inv.replay_violations(events)
    return Check(
        f"{number} every transition names the claim holding the task (event-log replay)",
        not problems,
        inv.sample(problems),
    )


def holder_check(
    events: list[inv.Event], runs: dict[int, inv.Run], outcome: Outcome, number: str
) -> Check:
    problems = inv.completions_by_holders(
        events, runs, list(outcome.entries("claimed")), list(outcome.entries("completed"))
    )
    return Check(
        f"{number} every completion came from the current claim holder, as logged",
        not problems,
        inv.sample(problems),
    )


def refusal_check(lost: list[dict[str, Any]], runs: dict[int, inv.Run], number: str) -> Check:
    problems = inv.refusals_after_reclaim(lost, runs)
    return Check(
        f"{number} every ClaimLost refused a claim that had been reclaimed",
        not problems,
        inv.sample(problems),
    )


def counts_check(db: dict[str, int], logged: dict[str, int], tasks: int, number: str) -> Check:
    expected = {**logged, "created": tasks}
    kinds = sorted(set(expected) | set(db))
    problems = [
        f"{kind}: {db.get(kind, 0)} events, {expected.get(kind, 0)} logged"
        for kind in kinds
        if db.get(kind, 0) != expected.get(kind, 0)
    ]
    return Check(
        f"{number} event counts per kind match the workers' logs", not problems, "; ".join(problems)
    )


def all_done(tasks: Any, expected: int, number: str) -> Check:
    problems = [f"task {t.id} is {t.status}" for t in tasks if t.status != kb.Status.DONE.value]
    if len(tasks) != expected:
        problems.append(f"{len(tasks)} tasks on the board, {expected} seeded")
    return Check(f"{number} every task done, none lost", not problems, inv.sample(problems))


def errors_check(outcome: Outcome, number: str) -> Check:
    errors = [
        f"{e['worker']} {e['kind']} during {e['during']}: {e['error']}"
        for e in outcome.entries()
        if e["kind"] in (DB_ERROR, KANBAN_ERROR)
    ]
    errors += [
        f"{e['worker']} stalled with {e['left']} tasks left" for e in outcome.entries(STALLED)
    ]
    shown = [*outcome.casualties, inv.sample(errors, 2)] if errors else outcome.casualties
    detail = "; ".join(shown)
    return Check(
        f"{number} no database or kernel error escaped; every worker finished",
        not errors and not outcome.casualties,
        detail,
    )
