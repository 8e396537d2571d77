"""Peer queues, measured as "enqueue N, then P consumers dequeue and ack as fast as they can".

Each peer runs on its own fresh storage (a new SQLite file, or the bench's PostgreSQL
database re-created) with zero-work tasks, through the most direct API it offers, not its
worker runtime (which adds polling, sleeps and threads that would measure something
else). Every peer is judged like kanban_orm: its own storage says how often each task was
completed, and the consumers report what they were handed.

Peers are optional (``pip install 'kanban-orm[bench]'``, or ``pip install -e '.[bench]'``
from a checkout) and imported with :func:`importlib.import_module`, so the bench
type-checks and runs without them; a peer that is not installed is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import closing
from typing import Any

from kanban_orm.db import install_command

from .core import POSTGRES, SQLITE, Loop, System, Target, Verdict

#: SQLite peers run at the durability kanban_orm and the raw baseline use (WAL, NORMAL).
SQLITE_SYNCHRONOUS = "NORMAL"


def _module(name: str) -> Any:
    return importlib.import_module(name)


def _missing(*modules: str) -> Callable[[], str | None]:
    def check() -> str | None:
        absent = [m for m in modules if importlib.util.find_spec(m) is None]
        if absent:
            return f"{', '.join(absent)} not installed ({install_command('bench')})"
        return None

    return check


# -- huey: SqliteStorage ----------------------------------------------------------------

HUEY_NAME = "bench"


def _huey_storage(target: Target) -> Any:
    storage = _module("huey.storage").SqliteStorage(name=HUEY_NAME, filename=target.sqlite_path)
    storage.conn.execute(f"PRAGMA synchronous = {SQLITE_SYNCHRONOUS}")
    return storage


def huey_setup(target: Target, tasks: int) -> None:
    storage = _huey_storage(target)
    with storage.db(commit=True) as cursor:  # one transaction; enqueue() commits each
        cursor.executemany(
            "INSERT INTO task (queue, data, priority) VALUES (?, ?, 0)",
            [(HUEY_NAME, str(i).encode()) for i in range(tasks)],
        )
    storage.close()


def huey_consumer(target: Target, index: int, quota: int) -> Loop:
    storage = _huey_storage(target)
    storage.queue_size()  # warm up

    def loop() -> list[int]:
        done: list[int] = []
        while len(done) < quota:
            data = storage.dequeue()
            if data is None:
                break
            task = int(bytes(data))
            # huey's record of a finished task: its result in the kv table. The key is
            # per delivery, so a second delivery of a task would show as a second row.
            storage.put_data(f"done:{task}:{index}:{len(done)}", b"1")
            done.append(task)
        storage.close()
        return done

    return loop


def huey_verify(target: Target) -> Verdict:
    with closing(sqlite3.connect(target.sqlite_path)) as conn:
        keys = [k for (k,) in conn.execute("SELECT key FROM kv WHERE queue = ?", (HUEY_NAME,))]
        left = conn.execute("SELECT count(*) FROM task").fetchone()[0]
    completions = Counter(int(key.split(":")[1]) for key in keys if key.startswith("done:"))
    problems = [f"{left} tasks still queued"] if left else []
    return Verdict(dict(completions), problems)


# -- litequeue --------------------------------------------------------------------------


def _litequeue(target: Target) -> Any:
    # litequeue sets WAL and synchronous=NORMAL itself
    return _module("litequeue").LiteQueue(target.sqlite_path, queue_name="bench", timeout=5.0)


def litequeue_setup(target: Target, tasks: int) -> None:
    queue = _litequeue(target)
    with queue.transaction(mode="IMMEDIATE"):  # put() alone commits each message
        for i in range(tasks):
            queue.put(str(i))
    queue.conn.close()


def litequeue_consumer(target: Target, index: int, quota: int) -> Loop:
    queue = _litequeue(target)
    queue.peek()  # warm up

    def loop() -> list[int]:
        done: list[int] = []
        while len(done) < quota:
            message = queue.pop()
            if message is None:
                break
            queue.done(message.message_id)
            done.append(int(message.data))
        queue.conn.close()
        return done

    return loop


def litequeue_verify(target: Target) -> Verdict:
    done_status = _module("litequeue").MessageStatus.DONE.value
    with closing(sqlite3.connect(target.sqlite_path)) as conn:
        rows = conn.execute("SELECT data, status FROM bench").fetchall()
    completions = Counter(int(data) for data, status in rows if status == done_status)
    pending = sum(1 for _, status in rows if status != done_status)
    return Verdict(dict(completions), [f"{pending} messages not done"] if pending else [])


# -- async peers on PostgreSQL ----------------------------------------------------------


def _async_loop(
    prepare: Callable[[], Awaitable[Callable[[], Awaitable[list[int]]]]],
) -> Loop:
    """Connect in the consumer's own event loop before the start signal; the returned
    loop runs the timed coroutine in that same event loop."""
    event_loop = asyncio.new_event_loop()
    consume = event_loop.run_until_complete(prepare())

    def loop() -> list[int]:
        try:
            return event_loop.run_until_complete(consume())
        finally:
            event_loop.close()

    return loop


# procrastinate: JobManager.fetch_job / finish_job


def _procrastinate_app(target: Target) -> Any:
    procrastinate = _module("procrastinate")
    connector = procrastinate.PsycopgConnector(conninfo=target.conninfo, min_size=1, max_size=1)
    app = procrastinate.App(connector=connector)
    app.task(name="bench")(_zero_work)
    return app


def _zero_work(i: int) -> None:
    """The task the peers would run: nothing."""


def procrastinate_setup(target: Target, tasks: int) -> None:
    async def setup() -> None:
        app = _procrastinate_app(target)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            task = app.tasks["bench"]
            for first in range(0, tasks, 5_000):
                batch = [{"i": i} for i in range(first, min(tasks, first + 5_000))]
                await task.batch_defer_async(*batch)

    asyncio.run(setup())


def procrastinate_consumer(target: Target, index: int, quota: int) -> Loop:
    succeeded = _module("procrastinate.jobs").Status.SUCCEEDED

    async def prepare() -> Callable[[], Awaitable[list[int]]]:
        app = _procrastinate_app(target)
        await app.open_async()
        manager = app.job_manager
        worker_id = await manager.register_worker()

        async def consume() -> list[int]:
            done: list[int] = []
            while len(done) < quota:
                job = await manager.fetch_job(queues=None, worker_id=worker_id)
                if job is None:
                    break
                await manager.finish_job(job, status=succeeded, delete_job=False)
                done.append(int(job.task_kwargs["i"]))
            await manager.unregister_worker(worker_id)
            await app.close_async()
            return done

        return consume

    return _async_loop(prepare)


def procrastinate_verify(target: Target) -> Verdict:
    import psycopg

    with psycopg.connect(target.conninfo) as conn:
        rows = conn.execute("SELECT args, status FROM procrastinate_jobs").fetchall()
    completions = Counter(int(args["i"]) for args, status in rows if status == "succeeded")
    pending = Counter(status for _, status in rows if status != "succeeded")
    return Verdict(dict(completions), [f"jobs not succeeded: {dict(pending)}"] if pending else [])


# pgqueuer: Queries.dequeue(batch_size=10) / Queries.log_jobs

PGQUEUER_BATCH = 10
PGQUEUER_ENTRYPOINT = "bench"


async def _pgqueuer_queries(target: Target) -> tuple[Any, Any]:
    import psycopg

    connection = await psycopg.AsyncConnection.connect(target.conninfo, autocommit=True)
    queries = _module("pgqueuer.queries").Queries.from_psycopg_connection(connection)
    return connection, queries


def pgqueuer_setup(target: Target, tasks: int) -> None:
    async def setup() -> None:
        connection, queries = await _pgqueuer_queries(target)
        await queries.install()
        for first in range(0, tasks, 5_000):
            count = min(tasks, first + 5_000) - first
            payloads = [json.dumps({"i": i}).encode() for i in range(first, first + count)]
            await queries.enqueue([PGQUEUER_ENTRYPOINT] * count, payloads, [0] * count)
        await connection.close()

    asyncio.run(setup())


def pgqueuer_consumer(target: Target, index: int, quota: int) -> Loop:
    import uuid
    from datetime import timedelta

    parameter = _module("pgqueuer.ports.repository").EntrypointExecutionParameter

    async def prepare() -> Callable[[], Awaitable[list[int]]]:
        connection, queries = await _pgqueuer_queries(target)
        entrypoints = {PGQUEUER_ENTRYPOINT: parameter(concurrency_limit=0)}
        manager_id = uuid.uuid4()

        async def consume() -> list[int]:
            done: list[int] = []
            while len(done) < quota:
                jobs = await queries.dequeue(
                    batch_size=min(PGQUEUER_BATCH, quota - len(done)),
                    entrypoints=entrypoints,
                    queue_manager_id=manager_id,
                    global_concurrency_limit=None,
                    heartbeat_timeout=timedelta(minutes=15),
                )
                if not jobs:
                    break
                await queries.log_jobs([(job, "successful", None) for job in jobs])
                done += [int(job.id) for job in jobs]
            await connection.close()
            return done

        return consume

    return _async_loop(prepare)


def pgqueuer_verify(target: Target) -> Verdict:
    async def read() -> tuple[list[Any], list[Any]]:
        connection, queries = await _pgqueuer_queries(target)
        names = queries.qbe.settings.qualified
        async with connection.cursor() as cursor:
            await cursor.execute(f"SELECT job_id, status FROM {names.queue_table_log}")
            log = await cursor.fetchall()
            await cursor.execute(f"SELECT id, status FROM {names.queue_table}")
            left = await cursor.fetchall()
        await connection.close()
        return log, left

    log, left = asyncio.run(read())
    completions = Counter(int(job_id) for job_id, status in log if status == "successful")
    problems = [f"{len(left)} jobs still in the queue table"] if left else []
    return Verdict(dict(completions), problems)


PEERS: list[System] = [
    System(
        key="huey",
        label="huey SqliteStorage",
        backend=SQLITE,
        kind="peer",
        note="storage.dequeue() (select+delete: at most once) + put_data() result row",
        setup=huey_setup,
        consumer=huey_consumer,
        verify=huey_verify,
        unavailable=_missing("huey"),
    ),
    System(
        key="litequeue",
        label="litequeue",
        backend=SQLITE,
        kind="peer",
        note="LiteQueue.pop() (UPDATE..RETURNING, no lease) + done(); autocommit",
        setup=litequeue_setup,
        consumer=litequeue_consumer,
        verify=litequeue_verify,
        unavailable=_missing("litequeue"),
    ),
    System(
        key="procrastinate",
        label="procrastinate",
        backend=POSTGRES,
        kind="peer",
        note="JobManager.fetch_job + finish_job (its worker's two queries), psycopg pool",
        setup=procrastinate_setup,
        consumer=procrastinate_consumer,
        verify=procrastinate_verify,
        unavailable=_missing("procrastinate"),
    ),
    System(
        key="pgqueuer",
        label=f"pgqueuer (batch {PGQUEUER_BATCH})",
        backend=POSTGRES,
        kind="peer",
        note=f"Queries.dequeue(batch_size={PGQUEUER_BATCH}) + log_jobs of the batch (as its "
        "buffered acks)",
        setup=pgqueuer_setup,
        consumer=pgqueuer_consumer,
        verify=pgqueuer_verify,
        unavailable=_missing("pgqueuer"),
    ),
]
