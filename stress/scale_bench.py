"""Do the board's reads and claims stay flat as finished history grows?

    python -m stress.scale_bench --db URL --empty-db URL [--tasks N] [--repeat R] [--reuse]

Times, on the same live board (``LIVE`` ready tasks) in two databases, one with no
history and one with N finished tasks (each with a closed run and three events:
created, claimed, completed), the two taking turns for every sample:
``claim_next`` + ``complete_task``, ``board_cards(per_column=50)``, ``board_stats``,
``list_tasks`` (the first page, and the first page of the ready column) and tailing
(``list_events`` after a cursor at the head of the log). Prints one table, medians in ms.

The history is written with bulk ``INSERT ... SELECT`` from a cross join of a numbers
table (portable SQL, no API calls), so a million tasks and three million events take
seconds to minutes instead of hours. ``--reuse`` keeps the history an earlier run seeded
in ``--db`` (it has at least N done tasks).

Both databases' kanban tables are emptied first: point them at scratch databases.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.models import Task, TaskEvent, TaskRun

from .prune_bench import empty

#: Ready tasks on the live board each side is timed with.
LIVE = 60
#: Rows per bulk statement (and per transaction): bounded, so no backend holds one
#: transaction's undo for the whole history.
ROWS_PER_STATEMENT = 100_000
WIDTH = 1_000  # the numbers table's inner side: task id = outer * WIDTH + inner + 1
START = datetime(2025, 1, 1)
EVENT_KINDS = ("created", "claimed", "completed")

_numbers = sa.Table(
    "scale_bench_numbers",
    sa.MetaData(),
    sa.Column("i", sa.Integer, primary_key=True, autoincrement=False),  # MySQL: 0 is 0
    sa.Column("at", sa.DateTime),
)


def seed_history(engine: sa.Engine, count: int) -> None:
    """``count`` done tasks with ids 1..count, each with a run and three events."""
    outer = -(-count // WIDTH)
    with engine.begin() as conn:
        _numbers.drop(conn, checkfirst=True)
        _numbers.create(conn)
        # One minute per WIDTH tasks: the done column's order has many distinct times.
        rows = [{"i": i, "at": START + timedelta(minutes=i)} for i in range(max(outer, WIDTH))]
        conn.execute(_numbers.insert(), rows)
    try:
        step = max(1, ROWS_PER_STATEMENT // WIDTH)
        for low in range(0, outer, step):
            with engine.begin() as conn:
                _insert_slice(conn, count, low, min(low + step, outer))
    finally:
        with engine.begin() as conn:
            _numbers.drop(conn)
    _after_bulk_load(engine)


def _insert_slice(conn: sa.Connection, count: int, low: int, high: int) -> None:
    a, b = _numbers.alias("a"), _numbers.alias("b")
    task_id = (a.c.i * WIDTH + b.c.i + 1).label("id")
    source = (
        sa.select(task_id, a.c.at)
        .select_from(a.join(b, sa.true()))
        .where(a.c.i >= low, a.c.i < high, b.c.i < WIDTH, task_id <= count)
        .subquery()
    )
    tasks: Any = Task.__table__
    runs: Any = TaskRun.__table__
    events: Any = TaskEvent.__table__
    conn.execute(
        tasks.insert().from_select(
            ["id", "title", "status", "priority", "version", "attempts",
             "created_at", "updated_at", "started_at", "completed_at"],
            sa.select(source.c.id, sa.literal("history"), sa.literal("done"), sa.literal(0),
                      sa.literal(3), sa.literal(1), source.c.at, source.c.at, source.c.at,
                      source.c.at),
        )
    )  # fmt: skip
    conn.execute(
        runs.insert().from_select(
            ["id", "task_id", "attempt", "claimer", "claim_lock", "started_at", "ended_at",
             "outcome"],
            sa.select(source.c.id, source.c.id, sa.literal(1), sa.literal("bench"),
                      sa.literal("x" * 32), source.c.at, source.c.at, sa.literal("completed")),
        )
    )  # fmt: skip
    for kind in EVENT_KINDS:
        run_id = sa.null() if kind == "created" else source.c.id
        conn.execute(
            events.insert().from_select(
                ["task_id", "run_id", "kind", "created_at"],
                sa.select(source.c.id, run_id, sa.literal(kind), source.c.at),
            )
        )


def _after_bulk_load(engine: sa.Engine) -> None:
    """Move PostgreSQL's id sequences past the explicit ids, and refresh the planner
    statistics PostgreSQL's autovacuum and InnoDB keep up to date on a board that grew."""
    name = engine.dialect.name
    with engine.begin() as conn:
        if name == "postgresql":
            for table in ("kanban_tasks", "kanban_task_runs"):
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                    f" (SELECT max(id) FROM {table}))"
                )
    if name == "postgresql":
        # VACUUM cannot run in a transaction; it also sets the visibility map that
        # index-only scans need.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    elif name != "sqlite":  # SQLite keeps no statistics unless told (see docs/bench.md)
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE TABLE kanban_tasks, kanban_task_runs, kanban_task_events")


def add_live_board(session: Session, claims: int) -> None:
    """The live work both sides are timed with, and ``claims`` tasks to claim (at a
    lower priority: the board's first cards stay the same while they are claimed)."""
    for i in range(LIVE):
        kb.create_task(session, title=f"live {i}", priority=i % 3)
    for i in range(claims):
        kb.create_task(session, title=f"claimed {i}", priority=-1)


def drop_live_board(engine: sa.Engine, history: int) -> None:
    """Remove what an earlier run added above the seeded history (``--reuse``)."""
    with engine.begin() as conn:
        for model in (TaskEvent, TaskRun):
            table: Any = model.__table__
            conn.execute(table.delete().where(table.c.task_id > history))
        tasks: Any = Task.__table__
        conn.execute(tasks.delete().where(tasks.c.id > history))


def claim_and_complete(session: Session) -> None:
    task = kb.claim_next(session, claimer="bench")
    assert task is not None
    kb.complete_task(session, task.id, claim_lock=task.claim_lock)


def head_of_log(session: Session) -> int:
    head = int(session.execute(sa.select(sa.func.max(TaskEvent.id))).scalar() or 0)
    session.rollback()
    return head


def operations(session: Session) -> dict[str, Callable[[], Any]]:
    cursor = max(0, head_of_log(session) - 5)
    return {
        "board_cards(per_column=50)": lambda: kb.board_cards(session, per_column=50),
        "board_stats()": lambda: kb.board_stats(session),
        "list_tasks(limit=50)": lambda: kb.list_tasks(session, limit=50),
        "list_tasks(status=ready, limit=50)": lambda: kb.list_tasks(
            session, status="ready", limit=50
        ),
        "list_events(after_id=head-5)": lambda: kb.list_events(session, after_id=cursor),
        "claim_next + complete_task": lambda: claim_and_complete(session),
    }


def interleaved(
    empty_ops: dict[str, Callable[[], Any]], full_ops: dict[str, Callable[[], Any]], repeat: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median ms of each operation on each board, the two boards taking turns: on a
    shared machine a load that comes and goes then weighs on both sides alike."""
    empty_ms: dict[str, list[float]] = {name: [] for name in empty_ops}
    full_ms: dict[str, list[float]] = {name: [] for name in full_ops}
    for _ in range(repeat):
        for name in empty_ops:
            for ops, times in ((empty_ops, empty_ms), (full_ops, full_ms)):
                started = time.perf_counter()
                ops[name]()
                times[name].append((time.perf_counter() - started) * 1000)
    return (
        {name: statistics.median(times) for name, times in empty_ms.items()},
        {name: statistics.median(times) for name, times in full_ms.items()},
    )


def table(backend: str, history: int, empty_ms: dict[str, float], full: dict[str, float]) -> str:
    lines = [
        f"{backend}: {history:,} finished tasks, {3 * history:,} events (median ms)",
        f"| {'operation':<36} | {'empty':>9} | {'history':>9} | {'ratio':>6} |",
        f"| {'-' * 36} | {'-' * 8}: | {'-' * 8}: | {'-' * 5}: |",
    ]
    for name, value in full.items():
        base = empty_ms[name]
        lines.append(f"| {name:<36} | {base:9.2f} | {value:9.2f} | {value / base:6.2f} |")
    return "\n".join(lines)


def seeded_history(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        done = sa.select(sa.func.count()).select_from(Task).where(Task.status == "done")
        return int(conn.execute(done).scalar_one())


def prepare(url: str, history: int, reuse: bool, claims: int) -> tuple[sa.Engine, Session]:
    engine = kb.create_engine(url)
    kb.upgrade(engine)
    if history and reuse and seeded_history(engine) >= history:
        drop_live_board(engine, history)
    else:
        empty(engine)
        if history:
            started = time.perf_counter()
            seed_history(engine, history)
            print(f"seeded {history:,} tasks in {time.perf_counter() - started:.0f}s")
    session = kb.session_factory(engine)()
    kb.refresh_counts(session)  # where prune or the housekeeper leave the tallies
    add_live_board(session, claims)
    return engine, session


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stress.scale_bench")
    parser.add_argument("--db", required=True, help="scratch database for the history")
    parser.add_argument("--empty-db", required=True, help="scratch database for the baseline")
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=100, help="runs per operation and side")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the history an earlier run seeded in --db"
    )
    args = parser.parse_args(argv)
    baseline, empty_session = prepare(args.empty_db, 0, False, args.repeat)
    full, full_session = prepare(args.db, args.tasks, args.reuse, args.repeat)
    empty_ms, full_ms = interleaved(
        operations(empty_session), operations(full_session), args.repeat
    )
    print(table(full.dialect.name, args.tasks, empty_ms, full_ms))
    for session, engine in ((empty_session, baseline), (full_session, full)):
        session.close()
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
