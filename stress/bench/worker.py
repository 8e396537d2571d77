"""The Worker rows and the lean SQLite kernel.

``kb-worker``: what users run, ``kb.Worker`` with a no-op handler, one slot per
process, draining the board; ``kb-worker-prefetch``: the same with ``prefetch`` (batches
claimed, their completions committed together). ``kb-worker-10ms``: a handler that
sleeps 10 ms, 8 slots per process. Each counts what its handler saw, and is judged like
the API rows (kanban.verify).

``lean`` (SQLite): the ceiling for any design on SQLite, the raw loop's transactions on
a minimal schema: tasks with one index on (status, priority, id), runs and events with
no secondary index and no foreign key; BEGIN IMMEDIATE, WAL, synchronous=NORMAL. Its
tables carry the kernel's table and column names, so the kernel's verify reads them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from typing import Any

import kanban_orm as kb

from .core import Loop, Target
from .kanban import (
    _COMPLETED_PAYLOAD,
    _NULL_JSON,
    _SQLITE_NOW,
    SQLITE_COMPLETE,
    SQLITE_EVENT,
    TTL_SECONDS,
    sqlite_raw_loop,
)

#: What the prefetching no-op row asks for: batches of 10, as kb-many10 claims.
PREFETCH = 9

#: The 10 ms handler's slots per process.
SLOW_CONCURRENCY = 8
SLOW_HANDLER_SECONDS = 0.010


def worker_consumer(
    target: Target, index: int, concurrency: int, pause: float, prefetch: int = 0
) -> Loop:
    """A kb.Worker draining the board; the loop returns the ids its handler was given."""
    warm = kb.connect(target.url)
    kb.board_stats(warm)  # the engine, its pool and a connection, before the clock runs
    warm.close()
    seen: list[int] = []
    lock = threading.Lock()

    def handler(task: kb.Task) -> None:
        if pause:
            time.sleep(pause)
        with lock:
            seen.append(task.id)

    # prefetch only when asked for: a Worker from before it existed can run this too.
    extra: dict[str, Any] = {"prefetch": prefetch} if prefetch else {}
    worker = kb.Worker(
        handler,
        url=target.url,
        claimer=f"bench-{index}",
        concurrency=concurrency,
        ttl_seconds=TTL_SECONDS,
        drain=True,
        **extra,
    )

    def loop() -> list[int]:
        stats = worker.run()
        if stats.completed != len(seen):
            raise RuntimeError(f"the worker's stats disagree with its handler: {stats}")
        return seen

    return loop


def kb_worker_consumer(target: Target, index: int, quota: int) -> Loop:
    return worker_consumer(target, index, 1, 0.0)


def kb_worker_prefetch_consumer(target: Target, index: int, quota: int) -> Loop:
    return worker_consumer(target, index, 1, 0.0, prefetch=PREFETCH)


def kb_worker_slow_consumer(target: Target, index: int, quota: int) -> Loop:
    return worker_consumer(target, index, SLOW_CONCURRENCY, SLOW_HANDLER_SECONDS)


# -- the lean SQLite kernel ---------------------------------------------------------------

LEAN_SCHEMA = """
CREATE TABLE kanban_tasks (
    id INTEGER PRIMARY KEY, title TEXT NOT NULL, status TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0, claim_lock TEXT, claim_expires TEXT,
    current_run_id INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 1, run_at TEXT, result TEXT, block_reason TEXT,
    created_at TEXT, updated_at TEXT, started_at TEXT, completed_at TEXT
);
CREATE INDEX lean_claim_order ON kanban_tasks (status, priority DESC, id);
CREATE TABLE kanban_task_runs (
    id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL, attempt INTEGER NOT NULL,
    claimer TEXT, claim_lock TEXT, started_at TEXT, last_heartbeat_at TEXT,
    ended_at TEXT, outcome TEXT, summary TEXT, metadata TEXT, error TEXT
);
CREATE TABLE kanban_task_events (
    id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL, run_id INTEGER,
    kind TEXT NOT NULL, payload TEXT, created_at TEXT
);
"""

#: The raw loop's completion closes its run by id: without an index on the runs' task
#: id, closing it by task would scan every run. (The task's UPDATE is the raw loop's.)
LEAN_CLOSE_RUN = f"""
UPDATE kanban_task_runs SET
    ended_at = {_SQLITE_NOW}, outcome = 'completed', summary = NULL, metadata = ?, error = NULL
WHERE id = ?
"""


def lean_seed(target: Target, tasks: int) -> None:
    """The minimal schema and ``tasks`` ready tasks, each with its ``created`` event."""
    with closing(sqlite3.connect(target.sqlite_path)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(LEAN_SCHEMA)
        with conn:
            conn.executemany(
                "INSERT INTO kanban_tasks (title, status, priority, created_at, updated_at) "
                f"VALUES (?, 'ready', 0, {_SQLITE_NOW}, {_SQLITE_NOW})",
                [(f"bench task {i}",) for i in range(tasks)],
            )
            conn.execute(
                "INSERT INTO kanban_task_events (task_id, kind, payload, created_at) "
                f"SELECT id, 'created', '{{\"status\": \"ready\"}}', {_SQLITE_NOW} "
                "FROM kanban_tasks"
            )


def lean_consumer(target: Target, index: int, quota: int) -> Loop:
    def complete(c: sqlite3.Connection, task_id: int, token: str, run_id: int) -> None:
        if c.execute(SQLITE_COMPLETE, (task_id, token)).fetchone() is None:
            raise RuntimeError(f"task {task_id}: claim lost")
        c.execute(LEAN_CLOSE_RUN, (_NULL_JSON, run_id))
        c.execute(SQLITE_EVENT, (task_id, run_id, "completed", _COMPLETED_PAYLOAD))

    return sqlite_raw_loop(target, index, quota, complete)
