"""kanban_orm.aio against the sync API, side by side in one run.

    python -m stress.async_bench [--sqlite PATH] [--postgres URL] [--mysql URL]
        [--tasks N] [--procs P] [--rounds R] [--worker-tasks N] [--concurrency C]

* **cycles**: on each backend given, P processes claim_next + complete_task until the
  board is empty, once on the sync API and once on kanban_orm.aio (one coroutine per
  process: the same loop, awaited), alternating for R rounds; tasks/s of each and the
  async/sync ratio (the issue's target: >= 0.8).
* **worker** (PostgreSQL): one process, one event loop, ``aio.Worker(concurrency=C)``
  whose handler awaits ``asyncio.sleep(0.05)``, over N tasks: tasks/s, and a lag probe
  (a coroutine asking to wake every 10 ms) whose lateness is reported as p50/p99/max.
  Run twice: as configured, and with ``synchronous_commit=off`` for the bench's own
  connections (the server's fsync taken out of the way: what the client side can do).

The kanban tables of every database given are emptied first: point it at scratch
databases. A busy machine moves the absolute numbers; compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import resource
import statistics
import time
from multiprocessing.synchronize import Barrier
from typing import Any

import sqlalchemy as sa

import kanban_orm as kb
from kanban_orm import aio

from .harness import wipe_rows

SPAWN = mp.get_context("spawn")
HANDLER_SECONDS = 0.05
PROBE_SECONDS = 0.010


def empty(url: str) -> None:
    engine = kb.create_engine(url, poolclass=sa.pool.NullPool)
    kb.upgrade(engine)
    with engine.begin() as conn:
        wipe_rows(conn)  # the status tallies keep their rows
    engine.dispose()


def seed(url: str, count: int) -> None:
    empty(url)
    with kb.session_factory(kb.create_engine(url, poolclass=sa.pool.NullPool))() as session:
        for i in range(count):
            kb.create_task(session, title=f"bench {i}")


# -- cycles: P processes drain the board ---------------------------------------------------


def drain_sync(url: str, barrier: Barrier) -> None:
    engine = kb.create_engine(url)
    with kb.session_factory(engine)() as session:
        barrier.wait(60)
        while task := kb.claim_next(session, claimer="bench"):
            assert task.claim_lock is not None
            kb.complete_task(session, task.id, claim_lock=task.claim_lock)
    engine.dispose()


def drain_async(url: str, barrier: Barrier) -> None:
    async def drain() -> None:
        engine = aio.create_engine(url)
        async with aio.session_factory(engine)() as session:
            barrier.wait(60)
            while task := await aio.claim_next(session, claimer="bench"):
                assert task.claim_lock is not None
                await aio.complete_task(session, task.id, claim_lock=task.claim_lock)
        await engine.dispose()

    asyncio.run(drain())


def cycles(url: str, api: str, tasks: int, procs: int) -> tuple[float, float]:
    """Tasks/s of ``procs`` processes draining ``tasks`` on ``api``, and the client CPU
    milliseconds each task cost them (start-up included, the same for both APIs)."""
    seed(url, tasks)
    cpu_before = _children_cpu()
    barrier = SPAWN.Barrier(procs + 1)
    target = drain_async if api == "async" else drain_sync
    workers = [SPAWN.Process(target=target, args=(url, barrier)) for _ in range(procs)]
    for worker in workers:
        worker.start()
    barrier.wait(120)  # every process connected and imported: the clock starts here
    started = time.perf_counter()
    for worker in workers:
        worker.join(600)
    elapsed = time.perf_counter() - started
    assert all(w.exitcode == 0 for w in workers), "a bench process failed"
    with kb.session_factory(kb.create_engine(url, poolclass=sa.pool.NullPool))() as session:
        done = kb.board_stats(session)["by_status"].get("done", 0)
    assert done == tasks, f"{done} of {tasks} done"
    return tasks / elapsed, 1000 * (_children_cpu() - cpu_before) / tasks


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- worker: one loop, concurrency C, a lag probe -------------------------------------------


async def probe_alone(seconds: float) -> dict[str, float]:
    """The lag probe with nothing else on the loop: the machine's own scheduling noise,
    the floor under the worker's figures."""
    lateness: list[float] = []
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        asked = time.perf_counter()
        await asyncio.sleep(PROBE_SECONDS)
        lateness.append(time.perf_counter() - asked - PROBE_SECONDS)
    return _lag(lateness)


def _lag(lateness: list[float]) -> dict[str, float]:
    lateness.sort()
    return {
        "lag_p50_ms": 1000 * statistics.median(lateness),
        "lag_p99_ms": 1000 * lateness[int(0.99 * (len(lateness) - 1))],
        "lag_max_ms": 1000 * lateness[-1],
    }


async def worker_run(url: str, tasks: int, concurrency: int, **engine_kw: Any) -> dict[str, float]:
    engine = aio.create_engine(url, pool_size=concurrency + 2, **engine_kw)
    sessions = aio.session_factory(engine)
    lateness: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            asked = time.perf_counter()
            await asyncio.sleep(PROBE_SECONDS)
            lateness.append(time.perf_counter() - asked - PROBE_SECONDS)

    async def handler(task: kb.Task) -> str:
        await asyncio.sleep(HANDLER_SECONDS)
        return "ok"

    worker = aio.Worker(handler, sessions=sessions, concurrency=concurrency, drain=True)
    probing = asyncio.create_task(probe())
    started, cpu = time.perf_counter(), time.process_time()
    stats = await worker.run()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    done.set()
    await probing
    await engine.dispose()
    assert stats.completed == tasks, str(stats)
    return {
        "tasks_per_s": tasks / elapsed,
        # What one core would sustain on the client side, whatever else the machine runs.
        "tasks_per_cpu_s": tasks / cpu,
        **_lag(lateness),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stress.async_bench")
    parser.add_argument("--sqlite", metavar="PATH", help="a scratch SQLite file")
    parser.add_argument("--postgres", metavar="URL", help="a scratch PostgreSQL database")
    parser.add_argument("--mysql", metavar="URL", help="a scratch MariaDB/MySQL database")
    parser.add_argument("--tasks", type=int, default=500, help="tasks per cycles run")
    parser.add_argument("--procs", type=int, default=5, help="processes per cycles run")
    parser.add_argument("--rounds", type=int, default=2, help="sync/async pairs per backend")
    parser.add_argument("--worker-tasks", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--only", choices=("cycles", "worker"), help="one of the two parts")
    args = parser.parse_args(argv)
    urls = {
        "sqlite": f"sqlite:///{args.sqlite}" if args.sqlite else None,
        "postgresql": args.postgres,
        "mysql": args.mysql,
    }
    if args.only != "worker":
        run_cycles(args, urls)
    if args.postgres and args.only != "cycles":
        run_worker(args)
    return 0


def run_cycles(args: argparse.Namespace, urls: dict[str, str | None]) -> None:
    print(f"cycles: {args.procs} processes, {args.tasks} tasks, claim_next + complete_task")
    print(
        f"{'backend':<11} {'sync tasks/s':>13} {'async tasks/s':>14} {'async/sync':>11}"
        f" {'CPU ms/task sync':>17} {'async':>6}"
    )
    for name, url in urls.items():
        if url is None:
            continue
        rates: dict[str, list[float]] = {"sync": [], "async": []}
        cpu: dict[str, list[float]] = {"sync": [], "async": []}
        for _ in range(args.rounds):
            for api in ("sync", "async"):
                rate, cpu_ms = cycles(url, api, args.tasks, args.procs)
                rates[api].append(rate)
                cpu[api].append(cpu_ms)
        sync, async_ = statistics.median(rates["sync"]), statistics.median(rates["async"])
        print(
            f"{name:<11} {sync:>13.0f} {async_:>14.0f} {async_ / sync:>10.2f}x"
            f" {statistics.median(cpu['sync']):>17.1f} {statistics.median(cpu['async']):>6.1f}"
        )


def run_worker(args: argparse.Namespace) -> None:
    print(
        f"\naio.Worker(concurrency={args.concurrency}), handler sleeps "
        f"{HANDLER_SECONDS * 1000:.0f} ms, {args.worker_tasks} tasks, probe every "
        f"{PROBE_SECONDS * 1000:.0f} ms (PostgreSQL)"
    )
    print(
        f"{'commits':<22} {'tasks/s':>8} {'per CPU-s':>9} {'lag p50':>8} {'lag p99':>8}"
        f" {'lag max':>8}"
    )
    row = asyncio.run(probe_alone(5.0))
    print(
        f"{'(the probe alone, 5 s)':<22} {'':>8} {'':>9} {row['lag_p50_ms']:>6.1f}ms"
        f" {row['lag_p99_ms']:>6.1f}ms {row['lag_max_ms']:>6.1f}ms"
    )
    no_fsync = {"connect_args": {"options": "-c synchronous_commit=off"}}
    for label, kw in (("as configured", {}), ("synchronous_commit=off", no_fsync)):
        seed(args.postgres, args.worker_tasks)
        row = asyncio.run(worker_run(args.postgres, args.worker_tasks, args.concurrency, **kw))
        print(
            f"{label:<22} {row['tasks_per_s']:>8.0f} {row['tasks_per_cpu_s']:>9.0f}"
            f" {row['lag_p50_ms']:>6.1f}ms {row['lag_p99_ms']:>6.1f}ms"
            f" {row['lag_max_ms']:>6.1f}ms"
        )


if __name__ == "__main__":
    raise SystemExit(main())
