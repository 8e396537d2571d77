"""The seed scenario: workers race to claim ready tasks, work briefly, complete them.

Each worker picks a ready task with a plain SELECT (among the first few, so workers
collide on purpose), claims it by id, sleeps the configured work time and completes it
with its fencing token, until the ready pool stays empty. The six seed invariants are
checked against the workers' logs and the database.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import exc, func, select
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import queries as q

from ..harness import DB_ERROR, Check, Config, Outcome, WorkerContext

DESCRIPTION = "workers race claim_task on the same ready tasks, then complete them"
EMPTY_POLLS_BEFORE_EXIT = 20
PICK_AMONG = 3


def setup(session: Session, config: Config) -> None:
    for i in range(config.tasks):
        kb.create_task(session, title=f"task #{i}", assignee="shared", tenant="stress")


def work(worker: WorkerContext) -> None:
    session = kb.connect(worker.config.db_url)
    pick = (
        select(q.tasks.c.id)
        .where(q.tasks.c.status == "ready", q.tasks.c.claim_lock.is_(None))
        .limit(PICK_AMONG)
    )
    empty_polls = 0
    try:
        while not worker.out_of_time() and empty_polls <= EMPTY_POLLS_BEFORE_EXIT:
            candidates = session.scalars(pick).all()
            session.rollback()  # end the read: no snapshot held between polls
            if not candidates:
                empty_polls += 1
                worker.work_pause()
                continue
            empty_polls = 0
            claim_and_complete(worker, session, worker.random.choice(candidates))
    finally:
        session.close()


def claim_and_complete(worker: WorkerContext, session: Session, task_id: int) -> None:
    try:
        task = worker.claim_task(session, task_id, claimer=worker.name)
    except (exc.DBAPIError, kb.DatabaseBusy) as error:
        session.rollback()
        worker.log(DB_ERROR, task=task_id, during="claim", error=str(error)[:300])
        return
    if task is None:
        worker.log("lost_claim_race", task=task_id)
        return
    token, run_id = task.claim_lock, task.current_run_id
    worker.log("claimed", task=task_id, run_id=run_id, claim_lock=token)
    worker.work_pause()
    try:
        kb.complete_task(
            session,
            task_id,
            claim_lock=token,
            result=f"done by {worker.name}",
            summary=f"{worker.name} finished task {task_id}",
            metadata={"worker": worker.name, "run_id": run_id},
        )
    except kb.ClaimLost as error:
        worker.log("claim_lost", task=task_id, claim_lock=token, error=str(error))
        return
    except (exc.DBAPIError, kb.DatabaseBusy) as error:
        session.rollback()
        worker.log(DB_ERROR, task=task_id, during="complete", error=str(error)[:300])
        return
    worker.log("completed", task=task_id, run_id=run_id, claim_lock=token)


# -- invariants -------------------------------------------------------------------------


def checks(outcome: Outcome, session: Session) -> list[Check]:
    claims = list(outcome.entries("claimed"))
    completions = list(outcome.entries("completed"))
    tasks = session.execute(
        select(q.tasks.c.id, q.tasks.c.status, q.tasks.c.claim_lock, q.tasks.c.current_run_id)
    ).all()
    runs = session.execute(
        select(
            q.runs.c.id, q.runs.c.task_id, q.runs.c.claim_lock, q.runs.c.ended_at, q.runs.c.outcome
        )
    ).all()
    event_kinds: Counter[str] = Counter(
        {
            kind: n
            for kind, n in session.execute(
                select(q.events.c.kind, func.count()).group_by(q.events.c.kind)
            )
        }
    )
    completed_events = Counter(
        session.scalars(select(q.events.c.task_id).where(q.events.c.kind == "completed"))
    )
    session.rollback()
    return [
        no_double_claim(claims, runs),
        completed_once_by_holder(claims, completions, completed_events, len(tasks)),
        one_run_per_claim(claims, completions, runs),
        all_done_and_released(tasks, outcome.config.tasks),
        event_counts(claims, completions, runs, event_kinds),
        no_escaped_errors(outcome),
    ]


def _sample(items: list[Any], n: int = 3) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f" … ({len(items)} in all)" if len(items) > n else "")


def no_double_claim(claims: list[dict[str, Any]], runs: Sequence[Any]) -> Check:
    by_task: dict[int, set[str]] = defaultdict(set)
    for claim in claims:
        by_task[claim["task"]].add(claim["worker"])
    doubles = [f"task {t} by {sorted(w)}" for t, w in by_task.items() if len(w) > 1]
    runs_per_task = Counter(run.task_id for run in runs)
    doubles += [f"task {t} has {n} runs" for t, n in runs_per_task.items() if n > 1]
    return Check("1. no task claimed by two workers", not doubles, _sample(doubles))


def completed_once_by_holder(
    claims: list[dict[str, Any]],
    completions: list[dict[str, Any]],
    completed_events: Counter[int],
    total: int,
) -> Check:
    holder = {c["task"]: (c["worker"], c["claim_lock"]) for c in claims}
    problems = [
        f"task {c['task']} completed by {c['worker']} without holding its claim"
        for c in completions
        if holder.get(c["task"]) != (c["worker"], c["claim_lock"])
    ]
    logged = Counter(c["task"] for c in completions)
    problems += [f"task {t} completed {n} times (logs)" for t, n in logged.items() if n > 1]
    problems += [f"task {t}: {n} completed events" for t, n in completed_events.items() if n > 1]
    if len(completed_events) != total:
        problems.append(f"{len(completed_events)} tasks have a completed event, not {total}")
    return Check(
        "2. each task completed once, by its claim holder", not problems, _sample(problems)
    )


def one_run_per_claim(
    claims: list[dict[str, Any]], completions: list[dict[str, Any]], runs: Sequence[Any]
) -> Check:
    problems = []
    if len(runs) != len(claims):
        problems.append(f"{len(runs)} runs for {len(claims)} claims")
    logged_runs = {c["run_id"] for c in claims}
    problems += [f"run {r.id} was never logged as claimed" for r in runs if r.id not in logged_runs]
    problems += [
        f"run {r.id} (task {r.task_id}) ended={r.ended_at} outcome={r.outcome}"
        for r in runs
        if r.ended_at is None or r.outcome != "completed"
    ]
    if len(completions) != len(claims):
        problems.append(f"{len(completions)} completions for {len(claims)} claims")
    return Check("3. one run per claim, closed by its completion", not problems, _sample(problems))


def all_done_and_released(tasks: Sequence[Any], expected: int) -> Check:
    problems = [
        f"task {t.id} status={t.status} claim_lock={t.claim_lock} current_run_id={t.current_run_id}"
        for t in tasks
        if t.status != "done" or t.claim_lock is not None or t.current_run_id is not None
    ]
    if len(tasks) != expected:
        problems.append(f"{len(tasks)} tasks on the board, {expected} seeded")
    return Check(
        "4. every task done, claim_lock and current_run_id NULL", not problems, _sample(problems)
    )


def event_counts(
    claims: list[dict[str, Any]],
    completions: list[dict[str, Any]],
    runs: Sequence[Any],
    kinds: Counter[str],
) -> Check:
    numbers = {
        "runs": len(runs),
        "claims logged": len(claims),
        "completions logged": len(completions),
        "claimed events": kinds["claimed"],
        "completed events": kinds["completed"],
    }
    ok = len(set(numbers.values())) == 1
    detail = ", ".join(f"{k} {v}" for k, v in numbers.items())
    return Check("5. runs == claims == completions == events", ok, "" if ok else detail)


def no_escaped_errors(outcome: Outcome) -> Check:
    errors = list(outcome.entries(DB_ERROR)) + list(outcome.entries("claim_lost"))
    details = [
        f"{e['worker']} {e['kind']} on task {e['task']}: {e.get('error', '')}" for e in errors
    ]
    details += outcome.casualties
    return Check(
        "6. zero lock errors escaped; every worker finished", not details, _sample(details, 2)
    )
