"""Leases shorter than the work: every first claim overstays and must lose the task.

worker-0 only reaps (``release_stale_claims`` every 0.3-1.2 s); the others claim with a
1 s TTL (odd workers with ``claim_next``, even ones with ``claim_many``), which take
expired leases over too, so leases are reclaimed both by the reaper and by claimers. A task's
first claim is slow: its holder works 1.3-2 times the TTL without a heartbeat, waits
until the lease has been reclaimed (in this kernel a lease is only lost to a reclaim;
an expired, unreclaimed token still works), then tries a late heartbeat and a late
completion, in random order. Both must be refused with ``ClaimLost``, every time. Later
claims heartbeat and complete at once, so each task is completed exactly once, by a
claim other than the one that overstayed. The scenario fails if no reclaim happened.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

import kanban_orm as kb

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
)
from .mixed import (
    CLAIM_LOST,
    KANBAN_ERROR,
    STALLED,
    Held,
    all_done,
    errors_check,
    holder_check,
    replay_check,
    unfinished,
)

DESCRIPTION = (
    "leases (1 s) shorter than the work: late heartbeats and completions from the "
    "reclaimed holder must get ClaimLost; each task completed once by someone else"
)
TENANT = "reclaim"
TTL_SECONDS = 1.0
#: A first claim works this many TTLs without a heartbeat.
OVERSTAY = (1.3, 2.0)
#: How long an overstaying holder waits for its lease to be reclaimed before it gives
#: up waiting (a finding: nobody healed the board).
RECLAIM_WAIT_SECONDS = TTL_SECONDS + 10.0
REAP_EVERY_MS = (300.0, 1200.0)
BATCH = 4
#: High enough that a fast claim slowed past its lease by a loaded machine never makes
#: a task give up (blocked) for lack of attempts.
MAX_ATTEMPTS = 20
IDLE_MS = (10.0, 40.0)
STALL_SECONDS = 30.0
#: Log kinds: a late call refused as it must be, one accepted (a violation), and an
#: expired lease that nobody reclaimed in time (a finding).
LATE_REFUSED, LATE_ACCEPTED, NOT_RECLAIMED = "late_refused", "late_accepted", "not_reclaimed"


def setup(session: Session, config: Config) -> None:
    for i in range(config.tasks):
        kb.create_task(session, title=f"reclaim #{i}", tenant=TENANT, max_attempts=MAX_ATTEMPTS)


def work(worker: WorkerContext) -> None:
    session = kb.connect(worker.config.db_url)
    progress = StallWatch(STALL_SECONDS)
    try:
        while not worker.out_of_time():
            if worker.index == 0:
                reap(worker, session)
                time.sleep(worker.random.uniform(*REAP_EVERY_MS) / 1000)
                claimed = []
            else:
                claimed = claim(worker, session)
            if claimed:
                handle(worker, session, claimed)
                continue
            try:
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
    finally:
        session.close()


def reap(worker: WorkerContext, session: Session) -> None:
    try:
        with worker.stage(TRANSACTION):
            count = kb.release_stale_claims(session)
    except DB_ERRORS as error:
        session.rollback()
        worker.log(DB_ERROR, task=None, during="reap", error=one_line(error))
        return
    if count:
        worker.log("reclaimed", count=count)


def claim(worker: WorkerContext, session: Session) -> list[kb.Task]:
    try:
        with worker.stage(TRANSACTION):
            if worker.index % 2:
                task = kb.claim_next(session, claimer=worker.name, ttl_seconds=TTL_SECONDS)
                tasks = [task] if task is not None else []
            else:
                tasks = kb.claim_many(
                    session, claimer=worker.name, limit=BATCH, ttl_seconds=TTL_SECONDS
                )
    except DB_ERRORS as error:
        session.rollback()
        worker.log(DB_ERROR, task=None, during="claim", error=one_line(error))
        return []
    except kb.KanbanError as error:
        session.rollback()
        worker.log(KANBAN_ERROR, task=None, during="claim", error=one_line(error))
        return []
    for task in tasks:
        worker.log(
            "claimed",
            task=task.id,
            run_id=task.current_run_id,
            claim_lock=task.claim_lock,
            attempt=task.attempts,
        )
    return tasks


def handle(worker: WorkerContext, session: Session, claimed: list[kb.Task]) -> None:
    """Complete the retries at once; let the first claims overstay, then try them late."""
    held = [
        (Held(worker, session, t.id, str(t.claim_lock), t.current_run_id), t.attempts)
        for t in claimed
    ]
    for claim_, attempt in held:
        if attempt > 1:
            with worker.stage(WORKING, claim_.task_id):
                worker.work_pause()
            if claim_.call("heartbeat", kb.heartbeat, ttl_seconds=TTL_SECONDS):
                claim_.call("completed", kb.complete_task, result=f"done by {worker.name}")
    slow = [claim_ for claim_, attempt in held if attempt == 1]
    if not slow:
        return
    with worker.stage(WORKING, slow[0].task_id):
        time.sleep(TTL_SECONDS * worker.random.uniform(*OVERSTAY))
    for claim_ in slow:
        if wait_for_reclaim(worker, session, claim_):
            late(worker, claim_)
        else:  # nobody healed the board: finish the task, and say so
            claim_.call("completed", kb.complete_task, result=f"late, by {worker.name}")


def wait_for_reclaim(worker: WorkerContext, session: Session, claim_: Held) -> bool:
    deadline = time.monotonic() + RECLAIM_WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            token = session.scalar(select(kb.Task.claim_lock).where(kb.Task.id == claim_.task_id))
            session.rollback()
        except DB_ERRORS:
            session.rollback()
            token = claim_.token
        if token != claim_.token:
            return True
        time.sleep(0.05)
    worker.log(
        NOT_RECLAIMED, task=claim_.task_id, run_id=claim_.run_id, seconds=RECLAIM_WAIT_SECONDS
    )
    return False


def late(worker: WorkerContext, claim_: Held) -> None:
    """The reclaimed holder's late heartbeat and completion, in random order."""
    ops = ["heartbeat", "completed"]
    worker.random.shuffle(ops)
    for op in ops:
        lost_before = claim_.lost
        if op == "heartbeat":
            ok = claim_.call("heartbeat", kb.heartbeat, ttl_seconds=TTL_SECONDS)
        else:
            ok = claim_.call("completed", kb.complete_task, result=f"late, by {worker.name}")
        fields: dict[str, Any] = {"task": claim_.task_id, "run_id": claim_.run_id, "op": op}
        if ok:
            worker.log(LATE_ACCEPTED, **fields)
        elif claim_.lost > lost_before:
            worker.log(LATE_REFUSED, **fields)


# -- invariants -------------------------------------------------------------------------


def checks(outcome: Outcome, session: Session) -> list[Check]:
    board = inv.board_violations(session)
    events = inv.load_events(session)
    runs = inv.load_runs(session)
    tasks = session.execute(select(kb.Task.id, kb.Task.status)).all()
    session.rollback()
    reclaimed_runs = {e.run_id for e in events if e.kind == "reclaimed"}
    by_reaper = sum(e["count"] for e in outcome.entries("reclaimed"))
    refused = list(outcome.entries(LATE_REFUSED))
    accepted = list(outcome.entries(LATE_ACCEPTED))
    unreclaimed = list(outcome.entries(NOT_RECLAIMED))
    lost = list(outcome.entries(CLAIM_LOST))
    outcome.numbers.update(
        {
            "reclaims": len(reclaimed_runs),
            "reclaimed_by_reaper": by_reaper,
            "reclaimed_by_claimers": len(reclaimed_runs) - by_reaper,
            "late_heartbeats_refused": sum(1 for e in refused if e["op"] == "heartbeat"),
            "late_completions_refused": sum(1 for e in refused if e["op"] == "completed"),
            "late_calls_accepted": len(accepted),
        }
    )
    late_problems = [
        f"task {e['task']}: late {e['op']} of run {e['run_id']} by {e['worker']} accepted"
        for e in accepted
    ]
    late_problems += inv.refusals_after_reclaim(lost, runs)
    if not refused:
        late_problems.append("no late call was made, so nothing was proved")
    # Completed exactly once, by a run that was not reclaimed.
    done_problems = inv.completed_once(events, [t.id for t in tasks])
    done_problems += [
        f"task {e.task_id}: completed by run {e.run_id}, which had been reclaimed"
        for e in events
        if e.kind == "completed" and e.run_id in reclaimed_runs
    ]
    return [
        Check(
            "1. leases expired and were reclaimed",
            bool(reclaimed_runs) and not unreclaimed,
            "no reclaim happened"
            if not reclaimed_runs
            else inv.sample(
                [f"task {e['task']} not reclaimed within {e['seconds']:g} s" for e in unreclaimed]
            ),
        ),
        Check(
            "2. every late heartbeat and completion after a reclaim got ClaimLost",
            not late_problems,
            inv.sample(late_problems),
        ),
        Check(
            "3. each task completed exactly once, by a claim that was not reclaimed",
            not done_problems,
            inv.sample(done_problems),
        ),
        Check(
            "4. board consistent: current_run_id iff one open run, claim_lock iff running, "
            "every ended run has an outcome",
            not board,
            inv.sample(board),
        ),
        replay_check(events, "5."),
        holder_check(events, runs, outcome, "6."),
        all_done(tasks, outcome.config.tasks, "7."),
        errors_check(outcome, "8."),
    ]
