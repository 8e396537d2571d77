"""Helpers shared by tests: snapshots of the kanban tables, to prove "nothing written"."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kanban_orm.models import Task, TaskComment, TaskEvent, TaskLink, TaskRun


def snapshot(session: Session) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every kanban table, in a comparable form; ends the read transaction."""
    tables = {}
    for model in (Task, TaskRun, TaskEvent, TaskLink, TaskComment):
        table = model.__table__
        rows = session.execute(select(table).order_by(*table.primary_key.columns)).all()
        tables[table.name] = [tuple(row) for row in rows]
    session.rollback()
    return tables


def board_violations(session: Session) -> list[str]:
    """Every way the board breaks the schema's invariants; empty when it is consistent.

    current_run_id is set iff the task is running and names its one open run; claim_lock
    is set iff running and equals that run's token; a run has ended_at iff it has an
    outcome; every run has one ``claimed`` event; a done task has one ``completed`` event
    more than it has been reopened.
    """
    problems: list[str] = []
    tasks = {t.id: t for t in session.scalars(select(Task))}
    runs = list(session.scalars(select(TaskRun)))
    events = list(session.scalars(select(TaskEvent)))
    open_runs: dict[int, list[TaskRun]] = {}
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
    for task in tasks.values():
        kinds = [e.kind for e in events if e.task_id == task.id]
        if task.status == "done" and kinds.count("completed") != 1 + kinds.count("reopened"):
            problems.append(f"task {task.id}: done with events {kinds}")
    session.rollback()
    return problems
