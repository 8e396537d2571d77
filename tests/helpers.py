"""Helpers shared by tests: snapshots of the kanban tables, to prove "nothing written";
the board-invariant checker is the stress suite's own (stress/invariants.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.models import Task, TaskComment, TaskEvent, TaskLink, TaskRun
from stress.invariants import board_violations

__all__ = ["board_violations", "reaping", "snapshot"]


def snapshot(session: Session) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every kanban table, in a comparable form; ends the read transaction."""
    tables = {}
    for model in (Task, TaskRun, TaskEvent, TaskLink, TaskComment):
        table = model.__table__
        rows = session.execute(select(table).order_by(*table.primary_key.columns)).all()
        tables[table.name] = [tuple(row) for row in rows]
    session.rollback()
    return tables


@contextmanager
def reaping(db_url: str) -> Iterator[list[int]]:
    """A reaper calling release_stale_claims every 0.1 s while the block runs, as a
    worker's peers would; yields the list of what each call reclaimed."""
    reclaimed: list[int] = []
    stop = threading.Event()

    def reaper() -> None:
        s = kb.connect(db_url)
        try:
            while not stop.wait(0.1):
                reclaimed.append(kb.release_stale_claims(s))
        finally:
            s.close()

    thread = threading.Thread(target=reaper, daemon=True)
    thread.start()
    try:
        yield reclaimed
    finally:
        stop.set()
        thread.join()
