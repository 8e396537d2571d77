"""What PostgreSQL's wake-up NOTIFY triggers (kb0010) cost on the write paths.

``python -m stress.notify_cost --db postgresql://.../kanban_wake_bench``: on a database
it wipes, PROCS processes first create TASKS tasks (each a transaction that moves a task
into ``ready``, so it notifies), then drain them with claim_next + complete_task. Each phase
runs with the triggers and without them (dropped, then put back), interleaved, REPEAT
times; the report is tasks per second per phase and the ratio with/without.
The ready triggers fire on creates (and promotions); claims and completions pay only
their WHEN comparison. (An events-channel trigger, once measured here at 0.8x on
claim + complete, was dropped: ``events --follow`` polls the newest event id.)
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from typing import Any

import sqlalchemy as sa

import kanban_orm as kb
from kanban_orm.models import READY_NOTIFY_DDL, READY_NOTIFY_TRIGGERS

from .harness import _wipe

_READY_DROPS = [f"DROP TRIGGER IF EXISTS {name} ON kanban_tasks" for name in READY_NOTIFY_TRIGGERS]


def _set_triggers(url: str, on: bool) -> None:
    """The wake-up triggers on, or off."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in [*_READY_DROPS, *READY_NOTIFY_DDL]:
            conn.exec_driver_sql(statement)
        if not on:
            for statement in _READY_DROPS:
                conn.exec_driver_sql(statement)
    engine.dispose()


def _create(url: str, count: int) -> None:
    session = kb.connect(url)
    for number in range(count):
        kb.create_task(session, title=f"t{number}")
    session.close()


def _drain(url: str, _count: int) -> None:
    session = kb.connect(url)
    while (task := kb.claim_next(session, claimer="bench")) is not None:
        assert task.claim_lock is not None
        kb.complete_task(session, task.id, claim_lock=task.claim_lock)
    session.close()


def _phase(url: str, target: Any, procs: int, per_proc: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=target, args=(url, per_proc)) for _ in range(procs)]
    began = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    kb.upgrade(kb.create_engine(args.db))
    rates: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.repeat):
        for on in (True, False):
            _wipe(args.db)
            _set_triggers(args.db, on)
            per_proc = args.tasks // args.procs
            total = per_proc * args.procs
            for name, target in (("create", _create), ("claim+complete", _drain)):
                seconds = _phase(args.db, target, args.procs, per_proc)
                rates.setdefault((name, on), []).append(total / seconds)
    _set_triggers(args.db, True)
    for name in ("create", "claim+complete"):
        with_, without = (statistics.median(rates[name, on]) for on in (True, False))
        print(
            f"{name:15} with NOTIFY {with_:8.0f}/s  without {without:8.0f}/s  "
            f"ratio {with_ / without:.2f}  (runs: {[round(r) for r in rates[name, True]]} vs "
            f"{[round(r) for r in rates[name, False]]})"
        )


if __name__ == "__main__":
    main()
