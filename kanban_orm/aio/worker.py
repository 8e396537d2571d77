"""aio.Worker: :class:`kanban_orm.Worker`'s rules, its slots as coroutines on one loop.

Only the loop mechanics are written here: slots, the heartbeat task, the stop and the
grace period, signals. What to record for a handler's outcome (complete, fail with a
traceback or a :class:`~kanban_orm.TaskFailed`'s message, release, skip a lost claim),
the retries of a recording across an outage and the shutdown's hand-backs are
:class:`kanban_orm.Worker`'s own methods, run in SQLAlchemy's asyncio greenlet: a
handler's coroutine is the sync Worker's handler there, awaited through ``await_only``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.util import await_only, greenlet_spawn

from .. import service
from .. import worker as sync_worker
from ..errors import InvalidInput
from ..models import Task
from ..worker import OUTAGE, WorkerStats
from ._run import run
from .engine import create_engine, session_factory

AsyncHandler = Callable[[Task], Awaitable[str | None]]

log = logging.getLogger("kanban_orm.worker")


class HandlerAbandoned(Exception):
    """A handler's coroutine cancelled by the Worker: its lease was lost, or the grace
    period of a stop ended (its outcome is not recorded)."""


class Worker:
    """Claim tasks and await ``handler(task)`` on each, ``concurrency`` at a time on the
    running event loop, until drained or stopped.

    The arguments and outcome rules are :class:`kanban_orm.Worker`'s (read there): the
    returned string completes the task, :class:`~kanban_orm.TaskFailed` or any other
    exception fails it, a lost lease cancels the handler's coroutine and drops its
    outcome, an outage is waited out, and a run longer than ``max_runtime`` (the
    Worker's or the task's own, the shorter) has its coroutine cancelled and its task
    failed. ``url`` (else the default URL) gets an AsyncEngine
    of the Worker's own with a pool as large as ``concurrency``, disposed when
    :meth:`run` returns; ``sessions`` (an ``async_sessionmaker``, see
    :func:`kanban_orm.aio.session_factory`) uses yours instead: size its pool for
    ``concurrency`` plus two. Housekeeping is not offered here: run
    :class:`kanban_orm.Housekeeper` beside it.
    """

    def __init__(
        self,
        handler: AsyncHandler,
        *,
        url: str | None = None,
        sessions: Callable[[], AsyncSession] | None = None,
        claimer: str | None = None,
        assignee: str | None = None,
        tenant: str | None = None,
        ttl_seconds: float | None = None,
        concurrency: int = 1,
        drain: bool = False,
        grace_seconds: float = 30.0,
        idle_min: float = 0.25,
        idle_max: float = 5.0,
        heartbeat_seconds: float | None = None,
        max_runtime: float | None = None,
    ) -> None:
        if url is not None and sessions is not None:
            raise InvalidInput("give the Worker a url or a session factory, not both")
        self.handler = handler
        self.url = url
        self._handlers = _Handlers(handler)
        #: The sync Worker whose rules this one runs (and validates the arguments).
        self._core = _Core(
            self,
            self._handlers,
            sessions=self._greenlet_session,
            claimer=claimer,
            assignee=assignee,
            tenant=tenant,
            ttl_seconds=ttl_seconds,
            concurrency=concurrency,
            drain=drain,
            grace_seconds=grace_seconds,
            idle_min=idle_min,
            idle_max=idle_max,
            heartbeat_seconds=heartbeat_seconds,
            max_runtime=max_runtime,
        )
        #: Failures of overrun tasks being recorded on the loop (see _Core).
        self._overruns: set[asyncio.Task[None]] = set()
        self._given_sessions = sessions
        self._sessions: Callable[[], AsyncSession] | None = sessions
        self._engine: AsyncEngine | None = None
        self._stopped: asyncio.Event | None = None

    # -- what kb.Worker has -------------------------------------------------------------

    @property
    def claimer(self) -> str:
        return self._core.claimer

    @property
    def concurrency(self) -> int:
        return self._core.concurrency

    @property
    def stats(self) -> WorkerStats:
        """Tasks claimed and how each claim ended, so far."""
        return self._core.stats

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (a long handler may poll this)."""
        return self._core.stopping

    def stop(self, *, immediately: bool = False) -> None:
        """Stop claiming; running handlers get ``grace_seconds`` (none if
        ``immediately``). Safe from a signal handler, the loop or another thread."""
        self._core.stop(immediately=immediately)

    async def run(self) -> WorkerStats:
        """Work until drained (``drain=True`` and nothing claimable) or stopped.

        SIGTERM and SIGINT act as :meth:`stop` while this runs in the main thread (a
        second one as ``stop(immediately=True)``); the handlers found before are put
        back after. Returns the counts; an unexpected error while claiming stops the
        worker and is raised from here. Cancelling ``run()`` itself hands the running
        tasks back at once (the claims are released, not left to expire).
        """
        core = self._core
        self._handlers.started()
        self._stopped = asyncio.Event()
        if self._sessions is None:
            # A connection per slot, the heartbeats' and the registration's lock.
            self._engine = create_engine(self.url, pool_size=core.concurrency + 2)
            self._sessions = session_factory(self._engine)
        # On the board while it runs, as kb.Worker: its claims name it, and when this
        # process dies the next claimer proves it dead and takes them back at once.
        await greenlet_spawn(core.registration.start)
        restore = self._handle_signals()
        slots = [
            asyncio.create_task(self._slot(), name=f"kanban-worker-{i}")
            for i in range(core.concurrency)
        ]
        beats = asyncio.create_task(self._heartbeats(), name="kanban-heartbeat")
        try:
            await self._until_stopped(slots)
        finally:
            running = [slot for slot in slots if not slot.done()]
            if running:
                # run() cancelled: no more claims, handlers cancelled and their tasks
                # handed back, as at the end of a grace period; a slot recording an
                # outcome finishes it.
                core.stop(immediately=True)
                await greenlet_spawn(core._abandon_running)
                await asyncio.wait(running, timeout=2.0)
            for slot in slots:
                slot.cancel()  # a slot still running now would not end by itself
            await asyncio.gather(*slots, return_exceptions=True)
            beats.cancel()
            await asyncio.gather(beats, return_exceptions=True)
            await asyncio.gather(*self._overruns, return_exceptions=True)
            restore()
            await greenlet_spawn(core.registration.stop)
            if self._engine is not None:
                await self._engine.dispose()
                self._engine, self._sessions = None, self._given_sessions
        if core._error is not None:
            raise core._error
        return core.stats

    async def _until_stopped(self, slots: list[asyncio.Task[None]]) -> None:
        core = self._core
        assert self._stopped is not None
        while not all(slot.done() for slot in slots):
            if core._stop_at is not None:
                self._stopped.set()  # wakes the idle slots
                if time.monotonic() >= core._stop_at:
                    await greenlet_spawn(core._abandon_running)
                    break
            # A short wait, as kb.Worker's: stop() may come from a thread or a signal.
            await asyncio.wait(slots, timeout=0.05)
        # Abandoned handlers were cancelled: their slots end within a beat.
        running = [slot for slot in slots if not slot.done()]
        if running:
            await asyncio.wait(running, timeout=2.0)

    def _handle_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        loop = asyncio.get_running_loop()
        installed = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            try:
                loop.add_signal_handler(signum, self._on_signal)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # no signals on this loop (Windows' proactor, for one)
            installed.append((signum, previous))

        def restore() -> None:
            for signum, previous in installed:
                loop.remove_signal_handler(signum)
                if previous is not None:
                    signal.signal(signum, previous)

        return restore

    def _on_signal(self) -> None:
        self.stop(immediately=self._core._stop_at is not None)

    # -- the loop of one slot -------------------------------------------------------------

    async def _slot(self) -> None:
        core = self._core
        assert self._sessions is not None
        session = self._sessions()
        idle = core.idle_min
        durations = sync_worker._Average()
        #: Tasks this slot holds claimed and has not started: claimed with the last
        #: completion (registered for heartbeats, handed back if the worker stops).
        waiting: deque[sync_worker._Job] = deque()
        try:
            while not core.stopping:
                if not waiting:
                    try:
                        claimed = await run(
                            session,
                            service.claim_many,
                            claimer=core.claimer,
                            limit=1,
                            assignee=core.assignee,
                            tenant=core.tenant,
                            ttl_seconds=core.ttl_seconds,
                            worker_id=core.registration.worker_id,
                        )
                    except OUTAGE as error:
                        core._outage.failed("claim", error)
                        await self._idle(idle)
                        idle = min(core.idle_max, idle * 2)
                        continue
                    core._outage.ok()
                    if not claimed:
                        if core.drain:
                            return
                        await self._idle(idle)
                        idle = min(core.idle_max, idle * 2)
                        continue
                    idle = core.idle_min
                    waiting.extend(core._hold(task) for task in claimed)
                    if core.stopping:  # stop() came while the claim was in flight
                        break
                # The completion does not claim the next task in its transaction, as a
                # kb.Worker slot's does: measured with 50 slots on PostgreSQL, it gave
                # the same tasks/s and doubled the event loop's lag p99 (a longer stretch
                # of the loop's thread per call). The slot's own claim above follows.
                job = waiting.popleft()
                more = await run(session, core._work_on, job, claim_next=False, durations=durations)
                waiting.extend(core._hold(task) for task in more)
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            if core._error is None:
                core._error = error
            core.stop()
        finally:
            try:
                if waiting:
                    await run(session, core._hand_back, waiting)
            finally:
                await session.close()

    async def _idle(self, seconds: float) -> None:
        assert self._stopped is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)

    # -- leases ---------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        core = self._core
        session: AsyncSession | None = None
        try:
            while True:
                await asyncio.sleep(core.heartbeat_seconds)
                try:
                    await greenlet_spawn(core.registration.seen)
                except Exception as error:  # the leases below matter more
                    log.warning("could not record this worker alive: %r", error)
                with core._jobs_lock:
                    jobs = [job for job in core._jobs.values() if not job.settled]
                if jobs and session is None:
                    assert self._sessions is not None
                    session = self._sessions()
                for job in jobs:
                    assert session is not None
                    await run(session, core._beat, job)
        finally:
            if session is not None:
                await session.close()

    # -- max_runtime ----------------------------------------------------------------------

    def record_overrun(self, job: sync_worker._Job, error: str) -> None:
        """Fail an overrun task on the event loop: kb.Worker's timer thread cannot use an
        AsyncSession (its handler was cancelled already, on the loop too)."""
        loop = self._handlers.loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._start_overrun, job, error)

    def _start_overrun(self, job: sync_worker._Job, error: str) -> None:
        recording = asyncio.ensure_future(self._fail_overrun(job, error))
        self._overruns.add(recording)
        recording.add_done_callback(self._overruns.discard)

    async def _fail_overrun(self, job: sync_worker._Job, error: str) -> None:
        assert self._sessions is not None
        session = self._sessions()
        try:
            await run(session, self._core._record, job, error=error, retry=True)
        except Exception as failure:  # the lease ends it, as any unrecorded outcome
            log.warning("task %s: could not record %s: %r", job.task.id, error, failure)
        finally:
            await session.close()

    def _greenlet_session(self) -> Session:
        """A Session for kb.Worker's own calls (its shutdown's releases), which run in
        the asyncio greenlet: an AsyncSession's sync side."""
        assert self._sessions is not None
        return self._sessions().sync_session


class _Core(sync_worker.Worker):
    """kb.Worker's rules, with an overrun task failed on aio.Worker's event loop."""

    def __init__(self, owner: Worker, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner

    def _record_overrun(self, job: sync_worker._Job, error: str) -> None:
        self._owner.record_overrun(job, error)


class _Handlers:
    """The async handler as kb.Worker sees a handler: called in the slot's greenlet, it
    runs the coroutine as a task of its own and awaits it; ``cancel`` (a lost lease, the
    end of the grace period) cancels that task."""

    def __init__(self, handler: AsyncHandler) -> None:
        if not callable(handler):
            raise InvalidInput(f"handler must be callable, not {type(handler).__name__}")
        self._handler = handler
        self._running: dict[int, asyncio.Task[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def started(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    def __call__(self, task: Task) -> str | None:
        return await_only(self._run(task))

    async def _run(self, task: Task) -> str | None:
        running = asyncio.ensure_future(self._awaited(task))
        self._running[task.id] = running
        try:
            # wait(), not await: a cancelled slot (run() cancelled) cancels the handler
            # and hands the task back (kb.Worker's BaseException path) only once the
            # handler has ended.
            await asyncio.wait([running])
        except asyncio.CancelledError:
            running.cancel()
            with contextlib.suppress(BaseException):
                await running
            raise
        finally:
            self._running.pop(task.id, None)
        if running.cancelled():
            raise HandlerAbandoned(f"task {task.id}: the handler was cancelled")
        return running.result()

    async def _awaited(self, task: Task) -> str | None:
        outcome = self._handler(task)
        if not inspect.isawaitable(outcome):
            raise TypeError(
                f"an aio.Worker handler returns an awaitable (async def), not "
                f"{type(outcome).__name__}; use kanban_orm.Worker for a sync handler"
            )
        return await outcome

    def cancel(self, task: Task) -> None:
        """Cancel the task's handler (kb.Worker calls this from a thread, or the loop)."""
        if self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._cancel_now(task.id)
        else:
            self._loop.call_soon_threadsafe(self._cancel_now, task.id)

    def _cancel_now(self, task_id: int) -> None:
        running = self._running.get(task_id)
        if running is not None:
            running.cancel()
