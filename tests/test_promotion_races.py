"""Promotion under real concurrency: no child is left waiting for a parent that is done.

On PostgreSQL each statement sees only what had committed when it began, so these races
are real there (queries.LOCK_WAITING_CHILDREN explains the locking that closes them);
on SQLite they prove the same outcome under its one-writer-at-a-time rule.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

import kanban_orm as kb

from . import workers

SPAWN = mp.get_context("spawn")
ROUNDS = 30


def run_pair(jobs: list[tuple[Callable[..., None], tuple[Any, ...]]]) -> None:
    barrier = SPAWN.Barrier(len(jobs))
    procs = [SPAWN.Process(target=fn, args=(*args[:-1], barrier, args[-1])) for fn, args in jobs]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=180)
        assert proc.exitcode == 0


def claimed(session: Session, title: str) -> tuple[int, str]:
    task = kb.claim_task(session, kb.create_task(session, title=title), claimer="t")
    assert task is not None and task.claim_lock is not None
    return task.id, task.claim_lock


def test_two_last_parents_finishing_together_promote_their_child(
    db_url: str, session: Session, tmp_path: Path
) -> None:
    firsts, seconds, children = [], [], []
    for _ in range(ROUNDS):
        firsts.append(claimed(session, "parent a"))
        seconds.append(claimed(session, "parent b"))
        children.append(
            kb.create_task(session, title="child", parents=[firsts[-1][0], seconds[-1][0]])
        )
    run_pair(
        [
            (workers.complete_in_lockstep, (db_url, firsts, str(tmp_path / "a"))),
            (workers.complete_in_lockstep, (db_url, seconds, str(tmp_path / "b"))),
        ]
    )
    stuck = [c for c in children if kb.get_task(session, c).status != "ready"]
    assert stuck == [], f"children left waiting although both parents are done: {stuck}"


def test_a_child_created_while_its_parent_finishes_is_never_left_waiting(
    db_url: str, session: Session, tmp_path: Path
) -> None:
    parents = [claimed(session, "parent") for _ in range(ROUNDS)]
    out = tmp_path / "children"
    run_pair(
        [
            (workers.complete_in_lockstep, (db_url, parents, str(tmp_path / "a"))),
            (
                workers.create_children_in_lockstep,
                (db_url, [p for p, _ in parents], str(out)),
            ),
        ]
    )
    children = json.loads(out.read_text())
    stuck = [c for c in children if kb.get_task(session, c).status != "ready"]
    assert stuck == [], f"children left waiting for a parent that is done: {stuck}"
