"""kanban_orm.aio: the same API on AsyncSession (aiosqlite, psycopg async, asyncmy), on
every backend: joining the host's transaction, cancellation, the retry layer's waits on
the loop, exactly-once claims across processes, and aio.Worker's outcome rules."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import os
import signal
import threading
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.util import await_only

import kanban_orm as kb
from kanban_orm import aio, backends, greenlets
from kanban_orm.models import Task, TaskRun

from . import workers
from .conftest import REPO_ROOT
from .helpers import board_violations, snapshot
from .test_concurrency import SPAWN, run_processes

T = TypeVar("T")


def on_loop(db_url: str, body: Callable[[AsyncEngine], Awaitable[T]], **engine_kw: Any) -> T:
    """``body(engine)`` on a fresh event loop, with an AsyncEngine for ``db_url``."""

    async def main() -> T:
        engine = aio.create_engine(db_url, **engine_kw)
        try:
            return await body(engine)
        finally:
            assert checked_out(engine) == 0, "a connection was left checked out"
            await engine.dispose()

    return asyncio.run(main())


def checked_out(engine: AsyncEngine) -> int:
    """Connections of the engine's pool in use (a NullPool keeps no count: 0)."""
    count = getattr(engine.pool, "checkedout", None)
    return int(count()) if count is not None else 0


# -- the API ---------------------------------------------------------------------------------


def session_functions() -> list[str]:
    names = []
    for name in kb.__all__:
        function = getattr(kb, name)
        if inspect.isfunction(function):
            parameters = list(inspect.signature(function).parameters)
            if parameters and parameters[0] == "session":
                names.append(name)
    return names


def test_every_session_function_is_awaitable_with_the_same_arguments() -> None:
    assert sorted(aio.TRANSITION_NAMES) == sorted(session_functions())
    for name in aio.TRANSITION_NAMES:
        sync, awaitable = getattr(kb, name), getattr(aio, name)
        assert inspect.iscoroutinefunction(awaitable), name
        sync_params = list(inspect.signature(sync).parameters.values())
        async_params = list(inspect.signature(awaitable).parameters.values())
        assert async_params[0].annotation is AsyncSession, name
        assert async_params[1:] == sync_params[1:], name
    assert set(aio.__all__) <= set(dir(aio))


def test_plain_urls_get_the_async_driver(tmp_path: Path) -> None:
    drivers = {
        f"sqlite:///{tmp_path}/a.db": "sqlite+aiosqlite",
        "postgresql://u@h/d": "postgresql+psycopg",
        "postgres://u@h/d": "postgresql+psycopg",
        "mysql://u@h/d": "mysql+asyncmy",
        "mysql+mysqldb://u@h/d": "mysql+asyncmy",
        "mariadb://u@h/d": "mariadb+asyncmy",
    }
    for url, driver in drivers.items():
        engine = aio.create_engine(url)
        assert engine.url.drivername == driver, url
        assert engine.sync_engine.dialect.is_async


def test_a_sync_session_is_refused(session: Session) -> None:
    with pytest.raises(kb.InvalidInput, match="AsyncSession"):
        asyncio.run(aio.get_task(session, 1))  # type: ignore[arg-type]


def test_the_same_transitions_errors_and_events(db_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        async with aio.session_factory(engine)() as s:
            parent = await aio.create_task(s, title="parent", priority=2)
            child = await aio.create_task(s, title="child", parents=[parent])
            assert (await aio.get_task(s, child)).status == "todo"
            task = await aio.claim_next(s, claimer="w")
            assert task is not None and task.id == parent and task.claim_lock
            assert await aio.claim_task(s, parent, claimer="other") is None
            expires = await aio.heartbeat(s, parent, claim_lock=task.claim_lock)
            assert expires >= task.claim_expires
            with pytest.raises(kb.ClaimLost):
                await aio.complete_task(s, parent, claim_lock="not-the-token")
            with pytest.raises(kb.TaskNotFound):
                await aio.get_task(s, 10_000)
            with pytest.raises(kb.InvalidTransition):
                await aio.approve_task(s, parent)
            done = await aio.complete_task(s, parent, claim_lock=task.claim_lock, result="ok")
            assert (done.status, done.result) == ("done", "ok")
            assert (await aio.get_task(s, child)).status == "ready"
            await aio.add_comment(s, child, body="hi")
            assert [c.body for c in await aio.list_comments(s, task_id=child)] == ["hi"]
            kinds = [e.kind for e in await aio.list_events(s, task_id=parent)]
            assert kinds == ["created", "claimed", "completed"]
            assert (await aio.board_stats(s))["by_status"]["ready"] == 1
            assert await aio.current(engine) == kb.head()
        with kb.connect(db_url) as sync:
            assert board_violations(sync) == []

    on_loop(db_url, body)


# -- the host's transaction --------------------------------------------------------------------


@pytest.fixture
def orders(db_url: str) -> Iterator[sa.Table]:
    """A host table of the test's own, beside the kanban tables."""
    metadata = sa.MetaData()
    table = sa.Table(
        "kanban_aio_orders",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("task_id", sa.Integer),
    )
    engine = kb.cached_engine(db_url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    yield table
    metadata.drop_all(engine)


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])
def test_enqueue_inside_the_host_transaction(db_url: str, orders: sa.Table, commit: bool) -> None:
    class Refused(Exception):
        pass

    async def body(engine: AsyncEngine) -> None:
        async with aio.session_factory(engine)() as session:
            try:
                async with session.begin():
                    await session.execute(orders.insert().values(id=1))
                    task_id = await aio.create_task(session, title="ship order 1")
                    await aio.add_comment(session, task_id, body="paid")
                    await session.execute(orders.update().values(task_id=task_id))
                    if not commit:
                        raise Refused
            except Refused:
                pass

    on_loop(db_url, body)
    with kb.connect(db_url) as sync:
        rows = sync.execute(sa.select(orders)).all()
        tasks = kb.list_tasks(sync)
        if commit:
            assert [(o.id, o.task_id) for o in rows] == [(1, tasks[0].id)]
            assert len(kb.list_comments(sync, task_id=tasks[0].id)) == 1
        else:
            assert rows == [] and tasks == []
            assert all(rows == [] for rows in snapshot(sync).values())


# -- cancellation ------------------------------------------------------------------------------


def test_cancelled_mid_claim_leaves_no_claim_and_no_connection(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's statements have run, its transaction is open, when the caller is
    cancelled (twice): the transaction rolls back instead of committing, and the
    connection is back in the pool before CancelledError reaches the caller. (Where the
    claim is a single autocommitted statement there is no "mid": it landed whole.)"""
    backend = type(backends.named(sa.make_url(db_url).get_backend_name()))
    claim = backend.claim_next
    inside = threading.Event()
    go_on: asyncio.Event | None = None
    released = threading.Event()

    def claim_then_wait(self: Any, *args: Any, **kw: Any) -> Any:
        rows = claim(self, *args, **kw)
        inside.set()
        # The transaction is open, the task claimed in it. aiosqlite runs the whole
        # transaction in its connection's thread, which waits there instead.
        if greenlets.in_async_greenlet():
            assert go_on is not None
            await_only(go_on.wait())
        else:
            assert released.wait(60)
        return rows

    async def body(engine: AsyncEngine) -> None:
        nonlocal go_on
        go_on = asyncio.Event()
        async with aio.session_factory(engine)() as s:
            task_id = await aio.create_task(s, title="t")
            monkeypatch.setattr(backend, "claim_next", claim_then_wait)
            call = asyncio.create_task(aio.claim_next(s, claimer="w"))
            while not inside.is_set():
                await asyncio.sleep(0.01)
            call.cancel()
            await asyncio.sleep(0.01)
            call.cancel()  # twice: the rollback is not cut short either
            go_on.set()
            released.set()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert checked_out(engine) == 0
            monkeypatch.setattr(backend, "claim_next", claim)
            task = await aio.get_task(s, task_id)
            if backend.autocommits_one_statement:
                # PostgreSQL's claim is one statement, committed as it ran: whole.
                assert (task.status, task.attempts) == ("running", 1)
                assert len(await aio.list_runs(s, task_id=task_id)) == 1
                return
            assert (task.status, task.claim_lock, task.attempts) == ("ready", None, 0)
            assert await aio.list_runs(s, task_id=task_id) == []
            again = await aio.claim_next(s, claimer="w")  # the session still works
            assert again is not None and again.id == task_id

    on_loop(db_url, body)
    with kb.connect(db_url) as sync:
        assert board_violations(sync) == []


def test_cancelled_at_random_points_leaves_a_consistent_board(db_url: str) -> None:
    async def body(engine: AsyncEngine) -> int:
        sessions = aio.session_factory(engine)
        async with sessions() as s:
            for i in range(40):
                await aio.create_task(s, title=f"t{i}")
        cancelled = 0
        for i in range(40):
            async with sessions() as s:
                call = asyncio.create_task(claim_and_complete(s))
                await asyncio.sleep(0.0005 * (i % 10))
                call.cancel()
                try:
                    await call
                except asyncio.CancelledError:
                    cancelled += 1
            assert checked_out(engine) == 0
        return cancelled

    async def claim_and_complete(s: AsyncSession) -> None:
        task = await aio.claim_next(s, claimer="w")
        if task is not None and task.claim_lock is not None:
            await aio.complete_task(s, task.id, claim_lock=task.claim_lock)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cancelled = on_loop(db_url, body)
        gc.collect()  # a connection lost mid-return is reported when collected
    assert cancelled > 0
    assert [str(w.message) for w in caught if "connection" in str(w.message)] == []
    with kb.connect(db_url) as sync:
        assert board_violations(sync) == []


# -- the loop is never stalled -------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_retry_backoff_waits_on_the_loop_not_in_time_sleep(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite with no busy timeout: a writer that finds the lock taken fails at once and
    the retry layer backs off. On the loop's thread that wait must be the loop's (the
    ticker keeps running), never time.sleep, which would stop every coroutine."""
    blocking: list[float] = []
    real_sleep = time.sleep

    def watched_sleep(seconds: float) -> None:
        if _loop_running_here():
            blocking.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", watched_sleep)
    holder = sa.create_engine(db_url, connect_args={"isolation_level": None})

    async def body(engine: AsyncEngine) -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticking = asyncio.create_task(ticker())
        with holder.connect() as locked:
            locked.exec_driver_sql("BEGIN IMMEDIATE")
            async with aio.session_factory(engine)() as s:
                create = asyncio.create_task(aio.create_task(s, title="waits"))
                while ticks < 2000:
                    await asyncio.sleep(0.005)
                    assert not create.done()
                locked.exec_driver_sql("COMMIT")
                task_id = await create
        ticking.cancel()
        return task_id

    assert on_loop(db_url, body, busy_timeout_ms=0) == 1
    holder.dispose()
    assert blocking == []


def _loop_running_here() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def test_a_worker_lets_a_lag_probe_tick_throughout(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe coroutine beside aio.Worker(concurrency=10): every blocking sleep on the
    loop's thread is recorded (none may happen), and the probe ran between the tasks."""
    blocking: list[float] = []
    real_sleep = time.sleep

    def watched_sleep(seconds: float) -> None:
        if _loop_running_here():
            blocking.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", watched_sleep)

    async def body(engine: AsyncEngine) -> tuple[kb.WorkerStats, int]:
        sessions = aio.session_factory(engine)
        async with sessions() as s:
            for i in range(60):
                await aio.create_task(s, title=f"t{i}")
        ticks = 0

        async def probe() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        async def handler(task: Task) -> str:
            await asyncio.sleep(0.001)
            return "ok"

        probing = asyncio.create_task(probe())
        stats = await aio.Worker(handler, sessions=sessions, concurrency=10, drain=True).run()
        probing.cancel()
        return stats, ticks

    stats, ticks = on_loop(db_url, body, pool_size=11)
    assert (stats.claimed, stats.completed) == (60, 60)
    assert ticks > 0
    assert blocking == []


# -- processes --------------------------------------------------------------------------------


@pytest.mark.slow
def test_5_processes_of_20_coroutines_claim_every_task_exactly_once(
    db_url: str, session: Session, tmp_path: Path
) -> None:
    task_ids = [kb.create_task(session, title=f"t{i}", priority=i % 3) for i in range(300)]
    procs = 5
    barrier = SPAWN.Barrier(procs)
    outs = [str(tmp_path / f"aio-{n}.json") for n in range(procs)]
    run_processes(
        workers.drain_with_aio, [(db_url, f"p{n}", 20, barrier, outs[n]) for n in range(procs)]
    )
    completed = Counter(tid for out in outs for tid in json.loads(Path(out).read_text()))
    assert sorted(completed) == sorted(task_ids)
    assert set(completed.values()) == {1}
    kinds = Counter(e.kind for e in kb.list_events(session))
    assert kinds == {"created": 300, "claimed": 300, "completed": 300}
    assert board_violations(session) == []


# -- aio.Worker --------------------------------------------------------------------------------


def test_worker_outcomes_are_kb_worker_s(db_url: str) -> None:
    async def body(engine: AsyncEngine) -> tuple[kb.WorkerStats, list[Task]]:
        sessions = aio.session_factory(engine)
        async with sessions() as s:
            for title in ("ok", "fails", "gives-up", "empty", "bad-result"):
                await aio.create_task(s, title=title)

        async def handler(task: Task) -> Any:
            await asyncio.sleep(0)
            if task.title == "fails":
                raise ValueError("boom")
            if task.title == "gives-up":
                raise kb.TaskFailed("no stock", retry=False)
            if task.title == "bad-result":
                return 42
            return None if task.title == "empty" else f"done {task.id}"

        worker = aio.Worker(handler, sessions=sessions, concurrency=3, drain=True)
        stats = await worker.run()
        async with sessions() as s:
            return stats, await aio.list_tasks(s, status=None)

    stats, tasks = on_loop(db_url, body)
    assert (stats.claimed, stats.completed, stats.failed) == (5, 2, 3)
    by_title = {t.title: t for t in tasks}
    assert by_title["ok"].result == f"done {by_title['ok'].id}"
    assert by_title["empty"].status == "done" and by_title["empty"].result is None
    assert by_title["fails"].status == "ready"
    assert by_title["gives-up"].status == by_title["bad-result"].status == "blocked"
    with kb.connect(db_url) as sync:
        errors = {t: kb.latest_run(sync, by_title[t].id).error or "" for t in by_title}  # type: ignore[union-attr]
    assert "ValueError: boom" in errors["fails"] and errors["gives-up"] == "no stock"
    assert "result refused" in errors["bad-result"]


def test_worker_stops_on_sigterm_and_hands_back_what_outlives_the_grace(db_url: str) -> None:
    async def body(engine: AsyncEngine) -> tuple[kb.WorkerStats, list[Task], bool]:
        sessions = aio.session_factory(engine)
        async with sessions() as s:
            for i in range(3):
                await aio.create_task(s, title=f"t{i}")
        started = asyncio.Event()
        ran, cancelled = [], []

        async def handler(task: Task) -> str:
            ran.append(task.id)
            started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(task.id)
                raise
            return "never"

        worker = aio.Worker(handler, sessions=sessions, concurrency=3, grace_seconds=0.2)
        running = asyncio.create_task(worker.run())
        await started.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        stats = await running
        async with sessions() as s:
            tasks = await aio.list_tasks(s)
        return stats, tasks, sorted(cancelled) == sorted(ran)

    previous = signal.getsignal(signal.SIGTERM)
    # Claims still in flight at the signal are handed back without running.
    stats, tasks, all_cancelled = on_loop(db_url, body)
    assert signal.getsignal(signal.SIGTERM) == previous
    assert stats.claimed >= 1 and stats.released == stats.claimed and all_cancelled
    assert {t.status for t in tasks} == {"ready"}
    with kb.connect(db_url) as sync:
        assert board_violations(sync) == []


def test_a_lost_lease_cancels_the_handler_and_drops_its_outcome(db_url: str) -> None:
    async def body(engine: AsyncEngine) -> tuple[kb.WorkerStats, Task, bool]:
        sessions = aio.session_factory(engine)
        async with sessions() as s:
            task_id = await aio.create_task(s, title="t")
        claimed: asyncio.Queue[Task] = asyncio.Queue()
        cancelled = asyncio.Event()

        async def handler(task: Task) -> str:
            claimed.put_nowait(task)
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "never"

        worker = aio.Worker(handler, sessions=sessions, heartbeat_seconds=0.05, drain=True)
        running = asyncio.create_task(worker.run())
        task = await claimed.get()
        assert task.claim_lock is not None
        # Someone takes the task over, in one transaction: between two, the worker's
        # next heartbeat could see its lease gone and claim the released task again.
        async with sessions() as other, other.begin():
            await aio.release_task(other, task.id, claim_lock=task.claim_lock)
            assert await aio.claim_task(other, task.id, claimer="someone else")
        stats = await running
        async with sessions() as s:
            return stats, await aio.get_task(s, task_id), cancelled.is_set()

    stats, task, was_cancelled = on_loop(db_url, body)
    assert was_cancelled
    assert (stats.claimed, stats.lost, stats.completed, stats.failed) == (1, 1, 0, 0)
    assert (task.status, task.result) == ("running", None)


@pytest.mark.parametrize("whose", ["task", "worker"])
def test_max_runtime_cancels_the_handler_and_fails_the_task(db_url: str, whose: str) -> None:
    async def body(engine: AsyncEngine) -> tuple[kb.WorkerStats, Task, list[TaskRun], bool]:
        sessions = aio.session_factory(engine)
        async with sessions() as s:
            task_id = await aio.create_task(
                s, title="t", max_attempts=1, max_runtime=0.3 if whose == "task" else None
            )
        cancelled = asyncio.Event()

        async def handler(task: Task) -> str:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "never"

        worker = aio.Worker(
            handler,
            sessions=sessions,
            drain=True,
            max_runtime=0.3 if whose == "worker" else 60,
        )
        stats = await asyncio.wait_for(worker.run(), 30)
        async with sessions() as s:
            task = await aio.get_task(s, task_id)
            runs = await aio.list_runs(s, task_id=task_id)
        return stats, task, runs, cancelled.is_set()

    stats, task, runs, was_cancelled = on_loop(db_url, body)
    assert was_cancelled
    assert (stats.claimed, stats.failed, stats.completed) == (1, 1, 0)
    assert task.status == "blocked"  # its one attempt used up
    assert [r.error for r in runs] == [
        f"max_runtime exceeded: the {whose}'s limit of 0.3s ran out; cancelled"
    ]


def test_worker_refuses_bad_arguments() -> None:
    async def handler(task: Task) -> None:
        return None

    with pytest.raises(kb.InvalidInput):
        aio.Worker(handler, concurrency=0)
    with pytest.raises(kb.InvalidInput, match="max_runtime"):
        aio.Worker(handler, max_runtime=0)
    with pytest.raises(kb.InvalidInput):
        aio.Worker("not callable")  # type: ignore[arg-type]
    with pytest.raises(kb.InvalidInput):
        aio.Worker(handler, url="sqlite://", sessions=lambda: None)  # type: ignore[arg-type,return-value]


def test_docs_name_every_aio_function() -> None:
    page = (REPO_ROOT / "docs" / "async.md").read_text()
    missing = [name for name in aio.__all__ if f"`{name}" not in page and name not in page]
    assert missing == []


# -- the stress suite --------------------------------------------------------------------------


@pytest.mark.slow
def test_stress_claims_on_the_async_api_holds_every_invariant(db_url: str, tmp_path: Path) -> None:
    from .test_stress import run_stress

    code, report, output = run_stress(
        "claims",
        "--api",
        "async",
        "--db",
        db_url,
        *("--workers", "3", "--tasks", "40", "--work-ms", "0-3", "--seed", "7"),
        tmp_path=tmp_path,
    )
    assert code == 0, output
    assert report["ok"] and len(report["invariants"]) == 6
    assert report["claims"] == report["completes"] == 40


@pytest.mark.parametrize(
    "args",
    [
        ["mixed", "--api", "async"],
        ["--api", "async", "--claim-impl", "tests.racy_claim:claim_task"],
    ],
)
def test_stress_api_async_is_for_the_claims_scenario(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from stress.__main__ import main

    monkeypatch.syspath_prepend(str(REPO_ROOT))
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert "--api async" in capsys.readouterr().err


def test_cancelling_worker_run_hands_the_running_tasks_back(db_url: str) -> None:
    async def body(engine: AsyncEngine) -> tuple[list[Task], int]:
        sessions = aio.session_factory(engine)
        async with sessions() as s:
            for i in range(2):
                await aio.create_task(s, title=f"t{i}")
        running: list[int] = []

        async def handler(task: Task) -> str:
            running.append(task.id)
            await asyncio.sleep(3600)
            return "never"

        worker = aio.Worker(handler, sessions=sessions, concurrency=2)
        work = asyncio.create_task(worker.run())
        while len(running) < 2:
            await asyncio.sleep(0.01)
        work.cancel()
        with pytest.raises(asyncio.CancelledError):
            await work
        async with sessions() as s:
            return await aio.list_tasks(s), worker.stats.released

    tasks, released = on_loop(db_url, body)
    assert [t.status for t in tasks] == ["ready", "ready"] and released == 2


@pytest.mark.backends("sqlite")
def test_an_aiosqlite_transition_is_one_hop_to_the_driver_thread(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiosqlite runs each call in its connection's thread: a transition runs there
    whole (its BEGIN, statements and COMMIT), not a hop per statement; the other hop is
    the pool's reset of the returned connection."""
    import aiosqlite.core

    hops: list[str] = []
    execute = aiosqlite.core.Connection._execute

    async def counted(self: Any, fn: Any, *args: Any, **kw: Any) -> Any:
        hops.append(getattr(fn, "__name__", repr(fn)))
        return await execute(self, fn, *args, **kw)

    async def body(engine: AsyncEngine) -> tuple[list[int], Task | None]:
        async with aio.session_factory(engine)() as s:
            for title in ("a", "b"):
                await aio.create_task(s, title=title)
            # The first call opens the pooled connection (and sets it up): not counted.
            await aio.claim_next(s, claimer="w")
            monkeypatch.setattr(aiosqlite.core.Connection, "_execute", counted)
            task = await aio.claim_next(s, claimer="w")
            per_call = [len(hops)]
            assert task is not None and task.claim_lock is not None
            await aio.complete_task(s, task.id, claim_lock=task.claim_lock, result="r")
            per_call.append(len(hops) - per_call[0])
            monkeypatch.undo()
            return per_call, await aio.get_task(s, task.id)

    per_call, done = on_loop(db_url, body)
    assert per_call == [2, 2]
    assert done is not None and (done.status, done.result) == ("done", "r")


def test_worker_registers_while_it_runs_and_its_claims_name_it(db_url: str) -> None:
    async def body(engine: AsyncEngine) -> tuple[list[kb.WorkerInfo], list[kb.WorkerInfo]]:
        sessions = aio.session_factory(engine)
        async with sessions() as s:
            await aio.create_task(s, title="t")
        seen: list[kb.WorkerInfo] = []

        async def handler(task: Task) -> str:
            async with sessions() as s:
                seen.extend(await aio.list_workers(s))
            return "ok"

        await aio.Worker(handler, sessions=sessions, drain=True).run()
        async with sessions() as s:
            return seen, await aio.list_workers(s, everyone=True)

    running, ended = on_loop(db_url, body)
    assert [(w.state, w.pid, w.claims) for w in running] == [("alive", os.getpid(), 1)]
    assert [(w.id, w.state) for w in ended] == [(running[0].id, "stopped")]
    with kb.connect(db_url) as sync:
        (task,) = kb.list_tasks(sync, status=None)
        assert kb.list_runs(sync, task_id=task.id)[0].worker_id == running[0].id


def test_wait_for_ready_waits_on_the_loop_and_wakes_for_a_new_task(db_url: str) -> None:
    async def body(engine: AsyncEngine) -> tuple[bool, bool, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beat = asyncio.create_task(ticker())
        sessions = aio.session_factory(engine, keep_connection=True)
        empty = await aio.wait_for_ready(engine, timeout=0.3)
        async with sessions() as s:

            async def create_soon() -> None:
                await asyncio.sleep(0.2)
                await aio.create_task(s, title="t")

            maker = asyncio.create_task(create_soon())
            found = await aio.wait_for_ready(s, timeout=30)
            await maker
        beat.cancel()
        return empty, found, ticks

    empty, found, ticks = on_loop(db_url, body)
    assert (empty, found) == (False, True)
    assert ticks >= 10  # the loop kept running while both waits lasted


def test_aio_has_the_schema_aliases_and_refuses_a_bad_bind() -> None:
    assert (aio.schema_check, aio.schema_current) == (aio.check, aio.current)
    with pytest.raises(kb.InvalidInput):
        asyncio.run(aio.wait_for_ready(5))  # type: ignore[arg-type]
    with pytest.raises(kb.InvalidInput):
        aio.session_factory("sqlite://")  # type: ignore[arg-type]
