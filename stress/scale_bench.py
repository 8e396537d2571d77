"""Do the board's reads and claims stay flat as finished history grows?

    python -m stress.scale_bench --db URL [--tasks N] [--reuse]

Times, on the same live board (``LIVE`` ready tasks), with no history and then with N
finished tasks (each with a closed run and three events: created, claimed, completed):
``claim_next`` + ``complete_task``, ``board_cards(per_column=50)``, ``board_stats``,
``list_tasks`` (the first page, and a page of the done column) and tailing
(``list_events`` after a cursor at the head of the log). Prints one table, medians in ms.

The history is written with bulk ``INSERT ... SELECT`` from a cross join of a numbers
table (portable SQL, no API calls), so a million tasks and three million events take
seconds to minutes instead of hours. ``--reuse`` keeps a database an earlier run seeded
with at least N tasks and times only the side with history.

The database's kanban tables are emptied first: point it at a scratch database.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.models import Task, TaskEvent, TaskRun

from .prune_bench import empty, median_ms

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
    sa.Column("i", sa.Integer, primary_key=True),
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


def add_live_board(session: Session) -> None:
    """The live work both sides are timed with."""
    for i in range(LIVE):
        kb.create_task(session, title=f"live {i}", priority=i % 3)


def drop_live_board(engine: sa.Engine, history: int) -> None:
    """Remove what an earlier run added above the seeded history (``--reuse``)."""
    with engine.begin() as conn:
        for model in (TaskEvent, TaskRun):
            table: Any = model.__table__
            conn.execute(table.delete().where(table.c.task_id > history))
        tasks: Any = Task.__table__
        conn.execute(tasks.delete().where(tasks.c.id > history))


def claim_complete_ms(session: Session, repeat: int) -> float:
    for i in range(repeat):
        kb.create_task(session, title=f"claimed {i}", priority=-1)

    def one() -> None:
        task = kb.claim_next(session, claimer="bench")
        assert task is not None
        kb.complete_task(session, task.id, claim_lock=task.claim_lock)

    return median_ms(one, repeat)


def head_of_log(session: Session) -> int:
    return int(session.execute(sa.select(sa.func.max(TaskEvent.id))).scalar() or 0)


def measure(session: Session, repeat: int) -> dict[str, float]:
    """Median ms of each read (on the live board), then of claim + complete."""
    cursor = max(0, head_of_log(session) - 5)
    session.rollback()
    reads: dict[str, Callable[[], Any]] = {
        "board_cards(per_column=50)": lambda: kb.board_cards(session, per_column=50),
        "board_stats()": lambda: kb.board_stats(session),
        "list_tasks(limit=50)": lambda: kb.list_tasks(session, limit=50),
        "list_tasks(status=ready, limit=50)": lambda: kb.list_tasks(
            session, status="ready", limit=50
        ),
        "list_events(after_id=head-5)": lambda: kb.list_events(session, after_id=cursor),
    }
    timings = {name: median_ms(read, repeat) for name, read in reads.items()}
    timings["claim_next + complete_task"] = claim_complete_ms(session, max(repeat, 100))
    return timings


def table(
    backend: str, history: int, empty_ms: dict[str, float] | None, full: dict[str, float]
) -> str:
    lines = [
        f"{backend}: {history:,} finished tasks, {3 * history:,} events (median ms)",
        f"| {'operation':<36} | {'empty':>9} | {'history':>9} | {'ratio':>6} |",
        f"| {'-' * 36} | {'-' * 8}: | {'-' * 8}: | {'-' * 5}: |",
    ]
    for name, value in full.items():
        base = None if empty_ms is None else empty_ms[name]
        shown = "" if base is None else f"{base:9.2f}"
        ratio = "" if base is None else f"{value / base:6.2f}"
        lines.append(f"| {name:<36} | {shown:>9} | {value:9.2f} | {ratio:>6} |")
    return "\n".join(lines)


def seeded_history(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        done = sa.select(sa.func.count()).select_from(Task).where(Task.status == "done")
        return int(conn.execute(done).scalar_one())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stress.scale_bench")
    parser.add_argument("--db", required=True)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=30, help="runs per read timed")
    parser.add_argument(
        "--reuse", action="store_true", help="keep history an earlier run seeded; time only it"
    )
    args = parser.parse_args(argv)
    engine = kb.create_engine(args.db)
    kb.upgrade(engine)
    session = kb.session_factory(engine)()
    baseline = None
    if args.reuse and seeded_history(engine) >= args.tasks:
        drop_live_board(engine, args.tasks)
    else:
        empty(engine)
        add_live_board(session)
        baseline = measure(session, args.repeat)
        empty(engine)
        started = time.perf_counter()
        seed_history(engine, args.tasks)
        print(f"seeded {args.tasks:,} tasks in {time.perf_counter() - started:.0f}s")
    add_live_board(session)
    timings = measure(session, args.repeat)
    print(table(engine.dialect.name, args.tasks, baseline, timings))
    session.close()
    engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
