"""Board invariants shared by the stress scenarios and the tests: ONE checker.

``board_violations`` checks a board at rest against the schema's invariants;
``replay_violations`` replays each task's event log in id order and checks that every
transition was legal for the claim that held the task at that moment (a completion,
failure, release, block or reclaim names the run that was open; a claim finds none).

Per task, event ids are in commit order on both backends: every transition first
updates (and so locks) the task row, then inserts its event, so a later transition of
the same task waits for the earlier one's commit before it can insert its own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

import kanban_orm as kb

#: Events that close the open run when they name one.
CLOSING = ("completed", "failed", "released", "reclaimed", "blocked", "submitted")


def board_violations(session: Session) -> list[str]:
    """Every way the board breaks the schema's invariants; empty when it is consistent.

    current_run_id is set iff the task is running and names its one open run; claim_lock
    is set iff running and equals that run's token; a run has ended_at iff it has an
    outcome; every run has one ``claimed`` event; a done task has one ``completed`` event
    more than it has been reopened.
    """
    problems: list[str] = []
    tasks = {t.id: t for t in session.scalars(select(kb.Task))}
    runs = list(session.scalars(select(kb.TaskRun)))
    events = list(session.scalars(select(kb.TaskEvent)))
    open_runs: dict[int, list[kb.TaskRun]] = {}
    for run in runs:
        if (run.ended_at is None) != (run.outcome is None):
            problems.append(f"run {run.id}: ended_at={run.ended_at} outcome={run.outcome}")
        if run.ended_at is None:
            open_runs.setdefault(run.task_id, []).append(run)
    for task in tasks.values():
        running = task.status == "running"
        mine = open_runs.get(task.id, [])
        if running != (task.claim_lock is not None) or running != (task.current_run_id is not None):
            problems.append(
                f"task {task.id}: status={task.status} claim_lock={task.claim_lock} "
                f"current_run_id={task.current_run_id}"
            )
        if running and [(r.id, r.claim_lock) for r in mine] != [
            (task.current_run_id, task.claim_lock)
        ]:
            problems.append(f"task {task.id}: running on run {task.current_run_id}, open {mine}")
        if not running and mine:
            problems.append(f"task {task.id}: {task.status} with open runs {mine}")
    claimed_runs = sorted(e.run_id for e in events if e.kind == "claimed" and e.run_id)
    if claimed_runs != sorted(r.id for r in runs):
        problems.append(f"claimed events {len(claimed_runs)} != runs {len(runs)}")
    kinds_by_task: dict[int, list[str]] = defaultdict(list)
    for event in sorted(events, key=lambda e: e.id):
        kinds_by_task[event.task_id].append(event.kind)
    for task in tasks.values():
        kinds = kinds_by_task[task.id]
        if task.status == "done" and kinds.count("completed") != 1 + kinds.count("reopened"):
            problems.append(f"task {task.id}: done with events {kinds}")
    session.rollback()
    return problems


@dataclass(frozen=True)
class Event:
    """The columns of an event the replay needs."""

    id: int
    task_id: int
    run_id: int | None
    kind: str
    payload: dict[str, Any] | None


def load_events(session: Session) -> list[Event]:
    """Every event, in id order; ends the read transaction."""
    rows = session.execute(
        select(
            kb.TaskEvent.id,
            kb.TaskEvent.task_id,
            kb.TaskEvent.run_id,
            kb.TaskEvent.kind,
            kb.TaskEvent.payload,
        ).order_by(kb.TaskEvent.id)
    ).all()
    session.rollback()
    return [Event(r.id, r.task_id, r.run_id, r.kind, r.payload) for r in rows]


def replay_violations(events: Iterable[Event]) -> list[str]:
    """Replay each task's events in id order; every illegal step, one sentence each.

    A ``claimed`` event must find the task ready with no open run; ``completed``,
    ``failed``, ``released`` and ``reclaimed`` must name the run that is open (so no
    write lands from a claim that no longer holds the task); ``blocked`` names the open
    run, or none when the task was not running; ``unblocked`` finds the task blocked.
    """
    problems: list[str] = []
    status: dict[int, str] = {}
    open_run: dict[int, int | None] = {}
    for event in sorted(events, key=lambda e: e.id):
        task, run, kind = event.task_id, event.run_id, event.kind
        payload = event.payload or {}
        now, held = status.get(task), open_run.get(task)
        where = f"event {event.id} ({kind}) of task {task}"
        if kind == "created":
            status[task], open_run[task] = str(payload.get("status", "ready")), None
        elif kind == "claimed":
            if now != "ready" or held is not None:
                problems.append(f"{where}: claimed run {run} while {now}, open run {held}")
            status[task], open_run[task] = "running", run
        elif kind in CLOSING and (run is not None or kind != "blocked"):
            forced = kind == "completed" and payload.get("forced")
            if now != "running" or (run != held and not forced):
                problems.append(f"{where}: names run {run}, but the task is {now} on run {held}")
            status[task], open_run[task] = _after(kind, payload), None
        elif kind == "blocked":  # a task blocked while nobody held it
            if now == "running" or held is not None:
                problems.append(f"{where}: blocked without a run while running on run {held}")
            status[task] = "blocked"
        elif kind == "unblocked":
            if now != "blocked":
                problems.append(f"{where}: unblocked while {now}")
            status[task] = str(payload.get("status", "ready"))
    return problems


def _after(kind: str, payload: dict[str, Any]) -> str:
    fixed = {"completed": "done", "released": "ready", "blocked": "blocked", "submitted": "review"}
    return fixed.get(kind) or str(payload.get("status", "ready"))


def completed_once(events: Sequence[Event], task_ids: Iterable[int]) -> list[str]:
    """Each of ``task_ids`` has exactly one ``completed`` event."""
    counts: dict[int, int] = defaultdict(int)
    for event in events:
        if event.kind == "completed":
            counts[event.task_id] += 1
    return [f"task {t}: {counts[t]} completed events" for t in task_ids if counts[t] != 1]


def sample(items: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" … ({len(items)} in all)" if len(items) > n else "")


@dataclass(frozen=True)
class Run:
    """The columns of a run the checks need."""

    id: int
    task_id: int
    claimer: str
    claim_lock: str
    outcome: str | None


def load_runs(session: Session) -> dict[int, Run]:
    """Every run by id; ends the read transaction."""
    rows = session.execute(
        select(
            kb.TaskRun.id,
            kb.TaskRun.task_id,
            kb.TaskRun.claimer,
            kb.TaskRun.claim_lock,
            kb.TaskRun.outcome,
        )
    ).all()
    session.rollback()
    return {r.id: Run(r.id, r.task_id, r.claimer, r.claim_lock, r.outcome) for r in rows}


Entry = dict[str, Any]


def completions_by_holders(
    events: Sequence[Event],
    runs: dict[int, Run],
    claims: list[Entry],
    completions: list[Entry],
    unlogged_ok: frozenset[str] = frozenset(),
) -> list[str]:
    """Every ``completed`` event matches a completion its claimer logged with the run's
    own token (a claim that worker logged), and every logged completion has its event.

    With :func:`replay_violations` (the run named was the open one) this says no
    completion came from anyone but the current claim holder. Workers named in
    ``unlogged_ok`` (SIGKILLed ones) may have died between a commit and its log line:
    their unlogged claims and completions are excused, never a logged one without its
    event.
    """
    problems: list[str] = []
    claimed = {(c["task"], c["run_id"], c["claim_lock"], c["worker"]) for c in claims}
    logged = {(c["task"], c["run_id"], c["claim_lock"], c["worker"]) for c in completions}
    seen = set()
    for event in events:
        if event.kind != "completed":
            continue
        run = runs.get(event.run_id) if event.run_id is not None else None
        if run is None:
            problems.append(f"task {event.task_id}: completed event {event.id} names no run")
            continue
        key = (event.task_id, run.id, run.claim_lock, run.claimer)
        seen.add(key)
        if run.claimer in unlogged_ok:
            continue
        if key not in logged:
            problems.append(
                f"task {event.task_id}: run {run.id} completed, but {run.claimer} logged "
                "no completion with its token"
            )
        if key not in claimed:
            problems.append(
                f"task {event.task_id}: run {run.id} completed, but {run.claimer} logged "
                "no claim with its token"
            )
    problems += [
        f"task {t}: {w} logged completing run {r}, which has no completed event"
        for (t, r, _token, w) in logged - seen
    ]
    return problems


def refusals_after_reclaim(lost: list[Entry], runs: dict[int, Run]) -> list[str]:
    """Every ClaimLost a worker got was for a claim whose run was reclaimed."""
    by_token = {run.claim_lock: run for run in runs.values()}
    problems = []
    for entry in lost:
        run = by_token.get(entry["claim_lock"])
        if run is None or run.outcome != "reclaimed":
            outcome = None if run is None else run.outcome
            problems.append(
                f"task {entry['task']}: {entry['worker']}'s {entry['op']} refused (ClaimLost) "
                f"though its run ended {outcome}"
            )
    return problems


def event_kind_counts(events: Sequence[Event]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for event in events:
        counts[event.kind] += 1
    return dict(counts)
