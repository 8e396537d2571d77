"""The bench's MariaDB/MySQL column: its storage, and the raw mysqlclient baseline.

kanban_orm's own rows (``kb-next``, ``kb-many10``, ``kb-many50``) are the same consumers
as on the other backends (:mod:`.kanban`). The raw baseline is what a hand-written queue
on these tables would do with bare mysqlclient, in the transactions the library uses on
MariaDB (which has no ``UPDATE ... RETURNING``), at the isolation the library sets (READ
COMMITTED) and with the same rows (the event log's guard trigger fires for both):

* claim: ``SELECT id ... ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED``,
  the guarded ``UPDATE ... WHERE id = ? AND claim_lock IS NULL`` whose row count decides,
  the run row, ``current_run_id``, the ``claimed`` event; COMMIT;
* complete: the fenced ``UPDATE`` to done (row count decides), closing the run, the
  ``completed`` event; COMMIT.

The claim token is made in Python (``secrets.token_hex``), one of the few things a
hand-written queue would do differently; it costs no round trip either way.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy as sa

from . import kanban
from .core import MYSQL, Loop, System, Target

T = TypeVar("T")
DEFAULT_MYSQL_URL = "mysql://root@127.0.0.1:3306/kanban_bench"
MYSQL_URL_ENV = "KANBAN_BENCH_MYSQL_URL"
TTL_SECONDS = 15 * 60

_NOW = "UTC_TIMESTAMP(6)"
PICK = f"""
SELECT id FROM kanban_tasks
WHERE status = 'ready' AND claim_lock IS NULL AND (run_at IS NULL OR run_at <= {_NOW})
ORDER BY priority DESC, id
LIMIT 1
FOR UPDATE SKIP LOCKED
"""
CLAIM = f"""
UPDATE kanban_tasks SET
    status = 'running', claim_lock = %s,
    claim_expires = {_NOW} + INTERVAL %s SECOND,
    attempts = attempts + 1, started_at = coalesce(started_at, {_NOW}),
    version = version + 1, updated_at = {_NOW}
WHERE id = %s AND claim_lock IS NULL
"""
OPEN_RUN = f"""
INSERT INTO kanban_task_runs (task_id, attempt, claimer, claim_lock, started_at, last_heartbeat_at)
SELECT id, attempts, %s, claim_lock, {_NOW}, {_NOW} FROM kanban_tasks WHERE id = %s
"""
SET_RUN = "UPDATE kanban_tasks SET current_run_id = %s WHERE id = %s"
EVENT = f"""
INSERT INTO kanban_task_events (task_id, run_id, kind, payload, created_at)
VALUES (%s, %s, %s, %s, {_NOW})
"""
LOG_CLAIMED = f"""
INSERT INTO kanban_task_events (task_id, run_id, kind, payload, created_at)
SELECT id, current_run_id, 'claimed', JSON_OBJECT('claimer', %s, 'attempt', attempts), {_NOW}
FROM kanban_tasks WHERE id = %s
"""
COMPLETE = f"""
UPDATE kanban_tasks SET
    status = 'done', result = NULL, block_reason = NULL, completed_at = {_NOW},
    claim_lock = NULL, claim_expires = NULL, current_run_id = NULL,
    version = version + 1, updated_at = {_NOW}
WHERE id = %s AND status = 'running' AND claim_lock = %s
"""
CLOSE_RUN = f"""
UPDATE kanban_task_runs SET
    ended_at = {_NOW}, outcome = 'completed', summary = NULL, metadata = %s, error = NULL
WHERE id = %s AND ended_at IS NULL
"""
_COMPLETED_PAYLOAD = json.dumps({"forced": False})
_NULL_JSON = json.dumps(None)  # what the kernel stores for a run without metadata


def _admin(url: sa.URL) -> sa.Engine:
    return sa.create_engine(url.set(database=""), poolclass=sa.pool.NullPool)


def recreate(url: sa.URL, *, create: bool) -> None:
    """Drop the bench's database, and create it again (utf8mb4, binary collation)."""
    admin = _admin(url)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{url.database}`")
            if create:
                conn.exec_driver_sql(
                    f"CREATE DATABASE `{url.database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                )
    finally:
        admin.dispose()


@contextmanager
def mysql_database(mysql_url: str) -> Iterator[str]:
    """A database of this bench run's own on the server ``mysql_url`` names (its name
    plus this process's id), re-created for every run and dropped after."""
    url = sa.make_url(mysql_url)
    if not url.database:
        raise ValueError("--mysql-url must name a database (the bench's is that name + _PID)")
    url = url.set(drivername="mysql+mysqldb", database=f"{url.database}_{os.getpid()}")
    recreate(url, create=True)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        recreate(url, create=False)


def analyze(target: Target) -> None:
    """Fresh index statistics after seeding (InnoDB's would come within seconds)."""
    engine = sa.create_engine(target.url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            for table in ("kanban_tasks", "kanban_task_runs", "kanban_task_events"):
                conn.exec_driver_sql(f"ANALYZE TABLE {table}").all()
    finally:
        engine.dispose()


def connect(target: Target) -> Any:
    """A mysqlclient connection set up as kanban_orm sets up its own."""
    import MySQLdb  # type: ignore[import-untyped]

    url = sa.make_url(target.url)
    conn = MySQLdb.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        database=url.database or "",
        charset="utf8mb4",
        autocommit=False,
    )
    cursor = conn.cursor()
    cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    cursor.execute("SET SESSION time_zone = '+00:00'")
    conn.commit()
    return conn


#: Deadlock, lock wait timeout: the transaction runs again, as the kernel's retry layer
#: would run it.
_CONTENTION = (1213, 1205)


def _retried(conn: Any, work: Callable[[], T]) -> T:
    import MySQLdb

    for _ in range(100):
        try:
            return work()
        except MySQLdb.OperationalError as error:
            conn.rollback()
            if error.args[0] not in _CONTENTION:
                raise
    raise RuntimeError("contention never ended")


def raw_consumer(target: Target, index: int, quota: int) -> Loop:
    conn = connect(target)
    cursor = conn.cursor()
    claimer = f"bench-{index}"

    def claim() -> tuple[int, str, int] | None:
        cursor.execute(PICK)
        row = cursor.fetchone()
        if row is None:
            conn.commit()
            return None
        task_id, token = row[0], secrets.token_hex(16)
        if cursor.execute(CLAIM, (token, TTL_SECONDS, task_id)) != 1:
            conn.rollback()  # the guard decides; the picked row was locked, so seldom
            return claim()
        cursor.execute(OPEN_RUN, (claimer, task_id))
        run_id = cursor.lastrowid
        cursor.execute(SET_RUN, (run_id, task_id))
        cursor.execute(LOG_CLAIMED, (claimer, task_id))
        conn.commit()
        return task_id, token, run_id

    def complete(task_id: int, token: str, run_id: int) -> None:
        if cursor.execute(COMPLETE, (task_id, token)) != 1:
            conn.rollback()
            raise RuntimeError(f"task {task_id}: claim lost")
        cursor.execute(CLOSE_RUN, (_NULL_JSON, run_id))
        cursor.execute(EVENT, (task_id, run_id, "completed", _COMPLETED_PAYLOAD))
        conn.commit()

    def loop() -> list[int]:
        done: list[int] = []
        while len(done) < quota:
            held = _retried(conn, claim)
            if held is None:
                break
            _retried(conn, lambda: complete(*held))  # noqa: B023 - runs now
            done.append(held[0])
        conn.close()
        return done

    return loop


def systems() -> dict[tuple[str, str], System]:
    """kanban_orm's rows and the raw baseline, on MariaDB/MySQL."""
    found: dict[tuple[str, str], System] = {}
    consumers = {
        "kb-next": (
            kanban.kb_next_consumer,
            "kanban_orm claim_next",
            "kb.claim_next + kb.complete_task",
        ),
        "kb-many10": (
            kanban.kb_many10_consumer,
            "kanban_orm claim_many 10",
            "kb.claim_many(limit=10) + kb.complete_many of the batch",
        ),
        "kb-many50": (
            kanban.kb_many50_consumer,
            "kanban_orm claim_many 50",
            "kb.claim_many(limit=50) + kb.complete_many of the batch",
        ),
    }
    for key, (consumer, label, note) in consumers.items():
        found[key, MYSQL] = System(
            key=key,
            label=label,
            backend=MYSQL,
            kind="kanban_orm",
            note=note,
            setup=kanban.seed,
            consumer=consumer,
            verify=kanban.verify,
        )
    found["raw", MYSQL] = System(
        key="raw",
        label="raw driver baseline",
        backend=MYSQL,
        kind="raw",
        note="mysqlclient, READ COMMITTED, SKIP LOCKED pick + guarded UPDATE + run + event; "
        "same rows",
        setup=kanban.seed,
        consumer=raw_consumer,
        verify=kanban.verify,
    )
    return found
