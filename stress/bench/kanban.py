"""kanban_orm through its public API, and the raw-driver baseline on the same tables.

Both start from the same board: the schema from ``kb.init_db`` (the shipped migrations)
and N ready tasks, each with its ``created`` event, inserted in bulk (seeding is not
timed). Both are judged the same way: a task was completed once when it is ``done`` and
has exactly one ``completed`` event.

The raw baseline is what a hand-written queue on these tables would do with the bare
driver (``sqlite3`` / ``psycopg``), no SQLAlchemy: per task one claim transaction (the
claim UPDATE picking the best ready task, the run row, ``current_run_id``, the
``claimed`` event) and one completion transaction (the fenced UPDATE to done, closing the
run, the ``completed`` event), writing the same rows the kernel writes. It is the
practical ceiling the kernel is measured against.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

import kanban_orm as kb

from .core import POSTGRES, SQLITE, Loop, Target, Verdict

TTL_SECONDS = 15 * 60.0

# -- seeding and checking (shared) ------------------------------------------------------


def seed(target: Target, tasks: int) -> None:
    """The schema by the shipped migrations, then ``tasks`` ready tasks in bulk."""
    kb.init_db(target.url)
    kb.dispose_engines()
    engine = kb.create_engine(target.url, poolclass=sa.pool.NullPool)
    task_table: sa.Table = kb.Task.__table__  # type: ignore[assignment]
    event_table: sa.Table = kb.TaskEvent.__table__  # type: ignore[assignment]
    try:
        with engine.begin() as conn:
            for first in range(0, tasks, 10_000):
                rows = [
                    {"title": f"bench task {i}", "status": kb.Status.READY.value, "priority": 0}
                    for i in range(first, min(tasks, first + 10_000))
                ]
                conn.execute(sa.insert(task_table), rows)
            created = sa.select(
                task_table.c.id,
                sa.literal("created"),
                sa.literal({"title": "bench", "status": "ready"}, event_table.c.payload.type),
            )
            conn.execute(
                sa.insert(event_table).from_select(["task_id", "kind", "payload"], created)
            )
    finally:
        engine.dispose()


def verify(target: Target) -> Verdict:
    """Completed events per task, and that the rest of the board agrees with them."""
    engine = kb.create_engine(target.url, poolclass=sa.pool.NullPool)
    tasks, runs, events = kb.Task, kb.TaskRun, kb.TaskEvent
    try:
        with engine.connect() as conn:
            counted = conn.execute(
                sa.select(events.task_id, sa.func.count())
                .where(events.kind == "completed")
                .group_by(events.task_id)
            ).all()
            by_status = dict(
                conn.execute(sa.select(tasks.status, sa.func.count()).group_by(tasks.status)).all()
            )
            closed = conn.execute(
                sa.select(sa.func.count()).where(runs.outcome == "completed")
            ).scalar_one()
            open_runs = conn.execute(
                sa.select(sa.func.count()).where(runs.ended_at.is_(None))
            ).scalar_one()
            claimed = conn.execute(
                sa.select(sa.func.count()).where(events.kind == "claimed")
            ).scalar_one()
    finally:
        engine.dispose()
    completions = {int(task_id): int(n) for task_id, n in counted}
    problems = []
    done = by_status.get(kb.Status.DONE.value, 0)
    if done != len(completions):
        problems.append(f"{done} tasks done but {len(completions)} have a completed event")
    if closed != sum(completions.values()):
        problems.append(f"{closed} runs closed as completed, {sum(completions.values())} events")
    if open_runs or by_status.get(kb.Status.RUNNING.value, 0):
        problems.append(f"{open_runs} runs still open, statuses {by_status}")
    if claimed != closed:
        problems.append(f"{claimed} claimed events but {closed} completed runs")
    return Verdict(completions, problems)


# -- kanban_orm, public API -------------------------------------------------------------


def kb_consumer(target: Target, index: int, quota: int, batch: int) -> Loop:
    """claim_next + complete_task (``batch`` 0), or claim_many(limit=batch) + one
    complete_many for the batch, as a batch worker would: on a session that keeps its
    connection (as the raw baseline keeps its own)."""
    session = kb.connect(target.url, keep_connection=True)
    kb.board_stats(session)  # warm up: engine, pool, connection set-up (a read, no task)
    claimer = f"bench-{index}"

    def loop() -> list[int]:
        done: list[int] = []
        while len(done) < quota:
            if batch:
                claimed = kb.claim_many(
                    session, claimer=claimer, limit=min(batch, quota - len(done))
                )
            else:
                task = kb.claim_next(session, claimer=claimer)
                claimed = [] if task is None else [task]
            if not claimed:
                break
            # Keep the tokens: a Task is live, a later call on its session refreshes it.
            held = [(task.id, str(task.claim_lock)) for task in claimed]
            if batch:
                kb.complete_many(session, held)
            else:
                kb.complete_task(session, held[0][0], claim_lock=held[0][1])
            done.extend(task_id for task_id, _ in held)
        session.close()
        return done

    return loop


def kb_next_consumer(target: Target, index: int, quota: int) -> Loop:
    return kb_consumer(target, index, quota, 0)


def kb_many10_consumer(target: Target, index: int, quota: int) -> Loop:
    return kb_consumer(target, index, quota, 10)


def kb_many50_consumer(target: Target, index: int, quota: int) -> Loop:
    return kb_consumer(target, index, quota, 50)


# -- the raw-driver baseline ------------------------------------------------------------

_CLAIMED_PAYLOAD = '{{"claimer": {claimer}, "attempt": {attempt}}}'
_COMPLETED_PAYLOAD = json.dumps({"forced": False})
_NULL_JSON = json.dumps(None)  # what the kernel stores for a run without metadata

_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
SQLITE_CLAIM = f"""
UPDATE kanban_tasks SET
    status = 'running',
    claim_lock = lower(hex(randomblob(16))),
    claim_expires = strftime('%Y-%m-%d %H:%M:%f000', 'now', printf('%+.6f seconds', ?)),
    attempts = attempts + 1,
    started_at = coalesce(started_at, {_SQLITE_NOW}),
    version = version + 1,
    updated_at = {_SQLITE_NOW}
WHERE id = (
    SELECT id FROM kanban_tasks
    WHERE status = 'ready' AND claim_lock IS NULL
      AND (run_at IS NULL OR run_at <= {_SQLITE_NOW})
    ORDER BY priority DESC, id
    LIMIT 1
) AND status = 'ready' AND claim_lock IS NULL
RETURNING id, claim_lock, attempts
"""
SQLITE_OPEN_RUN = f"""
INSERT INTO kanban_task_runs (task_id, attempt, claimer, claim_lock, started_at, last_heartbeat_at)
VALUES (?, ?, ?, ?, {_SQLITE_NOW}, {_SQLITE_NOW})
"""
SQLITE_SET_RUN = """
UPDATE kanban_tasks SET current_run_id = ?
WHERE id = ? AND claim_lock = ?
"""
SQLITE_EVENT = f"""
INSERT INTO kanban_task_events (task_id, run_id, kind, payload, created_at)
VALUES (?, ?, ?, ?, {_SQLITE_NOW})
"""
SQLITE_COMPLETE = f"""
UPDATE kanban_tasks SET
    status = 'done', result = NULL, block_reason = NULL, completed_at = {_SQLITE_NOW},
    claim_lock = NULL, claim_expires = NULL, current_run_id = NULL,
    version = version + 1, updated_at = {_SQLITE_NOW}
WHERE id = ? AND status = 'running' AND claim_lock = ?
RETURNING id
"""
SQLITE_CLOSE_RUN = f"""
UPDATE kanban_task_runs SET
    ended_at = {_SQLITE_NOW}, outcome = 'completed', summary = NULL, metadata = ?, error = NULL
WHERE task_id = ? AND ended_at IS NULL
RETURNING id
"""


def _sqlite_connect(path: str) -> sqlite3.Connection:
    """The connection set-up kanban_orm's engine uses (WAL, NORMAL, busy_timeout)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _sqlite_write(conn: sqlite3.Connection, work: Any) -> Any:
    """BEGIN IMMEDIATE .. COMMIT, retried on a busy database like the kernel's layer."""
    for attempt in range(100):
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error):
                raise
            time.sleep(min(0.05, 0.001 * 2**attempt))
            continue
        try:
            result = work(conn)
            conn.execute("COMMIT")
            return result
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    raise RuntimeError("database stayed locked")


#: A raw SQLite loop's completion of (task id, token, run id), in its write transaction.
SqliteComplete = Callable[[sqlite3.Connection, int, str, int], None]


def sqlite_raw_loop(target: Target, index: int, quota: int, complete: SqliteComplete) -> Loop:
    """The raw sqlite3 loop (the ``raw`` row, and the ``lean`` one on its own schema): claim
    with its run and event in one write transaction, then ``complete`` in another."""
    conn = _sqlite_connect(target.sqlite_path)
    claimer = f"bench-{index}"
    claimer_json = json.dumps(claimer)

    def claim(c: sqlite3.Connection) -> tuple[int, str, int] | None:
        row = c.execute(SQLITE_CLAIM, (TTL_SECONDS,)).fetchone()
        if row is None:
            return None
        task_id, token, attempt = row
        run_id = c.execute(SQLITE_OPEN_RUN, (task_id, attempt, claimer, token)).lastrowid
        c.execute(SQLITE_SET_RUN, (run_id, task_id, token))
        payload = _CLAIMED_PAYLOAD.format(claimer=claimer_json, attempt=attempt)
        c.execute(SQLITE_EVENT, (task_id, run_id, "claimed", payload))
        assert run_id is not None
        return task_id, token, run_id

    def loop() -> list[int]:
        done: list[int] = []
        while len(done) < quota:
            held = _sqlite_write(conn, claim)
            if held is None:
                break
            _sqlite_write(conn, lambda c: complete(c, *held))  # noqa: B023 - runs now
            done.append(held[0])
        conn.close()
        return done

    return loop


def raw_sqlite_consumer(target: Target, index: int, quota: int) -> Loop:
    def complete(c: sqlite3.Connection, task_id: int, token: str, _run_id: int) -> None:
        # Closed by task, as the library does (the runs' task id is indexed here).
        if c.execute(SQLITE_COMPLETE, (task_id, token)).fetchone() is None:
            raise RuntimeError(f"task {task_id}: claim lost")
        run_id = c.execute(SQLITE_CLOSE_RUN, (_NULL_JSON, task_id)).fetchone()[0]
        c.execute(SQLITE_EVENT, (task_id, run_id, "completed", _COMPLETED_PAYLOAD))

    return sqlite_raw_loop(target, index, quota, complete)


_PG_NOW = "timezone('UTC', clock_timestamp())"
PG_CLAIM = f"""
WITH picked AS MATERIALIZED (
    SELECT id FROM kanban_tasks
    WHERE status = 'ready' AND claim_lock IS NULL
      AND (run_at IS NULL OR run_at <= {_PG_NOW})
    ORDER BY priority DESC, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE kanban_tasks AS t SET
    status = 'running',
    claim_lock = replace(gen_random_uuid()::text, '-', ''),
    claim_expires = {_PG_NOW} + make_interval(secs => %(ttl)s),
    attempts = t.attempts + 1,
    started_at = coalesce(t.started_at, {_PG_NOW}),
    version = t.version + 1,
    updated_at = {_PG_NOW}
FROM picked
WHERE t.id = picked.id AND t.status = 'ready' AND t.claim_lock IS NULL
RETURNING t.id, t.claim_lock, t.attempts
"""
PG_OPEN_RUN = f"""
INSERT INTO kanban_task_runs (task_id, attempt, claimer, claim_lock, started_at, last_heartbeat_at)
VALUES (%s, %s, %s, %s, {_PG_NOW}, {_PG_NOW})
RETURNING id
"""
PG_SET_RUN = """
UPDATE kanban_tasks SET current_run_id = %s
WHERE id = %s AND claim_lock = %s
"""
PG_EVENT = f"""
INSERT INTO kanban_task_events (task_id, run_id, kind, payload, created_at)
VALUES (%s, %s, %s, %s::jsonb, {_PG_NOW})
"""
PG_COMPLETE = f"""
UPDATE kanban_tasks SET
    status = 'done', result = NULL, block_reason = NULL, completed_at = {_PG_NOW},
    claim_lock = NULL, claim_expires = NULL, current_run_id = NULL,
    version = version + 1, updated_at = {_PG_NOW}
WHERE id = %s AND status = 'running' AND claim_lock = %s
RETURNING id
"""
PG_CLOSE_RUN = f"""
UPDATE kanban_task_runs SET
    ended_at = {_PG_NOW}, outcome = 'completed', summary = NULL, metadata = %s::jsonb,
    error = NULL
WHERE task_id = %s AND ended_at IS NULL
RETURNING id
"""


#: PostgreSQL, one statement per transition (data-modifying CTEs), autocommit: the claim
#: takes the run id from the runs' sequence as it sets current_run_id, and the run row
#: and the event are inserted from its RETURNING. One round trip a transition.
PG_CLAIM_ONE = f"""
WITH picked AS MATERIALIZED (
    SELECT id FROM kanban_tasks
    WHERE status = 'ready' AND claim_lock IS NULL
      AND (run_at IS NULL OR run_at <= {_PG_NOW})
    ORDER BY priority DESC, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE kanban_tasks AS t SET
        status = 'running',
        claim_lock = replace(gen_random_uuid()::text, '-', ''),
        claim_expires = {_PG_NOW} + make_interval(secs => %(ttl)s),
        attempts = t.attempts + 1,
        started_at = coalesce(t.started_at, {_PG_NOW}),
        current_run_id = nextval(pg_get_serial_sequence('kanban_task_runs', 'id')),
        version = t.version + 1,
        updated_at = {_PG_NOW}
    FROM picked
    WHERE t.id = picked.id AND t.status = 'ready' AND t.claim_lock IS NULL
    RETURNING t.id, t.claim_lock, t.attempts, t.current_run_id
), opened AS (
    INSERT INTO kanban_task_runs
        (id, task_id, attempt, claimer, claim_lock, started_at, last_heartbeat_at)
    SELECT current_run_id, id, attempts, %(claimer)s, claim_lock, {_PG_NOW}, {_PG_NOW}
    FROM claimed
), logged AS (
    INSERT INTO kanban_task_events (task_id, run_id, kind, payload, created_at)
    SELECT id, current_run_id, 'claimed',
           jsonb_build_object('claimer', %(claimer)s::text, 'attempt', attempts), {_PG_NOW}
    FROM claimed
)
SELECT id, claim_lock FROM claimed
"""
PG_COMPLETE_ONE = f"""
WITH done AS (
    UPDATE kanban_tasks SET
        status = 'done', result = NULL, block_reason = NULL, completed_at = {_PG_NOW},
        claim_lock = NULL, claim_expires = NULL, current_run_id = NULL,
        version = version + 1, updated_at = {_PG_NOW}
    WHERE id = %(task_id)s AND status = 'running' AND claim_lock = %(token)s
    RETURNING id
), closed AS (
    UPDATE kanban_task_runs AS r SET
        ended_at = {_PG_NOW}, outcome = 'completed', summary = NULL,
        metadata = %(metadata)s::jsonb, error = NULL
    FROM done
    WHERE r.task_id = done.id AND r.ended_at IS NULL
    RETURNING r.id, r.task_id
), logged AS (
    INSERT INTO kanban_task_events (task_id, run_id, kind, payload, created_at)
    SELECT task_id, id, 'completed', %(payload)s::jsonb, {_PG_NOW} FROM closed
)
SELECT id FROM done
"""


def raw_postgres_consumer(target: Target, index: int, quota: int) -> Loop:
    """One autocommit statement per transition: the fewest round trips psycopg allows."""
    import psycopg

    conn = psycopg.connect(target.conninfo, autocommit=True)
    conn.execute("SELECT 1")
    claim = {"ttl": TTL_SECONDS, "claimer": f"bench-{index}"}
    complete = {"metadata": _NULL_JSON, "payload": _COMPLETED_PAYLOAD}

    def loop() -> list[int]:
        done: list[int] = []
        while len(done) < quota:
            row = conn.execute(PG_CLAIM_ONE, claim).fetchone()
            if row is None:
                break
            task_id, token = row
            finished = conn.execute(
                PG_COMPLETE_ONE, {**complete, "task_id": task_id, "token": token}
            )
            if finished.fetchone() is None:
                raise RuntimeError(f"task {task_id}: claim lost")
            done.append(task_id)
        conn.close()
        return done

    return loop


def raw_steps_consumer(target: Target, index: int, quota: int) -> Loop:
    """PostgreSQL, a statement per step inside an explicit transaction (the claim
    written out step by step): the baseline's shape before round trips were cut."""
    import psycopg

    conn = psycopg.connect(target.conninfo)  # READ COMMITTED, implicit BEGIN
    conn.execute("SELECT 1")
    conn.commit()
    claimer = f"bench-{index}"
    claimer_json = json.dumps(claimer)

    def loop() -> list[int]:
        done: list[int] = []
        while len(done) < quota:
            with conn.transaction():
                row = conn.execute(PG_CLAIM, {"ttl": TTL_SECONDS}).fetchone()
                if row is None:
                    break
                task_id, token, attempt = row
                opened = conn.execute(PG_OPEN_RUN, (task_id, attempt, claimer, token)).fetchone()
                assert opened is not None
                run_id = opened[0]
                conn.execute(PG_SET_RUN, (run_id, task_id, token))
                payload = _CLAIMED_PAYLOAD.format(claimer=claimer_json, attempt=attempt)
                conn.execute(PG_EVENT, (task_id, run_id, "claimed", payload))
            with conn.transaction():
                if conn.execute(PG_COMPLETE, (task_id, token)).fetchone() is None:
                    raise RuntimeError(f"task {task_id}: claim lost")
                closed = conn.execute(PG_CLOSE_RUN, (_NULL_JSON, task_id)).fetchone()
                assert closed is not None
                conn.execute(PG_EVENT, (task_id, closed[0], "completed", _COMPLETED_PAYLOAD))
            done.append(task_id)
        conn.close()
        return done

    return loop


def raw_consumer(target: Target, index: int, quota: int) -> Loop:
    if target.backend == SQLITE:
        return raw_sqlite_consumer(target, index, quota)
    assert target.backend == POSTGRES
    return raw_postgres_consumer(target, index, quota)
