"""The seed scenario: workers race to claim ready tasks, work briefly, complete them.

Each worker picks a ready task with a plain SELECT (among the first few, so workers
collide on purpose), claims it by id, sleeps the configured work time and completes it
with its fencing token, until the ready pool stays empty. The six seed invariants are
checked against the workers' logs and the database.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

import kanban_orm as kb

from ..harness import DB_ERROR, DB_ERRORS, Check, Config, Outcome, WorkerContext, one_line

DESCRIPTION = "workers race claim_task on the same ready tasks, then complete them"
#: The seed's exit rule: the ready pool must stay empty this many polls in a row.
EMPTY_POLLS_BEFORE_EXIT = 20
#: Candidates a worker picks among: few enough that workers collide (lost races are
#: the point), more than one so they do not all march in lockstep on the same id.
PICK_AMONG = 3
#: Log kinds: a claim taken away before completion, and any other kernel error.
CLAIM_LOST, KANBAN_ERROR = "claim_lost", "kanban_error"


def setup(session: Session, config: Config) -> None:
    for i in range(config.tasks):
        kb.create_task(session, title=f"task #{i}", assignee="shared", tenant="stress")


#: Runs on kanban_orm.aio too (``--api async``): see work_async.
ASYNC = True


def work(worker: WorkerContext) -> None:
    if worker.config.api == "async":
        asyncio.run(work_async(worker))
        return
    session = kb.connect(worker.config.db_url)
    pick = (
        select(kb.Task.id)
        .where(kb.Task.status == kb.Status.READY.value, kb.Task.claim_lock.is_(None))
        .limit(PICK_AMONG)
    )
    empty_polls = 0
    try:
        while not worker.out_of_time() and empty_polls <= EMPTY_POLLS_BEFORE_EXIT:
            try:
                candidates = session.scalars(pick).all()
            except DB_ERRORS as error:
                worker.log(DB_ERROR, task=None, during="pick of a task", error=one_line(error))
                candidates = []
            finally:
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
    except DB_ERRORS as error:
        session.rollback()
        worker.log(DB_ERROR, task=task_id, during="claim", error=one_line(error))
        return
    except kb.KanbanError as error:  # claim_task answers contention with None, not this
        session.rollback()
        worker.log(KANBAN_ERROR, task=task_id, during="claim", error=one_line(error))
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
    except kb.ClaimLost as error:  # nobody reclaims in this scenario: always a finding
        session.rollback()
        worker.log(CLAIM_LOST, task=task_id, claim_lock=token, error=one_line(error))
        return
    except DB_ERRORS as error:
        session.rollback()
        worker.log(DB_ERROR, task=task_id, during="complete", error=one_line(error))
        return
    except kb.KanbanError as error:
        session.rollback()
        worker.log(KANBAN_ERROR, task=task_id, during="complete", error=one_line(error))
        return
    worker.log("completed", task=task_id, run_id=run_id, claim_lock=token)


# -- the same worker on kanban_orm.aio --------------------------------------------------


async def work_async(worker: WorkerContext) -> None:
    """:func:`work`, awaiting kanban_orm.aio on the async drivers; the same log, so the
    same checks judge it."""
    from kanban_orm import aio

    engine = aio.create_engine(worker.config.db_url)
    pick = (
        select(kb.Task.id)
        .where(kb.Task.status == kb.Status.READY.value, kb.Task.claim_lock.is_(None))
        .limit(PICK_AMONG)
    )
    empty_polls = 0
    try:
        async with aio.session_factory(engine)() as session:
            while not worker.out_of_time() and empty_polls <= EMPTY_POLLS_BEFORE_EXIT:
                try:
                    candidates = (await session.scalars(pick)).all()
                except DB_ERRORS as error:
                    worker.log(DB_ERROR, task=None, during="pick of a task", error=one_line(error))
                    candidates = []
                finally:
                    await session.rollback()
                if not candidates:
                    empty_polls += 1
                    await asyncio.sleep(worker.work_seconds())
                    continue
                empty_polls = 0
                task_id = worker.random.choice(candidates)
                await claim_and_complete_async(worker, session, task_id)
    finally:
        await engine.dispose()


async def claim_and_complete_async(worker: WorkerContext, session: Any, task_id: int) -> None:
    from kanban_orm import aio

    try:
        task = await aio.claim_task(session, task_id, claimer=worker.name)
    except DB_ERRORS as error:
        worker.log(DB_ERROR, task=task_id, during="claim", error=one_line(error))
        return
    except kb.KanbanError as error:
        worker.log(KANBAN_ERROR, task=task_id, during="claim", error=one_line(error))
        return
    if task is None:
        worker.log("lost_claim_race", task=task_id)
        return
    token, run_id = task.claim_lock, task.current_run_id
    worker.log("claimed", task=task_id, run_id=run_id, claim_lock=token)
    await asyncio.sleep(worker.work_seconds())
    try:
        await aio.complete_task(
            session,
            task_id,
            claim_lock=token,
            result=f"done by {worker.name}",
            summary=f"{worker.name} finished task {task_id}",
            metadata={"worker": worker.name, "run_id": run_id},
        )
    except kb.ClaimLost as error:
        worker.log(CLAIM_LOST, task=task_id, claim_lock=token, error=one_line(error))
        return
    except DB_ERRORS as error:
        worker.log(DB_ERROR, task=task_id, during="complete", error=one_line(error))
        return
    except kb.KanbanError as error:
        worker.log(KANBAN_ERROR, task=task_id, during="complete", error=one_line(error))
        return
    worker.log("completed", task=task_id, run_id=run_id, claim_lock=token)


# -- invariants -------------------------------------------------------------------------

Entry = dict[str, Any]


def checks(outcome: Outcome, session: Session) -> list[Check]:
    claims = list(outcome.entries("claimed"))
    completions = list(outcome.entries("completed"))
    tasks = session.execute(
        select(kb.Task.id, kb.Task.status, kb.Task.claim_lock, kb.Task.current_run_id)
    ).all()
    runs = session.execute(
        select(
            kb.TaskRun.id,
            kb.TaskRun.task_id,
            kb.TaskRun.claimer,
            kb.TaskRun.claim_lock,
            kb.TaskRun.ended_at,
            kb.TaskRun.outcome,
        )
    ).all()
    events = session.execute(
        select(kb.TaskEvent.kind, kb.TaskEvent.task_id, func.count()).group_by(
            kb.TaskEvent.kind, kb.TaskEvent.task_id
        )
    ).all()
    session.rollback()
    claimed_events = Counter({task_id: n for kind, task_id, n in events if kind == "claimed"})
    completed_events = Counter({task_id: n for kind, task_id, n in events if kind == "completed"})
    return [
        no_double_claim(claims, runs, claimed_events),
        completed_once_by_holder(
            claims, completions, list(outcome.entries(CLAIM_LOST)), completed_events, len(tasks)
        ),
        one_run_per_claim(claims, completions, runs),
        all_done_and_released(tasks, outcome.config.tasks),
        event_counts(claims, completions, runs, claimed_events, completed_events),
        no_escaped_errors(outcome),
    ]


def _sample(items: list[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" … ({len(items)} in all)" if len(items) > n else "")


def no_double_claim(
    claims: list[Entry], runs: Sequence[Any], claimed_events: Counter[int]
) -> Check:
    """Logs: each task claimed once (nobody releases here, so twice is one too many).
    Database: one run and one ``claimed`` event per task."""
    by_task: dict[int, list[str]] = defaultdict(list)
    for claim in claims:
        by_task[claim["task"]].append(claim["worker"])
    doubles = [f"task {t} by {sorted(w)}" for t, w in by_task.items() if len(w) > 1]
    runs_per_task = Counter(run.task_id for run in runs)
    doubles += [f"task {t} has {n} runs" for t, n in runs_per_task.items() if n > 1]
    doubles += [f"task {t} has {n} claimed events" for t, n in claimed_events.items() if n > 1]
    return Check("1. no task claimed by two workers", not doubles, _sample(doubles))


def completed_once_by_holder(
    claims: list[Entry],
    completions: list[Entry],
    lost: list[Entry],
    completed_events: Counter[int],
    total: int,
) -> Check:
    """Every completion matches a claim by the same worker with the same fencing token,
    no holder had its claim refused (ClaimLost), and each task completed exactly once."""
    held = {(c["task"], c["worker"], c["claim_lock"]) for c in claims}
    problems = [
        f"task {c['task']} completed by {c['worker']} without holding its claim"
        for c in completions
        if (c["task"], c["worker"], c["claim_lock"]) not in held
    ]
    problems += [f"task {e['task']}: {e['worker']}'s completion refused (ClaimLost)" for e in lost]
    logged = Counter(c["task"] for c in completions)
    problems += [f"task {t} completed {n} times (logs)" for t, n in logged.items() if n > 1]
    problems += [f"task {t}: {n} completed events" for t, n in completed_events.items() if n > 1]
    if len(completed_events) != total:
        problems.append(f"{len(completed_events)} tasks have a completed event, not {total}")
    return Check(
        "2. each task completed once, by its claim holder", not problems, _sample(problems)
    )


def one_run_per_claim(claims: list[Entry], completions: list[Entry], runs: Sequence[Any]) -> Check:
    """Each logged claim made exactly one run (matched by fencing token and claimer),
    and every run is closed with outcome ``completed``."""
    problems = []
    if len(runs) != len(claims):
        problems.append(f"{len(runs)} runs for {len(claims)} claims")
    logged = {(c["run_id"], c["claim_lock"], c["worker"]) for c in claims}
    problems += [
        f"run {r.id} (task {r.task_id}, {r.claimer}) matches no logged claim"
        for r in runs
        if (r.id, r.claim_lock, r.claimer) not in logged
    ]
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
        if t.status != kb.Status.DONE.value
        or t.claim_lock is not None
        or t.current_run_id is not None
    ]
    if len(tasks) != expected:
        problems.append(f"{len(tasks)} tasks on the board, {expected} seeded")
    return Check(
        "4. every task done, claim_lock and current_run_id NULL", not problems, _sample(problems)
    )


def event_counts(
    claims: list[Entry],
    completions: list[Entry],
    runs: Sequence[Any],
    claimed_events: Counter[int],
    completed_events: Counter[int],
) -> Check:
    numbers = {
        "runs": len(runs),
        "claims logged": len(claims),
        "completions logged": len(completions),
        "claimed events": claimed_events.total(),
        "completed events": completed_events.total(),
    }
    ok = len(set(numbers.values())) == 1
    detail = ", ".join(f"{k} {v}" for k, v in numbers.items())
    return Check("5. runs == claims == completions == events", ok, "" if ok else detail)


def no_escaped_errors(outcome: Outcome) -> Check:
    """No database error reached a worker, and every worker ended cleanly.

    Casualties come first and are all shown: a report must name every dead worker.
    """
    errors = [
        f"{e['worker']} {e['kind']} during {e['during']}"
        + (f" of task {e['task']}" if e["task"] is not None else "")
        + f": {e['error']}"
        for e in outcome.entries()
        if e["kind"] in (DB_ERROR, KANBAN_ERROR)
    ]
    detail = "; ".join([*outcome.casualties, _sample(errors, 2)] if errors else outcome.casualties)
    return Check(
        "6. zero lock errors escaped; every worker finished",
        not errors and not outcome.casualties,
        detail,
    )
