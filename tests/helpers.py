"""Helpers shared by tests: snapshots of the kanban tables, to prove "nothing written";
the board-invariant checker is the stress suite's own (stress/invariants.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kanban_orm.models import Task, TaskComment, TaskEvent, TaskLink, TaskRun
from stress.invariants import board_violations

__all__ = ["board_violations", "snapshot"]


def snapshot(session: Session) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every kanban table, in a comparable form; ends the read transaction."""
    tables = {}
    for model in (Task, TaskRun, TaskEvent, TaskLink, TaskComment):
        table = model.__table__
        rows = session.execute(select(table).order_by(*table.primary_key.columns)).all()
        tables[table.name] = [tuple(row) for row in rows]
    session.rollback()
    return tables
