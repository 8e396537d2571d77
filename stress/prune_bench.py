"""Prune throughput, and how claims and the board fare as finished history grows.

    python -m stress.prune_bench --db URL [--tasks N] [--batch B] [--scale]

Seeds N finished tasks (each with one closed run and two events: what a claim and a
completion leave behind) with bulk inserts, then:

* ``--scale``: times ``claim_next`` + ``complete_task`` and ``board_cards`` on the board
  with that history, against the same on an empty board;
* always: times ``kb.prune(done_before=0)`` removing all of it, and prints rows removed
  per second.

The database's kanban tables are emptied first: point it at a scratch database.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

import kanban_orm as kb
from kanban_orm.models import Task, TaskEvent, TaskRun

from .harness import wipe_rows

CHUNK = 5_000


def empty(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        wipe_rows(conn)


def seed(engine: sa.Engine, count: int) -> None:
    """``count`` done tasks, finished a day ago, each with a run and two events."""
    start = datetime(2026, 1, 1)
    with engine.begin() as conn:
        first = conn.execute(sa.select(sa.func.coalesce(sa.func.max(Task.id), 0))).scalar_one()
    for base in range(0, count, CHUNK):
        ids = range(first + base + 1, first + min(base + CHUNK, count) + 1)
        when = [start + timedelta(seconds=i) for i in ids]
        with engine.begin() as conn:
            conn.execute(
                sa.insert(Task),
                [{"id": i, "title": f"t{i}", "status": "done", "priority": 0, "version": 3,
                  "attempts": 1, "created_at": w, "updated_at": w, "completed_at": w}
                 for i, w in zip(ids, when, strict=True)],
            )  # fmt: skip
            conn.execute(
                sa.insert(TaskRun),
                [{"id": i, "task_id": i, "attempt": 1, "claimer": "bench", "claim_lock": "x" * 32,
                  "started_at": w, "ended_at": w, "outcome": "completed"}
                 for i, w in zip(ids, when, strict=True)],
            )  # fmt: skip
            conn.execute(
                sa.insert(TaskEvent),
                [{"task_id": i, "run_id": i, "kind": kind, "payload": None, "created_at": w}
                 for i, w in zip(ids, when, strict=True) for kind in ("claimed", "completed")],
            )  # fmt: skip
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for table in ("kanban_tasks", "kanban_task_runs"):
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                    f" (SELECT max(id) FROM {table}))"
                )
            conn.exec_driver_sql("ANALYZE")


def median_ms(work: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def claim_complete_ms(session: Any, repeat: int = 200) -> float:
    ids = [kb.create_task(session, title=f"live {i}") for i in range(repeat)]

    def one() -> None:
        task = kb.claim_next(session, claimer="bench")
        assert task is not None
        kb.complete_task(session, task.id, claim_lock=task.claim_lock)

    result = median_ms(one, len(ids))
    return result


def board_ms(session: Any) -> float:
    return median_ms(lambda: kb.board_cards(session, per_column=50), 20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stress.prune_bench")
    parser.add_argument("--db", required=True)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=kb.maintenance.DEFAULT_BATCH)
    parser.add_argument("--scale", action="store_true")
    args = parser.parse_args(argv)
    engine = kb.create_engine(args.db)
    kb.upgrade(engine)
    session = kb.session_factory(engine)()
    empty(engine)
    if args.scale:
        base_claim, base_board = claim_complete_ms(session), board_ms(session)
        empty(engine)
    started = time.perf_counter()
    seed(engine, args.tasks)
    print(f"seeded {args.tasks:,} done tasks in {time.perf_counter() - started:.1f}s")
    if args.scale:
        claim, board = claim_complete_ms(session), board_ms(session)
        print(f"claim_next+complete_task median: empty {base_claim:.2f} ms,"
              f" with history {claim:.2f} ms ({claim / base_claim:.2f}x)")  # fmt: skip
        print(f"board_cards(per_column=50) median: empty {base_board:.2f} ms,"
              f" with history {board:.2f} ms")  # fmt: skip
    started = time.perf_counter()
    result = kb.prune(session, done_before=timedelta(0), batch=args.batch)
    spent = time.perf_counter() - started
    rows = sum(result.removed().values())
    print(f"{engine.dialect.name}: prune removed {rows:,} rows ({result.removed()}) in"
          f" {result.batches} batches, {spent:.1f}s: {rows / spent:,.0f} rows/s")  # fmt: skip
    session.close()
    engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
