"""Worker functions run in spawned processes by the multi-process tests.

They live in a module of their own so a spawned child imports only this (and
kanban_orm), not pytest's test modules.
"""

from __future__ import annotations

import json
from multiprocessing.synchronize import Barrier
from pathlib import Path

import kanban_orm as kb


def race_claims(url: str, name: str, task_ids: list[int], barrier: Barrier, out: str) -> None:
    """Claim each task in turn, released together with the other racer by ``barrier``."""
    session = kb.connect(url)
    outcome: dict[str, str | None] = {}
    try:
        for task_id in task_ids:
            barrier.wait(timeout=60)
            task = kb.claim_task(session, task_id, claimer=name)
            outcome[str(task_id)] = task.claim_lock if task is not None else None
    finally:
        session.close()
    Path(out).write_text(json.dumps(outcome))


def drain_with_claim_many(url: str, name: str, batch: int, barrier: Barrier, out: str) -> None:
    """Claim batches until the board is empty, completing every claimed task."""
    session = kb.connect(url)
    completed: list[int] = []
    try:
        barrier.wait(timeout=60)
        while claimed := kb.claim_many(session, claimer=name, limit=batch):
            for task in claimed:
                kb.complete_task(session, task.id, claim_lock=task.claim_lock)
                completed.append(task.id)
    finally:
        session.close()
    Path(out).write_text(json.dumps(completed))


def churn(url: str, name: str) -> None:
    """Claim, then complete, fail or release, as fast as possible, until killed."""
    session = kb.connect(url)
    step = 0
    while True:
        task = kb.claim_next(session, claimer=name)
        if task is None or task.claim_lock is None:
            continue
        step += 1
        if step % 3 == 0:
            kb.release_task(session, task.id, claim_lock=task.claim_lock, reason="churn")
        elif step % 3 == 1:
            kb.complete_task(session, task.id, claim_lock=task.claim_lock, result="ok")
        else:
            kb.fail_task(session, task.id, claim_lock=task.claim_lock, error="churn", retry=False)


def create_idempotently(url: str, tenant: str | None, barrier: Barrier, out: str) -> None:
    """Create the same task (same idempotency key) 20 times, racing the other creators."""
    session = kb.connect(url)
    ids = []
    try:
        barrier.wait(timeout=60)
        for _ in range(20):
            ids.append(kb.create_task(session, title="once", idempotency_key="k", tenant=tenant))
    finally:
        session.close()
    Path(out).write_text(json.dumps(ids))


def write_events_slowly(url: str, name: str, count: int, barrier: Barrier, out: str) -> None:
    """Create ``count`` tasks, each in a transaction that lingers after its event insert,
    so concurrent writers commit out of event-id order."""
    import random
    import time

    session = kb.connect(url)
    rng = random.Random(name)
    try:
        barrier.wait(timeout=60)
        for i in range(count):
            with session.begin():
                kb.create_task(session, title=f"{name} #{i}")
                time.sleep(rng.uniform(0, 0.02))
    finally:
        session.close()
    Path(out).write_text("done")


def complete_in_lockstep(url: str, held: list[tuple[int, str]], barrier: Barrier, out: str) -> None:
    """Complete each (task, token), one per ``barrier`` round, racing the other process."""
    session = kb.connect(url)
    try:
        for task_id, token in held:
            barrier.wait(timeout=60)
            kb.complete_task(session, task_id, claim_lock=token)
    finally:
        session.close()
    Path(out).write_text("done")


def create_children_in_lockstep(url: str, parents: list[int], barrier: Barrier, out: str) -> None:
    """Create a child of each parent, one per ``barrier`` round; write their ids."""
    session = kb.connect(url)
    children: list[int] = []
    try:
        for parent_id in parents:
            barrier.wait(timeout=60)
            children.append(kb.create_task(session, title="child", parents=[parent_id]))
    finally:
        session.close()
    Path(out).write_text(json.dumps(children))


def drain_with_aio(url: str, name: str, coroutines: int, barrier: Barrier, out: str) -> None:
    """``coroutines`` coroutines on one event loop claim with kanban_orm.aio until the
    board is empty, completing every claimed task; the ids completed, in a file."""
    import asyncio

    from kanban_orm import aio

    async def drain() -> list[int]:
        engine = aio.create_engine(url, pool_size=coroutines)
        sessions = aio.session_factory(engine)
        completed: list[int] = []

        async def one(n: int) -> None:
            async with sessions() as session:
                while task := await aio.claim_next(session, claimer=f"{name}-{n}"):
                    assert task.claim_lock is not None
                    await aio.complete_task(session, task.id, claim_lock=task.claim_lock)
                    completed.append(task.id)

        try:
            barrier.wait(timeout=60)
            await asyncio.gather(*(one(n) for n in range(coroutines)))
        finally:
            await engine.dispose()
        return completed

    Path(out).write_text(json.dumps(asyncio.run(drain())))


def drain_completing_and_claiming(url: str, name: str, barrier: Barrier, out: str) -> None:
    """Drain the board with complete_and_claim_next: every completion claims the next."""
    session = kb.connect(url, keep_connection=True)
    completed: list[int] = []
    try:
        barrier.wait(timeout=60)
        task = kb.claim_next(session, claimer=name)
        while task is not None:
            assert task.claim_lock is not None
            held = task.id, task.claim_lock
            task = kb.complete_and_claim_next(session, held[0], claim_lock=held[1], claimer=name)
            completed.append(held[0])
    finally:
        session.close()
    Path(out).write_text(json.dumps(completed))


def run_a_worker(url: str, name: str, prefetch: int, barrier: Barrier, out: str) -> None:
    """A kb.Worker (2 slots, ``prefetch``) draining the board; the ids its handler saw."""
    seen: list[int] = []

    def handler(task: kb.Task) -> str:
        seen.append(task.id)
        return "ok"

    worker = kb.Worker(handler, url=url, claimer=name, concurrency=2, prefetch=prefetch, drain=True)
    barrier.wait(timeout=60)
    stats = worker.run()
    assert stats.completed == len(seen), stats
    Path(out).write_text(json.dumps(seen))


def hold_one_task(url: str, marker: str, ttl_seconds: float | None = None) -> None:
    """Run a kb.Worker whose handler signals through ``marker`` that it holds its task,
    then never returns: the test kills or stops this process."""
    import time

    def handler(task: kb.Task) -> str:
        Path(marker).write_text(json.dumps({"task": task.id, "token": task.claim_lock}))
        while True:
            time.sleep(3600)

    kb.Worker(handler, url=url, ttl_seconds=ttl_seconds, idle_max=0.25).run()


def hold_one_task_aio(url: str, marker: str, ttl_seconds: float | None = None) -> None:
    """:func:`hold_one_task` with an aio.Worker: its handler's coroutine signals through
    ``marker`` that it holds its task, then never returns."""
    import asyncio

    from kanban_orm import aio

    async def handler(task: kb.Task) -> str:
        Path(marker).write_text(json.dumps({"task": task.id, "token": task.claim_lock}))
        while True:
            await asyncio.sleep(3600)

    asyncio.run(aio.Worker(handler, url=url, ttl_seconds=ttl_seconds, idle_max=0.25).run())


def write_back_to_back(url: str, count: int, bound: int, barrier: Barrier, out: str) -> None:
    """``count`` create_task commits without a pause, with the WAL bounded at ``bound``
    bytes and looked at after every commit (tests/test_wal_bound.py)."""
    from kanban_orm.backends import sqlite

    sqlite.WAL_BOUND_BYTES = bound
    sqlite.WAL_CHECK_SECONDS = 0.0
    session = kb.connect(url, keep_connection=True)
    try:
        barrier.wait(timeout=60)
        for i in range(count):
            kb.create_task(session, title=f"back to back #{i}")
    finally:
        session.close()
    Path(out).write_text(json.dumps(count))
