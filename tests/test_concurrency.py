"""Claims are atomic across real processes on both backends."""

from __future__ import annotations

import json
import multiprocessing as mp
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.models import TaskEvent, TaskRun

from . import workers

pytestmark = pytest.mark.slow

SPAWN = mp.get_context("spawn")


def run_processes(target: Callable[..., None], args_per_process: list[tuple[Any, ...]]) -> None:
    procs = [SPAWN.Process(target=target, args=args) for args in args_per_process]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=180)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    assert [p.exitcode for p in procs] == [0] * len(procs)


def test_two_processes_race_claim_task_200_times(
    db_url: str, session: Session, tmp_path: Path
) -> None:
    rounds = 200
    task_ids = [kb.create_task(session, title=f"race {i}") for i in range(rounds)]
    barrier = SPAWN.Barrier(2)
    outs = [str(tmp_path / f"racer-{n}.json") for n in range(2)]
    run_processes(
        workers.race_claims,
        [(db_url, f"racer-{n}", task_ids, barrier, outs[n]) for n in range(2)],
    )
    results = [json.loads(Path(out).read_text()) for out in outs]

    for task_id in task_ids:
        tokens = [r[str(task_id)] for r in results]
        winners = [n for n, token in enumerate(tokens) if token is not None]
        assert len(winners) == 1, f"task {task_id}: tokens {tokens}"
        winner = winners[0]
        runs = session.scalars(select(TaskRun).where(TaskRun.task_id == task_id)).all()
        assert [(r.claimer, r.claim_lock) for r in runs] == [(f"racer-{winner}", tokens[winner])]
        claimed = session.scalar(
            select(func.count()).where(TaskEvent.task_id == task_id, TaskEvent.kind == "claimed")
        )
        assert claimed == 1
        task = kb.get_task(session, task_id)
        assert task.claim_lock == tokens[winner]
        assert task.current_run_id == runs[0].id


def test_claim_many_workers_claim_every_task_exactly_once(
    db_url: str, session: Session, tmp_path: Path
) -> None:
    task_ids = [kb.create_task(session, title=f"batch {i}", priority=i % 4) for i in range(300)]
    procs = 4
    barrier = SPAWN.Barrier(procs)
    outs = [str(tmp_path / f"drainer-{n}.json") for n in range(procs)]
    run_processes(
        workers.drain_with_claim_many,
        [(db_url, f"drainer-{n}", 7, barrier, outs[n]) for n in range(procs)],
    )
    completed = Counter(tid for out in outs for tid in json.loads(Path(out).read_text()))
    assert sorted(completed) == sorted(task_ids)
    assert set(completed.values()) == {1}
    assert [t.status for t in kb.list_tasks(session)] == ["done"] * len(task_ids)
    runs = session.execute(select(TaskRun.task_id, func.count()).group_by(TaskRun.task_id)).all()
    assert {tid: n for tid, n in runs} == dict.fromkeys(task_ids, 1)
    kinds = Counter(e.kind for e in kb.list_events(session))
    assert kinds == {"created": 300, "claimed": 300, "completed": 300}
