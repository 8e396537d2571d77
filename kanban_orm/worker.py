"""The worker loop: claim a task, run a handler on it, heartbeat meanwhile, record the outcome.

:class:`Worker` runs in-process handlers (``handler(task) -> str | None``);
``kanban-orm work -- CMD ARGS...`` is the same loop with a :class:`CommandHandler`, which
runs CMD once per task. The rules, for both:

* up to ``concurrency`` tasks at a time, each in its own thread and Session; claims go
  through :func:`~kanban_orm.service.claim_many` with the worker's assignee/tenant filter;
* while a handler runs, its lease is renewed every ``ttl/3`` seconds; if a heartbeat finds
  the claim lost (the lease expired and was reclaimed), the handler's outcome is dropped
  and a cancellable handler is cancelled;
* a handler that returns completes the task with the returned string as its result, and
  a slot that will claim again claims its next task in the same transaction
  (:func:`~kanban_orm.service.complete_and_claim_many`; a stopping worker completes
  only); one that raises fails it (:func:`~kanban_orm.service.fail_task`, so the task is
  retried with backoff until ``max_attempts``, then blocked). :class:`TaskFailed` sets
  the error text and whether to retry; any other exception records its traceback's
  tail. A result the kernel refuses (not a string, NUL characters) fails the task with the reason;
* :class:`~kanban_orm.errors.ClaimLost` while completing or failing is logged and skipped:
  the task belongs to someone else now;
* the database going away (:class:`~kanban_orm.errors.DatabaseUnavailable`: a restart, an
  outage; also :class:`~kanban_orm.errors.DatabaseBusy` and
  :class:`~kanban_orm.errors.DatabaseReadOnly`) stops nothing: the outage is logged once
  when it starts and once when it ends, claims back off as when idle, heartbeats are
  tried again at the next beat, and a handler's outcome is recorded as soon as the
  database is back, if that is before the lease ends (after it, the task is reclaimed
  and run again: at-least-once). A recording whose earlier try lost its connection
  checks whether that try had landed, so it is not mistaken for a lost claim;
* each slot keeps its pooled connection between calls (a
  :class:`~kanban_orm.db.KeepingSession`), unless the engine's pool is too small to lend
  every slot one (a Worker given ``sessions`` uses them as they are);
* with ``prefetch=N`` a slot whose handlers are short (N + 1 of them take less than one
  heartbeat interval) claims up to N + 1 tasks at once and runs them one after another.
  The ones waiting hold their leases like a running one: the heartbeat thread renews
  them, and a stopping worker releases them at once (outcome ``released``, no attempt
  counted), so a Worker never holds more than ``concurrency * (1 + prefetch)`` claims.
  Their completions are buffered and committed together, with the next batch's claim
  (:func:`~kanban_orm.service.complete_many_and_claim_many`), when the batch ends or
  once the oldest has waited :data:`ACK_DELAY_SECONDS`; a buffered task is counted and
  logged as completed only once that commit is done, its lease is renewed until then,
  and a worker that dies first has its tasks run again (at-least-once, as always);
* when nothing is claimable a slot sleeps until a task may have become ready (the
  process's wake-up, :mod:`kanban_orm.wakeup`: NOTIFY on PostgreSQL, a change check on
  SQLite and MariaDB), or at the latest for its backoff (``idle_min`` doubling to
  ``idle_max``), the safety poll; with ``drain=True`` it stops instead, and
  :meth:`Worker.run` returns once every slot has stopped;
* :meth:`Worker.stop` stops claiming and gives running handlers ``grace_seconds`` to
  finish. Those still running then are abandoned: a cancellable handler (one with a
  ``cancel(task)`` method, like :class:`CommandHandler`) is cancelled, and the task is
  handed back with :func:`~kanban_orm.service.release_task` (run outcome ``released``,
  no attempt counted). An in-process handler that cannot be cancelled keeps running in
  its (daemon) thread, but its outcome is ignored;
* the worker registers itself on the board while it runs (:mod:`kanban_orm.registry`)
  and its claims name it, so when it dies (SIGKILL, a crash) the next claimer proves it
  dead and takes its claims back at once instead of at lease expiry;
* a run that outlasts its limit (the task's ``max_runtime``, or the worker's, whichever
  is shorter) is cancelled like an abandoned one and the task failed with an error
  naming the limit (retried as any failure is).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from . import db, greenlets, registry, service, steps, wakeup
from . import validation as check
from .errors import (
    ClaimLost,
    DatabaseBusy,
    DatabaseReadOnly,
    DatabaseUnavailable,
    InvalidInput,
    KanbanError,
)
from .maintenance import Housekeeper
from .models import Task

# The JSON shapes lived here; still importable from this module.
from .serialize import comment_json, event_json, iso, run_json, task_json  # noqa: F401

log = logging.getLogger("kanban_orm.worker")

#: The most tasks a slot may hold claimed beside the one it runs (``prefetch``).
MAX_PREFETCH = 100

#: The longest a prefetching slot keeps a finished task's completion buffered while the
#: next handlers of its batch run (unless one of them runs longer): the completions are
#: committed together, with the next claim, when the batch ends or once this has passed.
ACK_DELAY_SECONDS = 0.1

#: Connections of the engine's pool a Worker leaves free when its slots keep theirs
#: (the heartbeat thread, the housekeeper and a caller's own sessions use them).
POOL_HEADROOM = 3

#: How much of a traceback or of a command's stderr is kept as a failed run's error.
ERROR_TAIL_CHARS = 4000

Handler = Callable[[Task], str | None]
T = TypeVar("T")

#: What the worker waits out instead of stopping: the database restarting or away, its
#: locks, a SQLite file made read-only for a while.
OUTAGE = (DatabaseUnavailable, DatabaseBusy, DatabaseReadOnly)


class TaskFailed(Exception):
    """Raised by a handler to fail its task with exactly ``message`` as the error.

    ``retry=False`` blocks the task at once instead of retrying it. What no database
    column can hold is escaped, as in every error the worker records: a NUL as ``\\x00``,
    a lone surrogate as ``\\udcxx``; an empty message is recorded as such.
    """

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.retry = bool(retry)


@dataclass
class WorkerStats:
    """What a :meth:`Worker.run` did: tasks claimed and how each claim ended."""

    claimed: int = 0
    completed: int = 0
    failed: int = 0
    released: int = 0
    lost: int = 0

    def __str__(self) -> str:
        return (
            f"{self.claimed} claimed, {self.completed} completed, {self.failed} failed, "
            f"{self.released} released, {self.lost} lost"
        )


@dataclass
class _Job:
    task: Task
    claim_lock: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: set once the outcome is decided (by the handler's thread, a lost heartbeat or
    #: the end of the grace period); whoever sets it first records the outcome.
    settled: bool = False
    #: time.monotonic() by which the lease has surely expired (renewed by heartbeats):
    #: recording the outcome across an outage is pointless after it.
    lease_until: float = 0.0
    #: the handler returned and its completion waits in the slot's buffer: settled, yet
    #: still heartbeated until the completion commits.
    buffered: bool = False
    #: time.monotonic() when the handler returned (a buffered completion's age).
    returned_at: float = 0.0


class _Outage:
    """Logs an outage once, when it starts, and once when the database is back; the
    threads of one Worker share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None

    def failed(self, what: str, error: KanbanError) -> None:
        with self._lock:
            first, self._since = self._since is None, self._since or time.monotonic()
        if first:
            log.warning("%s: %s; backing off until the database is back", what, error)

    def ok(self) -> None:
        if self._since is None:
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            log.warning("the database is back after %.1fs; resuming", time.monotonic() - since)


class _Average:
    """A slot's recent handler time: an exponentially weighted mean, None before any."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float | None = None

    def add(self, seconds: float) -> None:
        self.value = seconds if self.value is None else 0.8 * self.value + 0.2 * seconds


def _pool_capacity(engine: Any) -> float:
    """How many connections the engine's pool lends at once (QueuePool: its size plus
    its overflow); unbounded for a pool that does not say."""
    size = getattr(engine.pool, "size", None)
    overflow = getattr(engine.pool, "_max_overflow", None)
    if not callable(size) or not isinstance(overflow, int) or overflow < 0:
        return float("inf")
    return float(size() + overflow)


def default_claimer() -> str:
    """``host:pid``: unique among live workers, and readable in a run's ``claimer``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    """Claim tasks and run ``handler`` on each until drained or stopped.

    ``url`` (else ``KANBAN_DATABASE_URL``, else the default SQLite file) or ``sessions``,
    a callable returning a new Session (a ``sessionmaker`` from
    :func:`~kanban_orm.db.session_factory`), says where the board is. Each slot thread
    and the heartbeat thread use a Session of their own.

    ``ttl_seconds`` is the lease asked for on every claim and heartbeat (default: the
    configured claim TTL); heartbeats run every ``heartbeat_seconds`` (default
    ``ttl/3``). ``prefetch`` (0 to :data:`MAX_PREFETCH`, default 0) lets each slot hold
    that many claimed tasks beside the one it runs while its handlers are short.
    ``housekeeping=True`` also runs a :class:`~kanban_orm.maintenance.Housekeeper` (prune
    on the ``KANBAN_RETENTION_*`` schedule) while the worker runs. ``max_runtime``
    (seconds) limits every run; a task's own ``max_runtime`` applies when shorter. See
    the module docstring for the outcome rules.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        url: str | None = None,
        sessions: Callable[[], Session] | None = None,
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
        housekeeping: bool = False,
        prefetch: int = 0,
        max_runtime: float | None = None,
    ) -> None:
        # Checked here, not when run() first uses them: a bad argument is the caller's
        # mistake to see at once, not a worker thread's to die of later.
        if not callable(handler):
            raise InvalidInput(f"handler must be callable, not {type(handler).__name__}")
        if url is not None and sessions is not None:
            raise InvalidInput("give the Worker a url or a session factory, not both")
        concurrency = check.integer(concurrency, "concurrency", minimum=1)
        grace_seconds = check.number(grace_seconds, "grace_seconds", infinity=True)
        idle_min = check.number(idle_min, "idle_min")
        idle_max = check.number(idle_max, "idle_max")
        if grace_seconds < 0 or idle_min <= 0 or idle_max < idle_min:
            raise InvalidInput("grace_seconds must be >= 0 and 0 < idle_min <= idle_max")
        self.handler = handler
        self.url = url
        self._sessions: Callable[[], Session] = sessions or (lambda: db.connect(url))
        #: Slots keep their pooled connection between calls when the Worker makes its own
        #: sessions (see _slot_session); a caller's factory is used as it is.
        self._own_sessions = sessions is None
        self.prefetch = check.integer(prefetch, "prefetch", minimum=0)
        if self.prefetch > MAX_PREFETCH:
            raise InvalidInput(f"prefetch must be at most {MAX_PREFETCH}, not {self.prefetch}")
        self.claimer = default_claimer() if claimer is None else steps.claimer_name(claimer)
        self.assignee = check.name(assignee, "assignee")
        self.tenant = check.name(tenant, "tenant")
        self.ttl_seconds = ttl_seconds
        lease = check.ttl(ttl_seconds)  # the claims would refuse a bad TTL anyway
        self._lease = lease
        if heartbeat_seconds is not None:
            heartbeat_seconds = check.number(heartbeat_seconds, "heartbeat_seconds")
            if not heartbeat_seconds > 0:
                raise InvalidInput(f"heartbeat_seconds must be positive, not {heartbeat_seconds}")
        self.heartbeat_seconds = heartbeat_seconds or lease / 3
        self._ack_delay = min(ACK_DELAY_SECONDS, self.heartbeat_seconds)
        self.max_runtime = check.runtime_limit(max_runtime, "max_runtime")
        self.concurrency = concurrency
        self.drain = check.boolean(drain, "drain")
        self.grace_seconds = grace_seconds
        self.idle_min = idle_min
        self.idle_max = idle_max
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._stop_at: float | None = None  # monotonic deadline of the grace period
        self._jobs: dict[int, _Job] = {}
        self._jobs_lock = threading.Lock()
        self._error: BaseException | None = None
        self._done = threading.Event()  # run() is over: the heartbeat thread stops
        #: With ``housekeeping``, prune on the KANBAN_RETENTION_* schedule while running.
        self.housekeeper = (
            Housekeeper(sessions=self._sessions)
            if check.boolean(housekeeping, "housekeeping")
            else None
        )
        self._outage = _Outage()
        #: This worker's row on the board while it runs (kanban_orm.registry).
        self.registration = registry.Registration(self._sessions, self.claimer)

    # -- control --------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (a long handler may poll this)."""
        return self._stop_at is not None or self._stop.is_set()

    def stop(self, *, immediately: bool = False) -> None:
        """Stop claiming; running handlers get ``grace_seconds`` (none if ``immediately``).

        Safe to call from a signal handler or another thread; calling it again with
        ``immediately=True`` cuts the grace period short.
        """
        deadline = time.monotonic() + (0.0 if immediately else self.grace_seconds)
        if self._stop_at is None or deadline < self._stop_at:
            self._stop_at = deadline
        if threading.current_thread() is threading.main_thread():
            # Maybe from a signal handler, which runs between two bytecodes of this
            # thread, perhaps inside Event.set() holding the lock set() takes: it would
            # wait for itself. run() passes the request on (it looks every 0.05 s).
            return
        self._stop.set()

    def run(self) -> WorkerStats:
        """Work until drained (``drain=True`` and nothing claimable) or stopped.

        Returns the counts of what happened. An unexpected error while claiming stops
        the worker (gracefully, as :meth:`stop`) and is raised from here. A Ctrl-C
        (KeyboardInterrupt) while this waits acts as :meth:`stop`, a second one as
        ``stop(immediately=True)``. A Worker runs once; make a new one to run again.
        """
        slots = [
            threading.Thread(target=self._slot, name=f"kanban-worker-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        beats = threading.Thread(target=self._heartbeats, name="kanban-heartbeat", daemon=True)
        if self._stop_at is not None:
            self._stop.set()  # stopped before it started: claim nothing
        self.registration.start()
        for thread in slots:
            thread.start()
        beats.start()
        if self.housekeeper is not None:
            self.housekeeper.start()
        try:
            while any(t.is_alive() for t in slots):
                if self._stop_at is not None:
                    self._stop.set()  # what stop() left to this loop (see there)
                    if time.monotonic() >= self._stop_at:
                        self._abandon_running()
                        break
                # A short sleep, not a blocking join: the main thread stays responsive
                # to signals and to stop() from another thread.
                try:
                    time.sleep(0.05)
                except KeyboardInterrupt:  # Ctrl-C: stop(); a second one: at once
                    self.stop(immediately=self._stop_at is not None)
            # Slots whose command was cancelled return at once; a slot stuck in an
            # in-process handler that cannot be cancelled is left behind (daemon).
            cancellable = getattr(self.handler, "cancel", None) is not None
            budget = time.monotonic() + (2.0 if cancellable else 0.5)
            for thread in slots:
                thread.join(max(0.0, budget - time.monotonic()))
        finally:
            self._stop.set()
            self._done.set()
            beats.join(5.0)
            self.registration.stop()
            if self.housekeeper is not None:
                self.housekeeper.stop(5.0)
        if self._error is not None:
            raise self._error
        return self.stats

    def _count(self, outcome: str) -> None:
        with self._jobs_lock:
            setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)

    # -- the loop of one slot -----------------------------------------------------------

    def _slot(self) -> None:
        session = self._slot_session()
        # The process's shared wake-up (kanban_orm.wakeup): an idle slot sleeps until
        # a task may have become ready; its backoff is only the safety poll.
        ready = wakeup.watch(session)
        idle = self.idle_min
        #: Tasks this slot holds claimed and has not started yet (prefetched): their
        #: jobs are registered, so the heartbeat thread renews their leases.
        waiting: deque[_Job] = deque()
        #: Prefetched tasks whose handler returned, their completions not yet committed.
        finished: list[tuple[_Job, Any]] = []
        handler_seconds = _Average()
        try:
            while not self.stopping:
                if not waiting:
                    # Left buffered only when the batch's last handler failed: committed
                    # now, not after an idle wait.
                    self._acknowledge(session, finished, 0)
                    seen = ready.mark()  # before the claim: a change during it still wakes
                    try:
                        claimed = service.claim_many(
                            session,
                            claimer=self.claimer,
                            limit=self._batch(handler_seconds),
                            assignee=self.assignee,
                            tenant=self.tenant,
                            ttl_seconds=self.ttl_seconds,
                            worker_id=self.registration.worker_id,
                        )
                    except OUTAGE as error:
                        # Not the end of the worker: back off (idle doubles up to
                        # idle_max) and claim again; the first failure of an outage is logged.
                        self._outage.failed("claim", error)
                        self._stop.wait(idle)
                        idle = min(self.idle_max, idle * 2)
                        continue
                    self._outage.ok()
                    if not claimed:
                        if self.drain:
                            return
                        ready.wait(seen, idle, self._stop)
                        idle = min(self.idle_max, idle * 2)
                        continue
                    idle = self.idle_min
                    waiting.extend(self._hold(task) for task in claimed)
                    if self.stopping:  # stop() came while the claim was in flight
                        return
                job = waiting.popleft()
                more = self._work_on(
                    session,
                    job,
                    claim_next=not waiting,
                    durations=handler_seconds,
                    finished=finished,
                )
                waiting.extend(self._hold(task) for task in more)
        except BaseException as error:
            if self._error is None:
                self._error = error
            # run() raises it; logged here only for the record of when it happened.
            log.debug("worker slot stopped by an unexpected error: %r", error)
            self.stop()
        finally:
            try:
                self._acknowledge(session, finished, 0)
                self._hand_back(session, waiting)
            finally:
                ready.release()
                session.close()

    def _slot_session(self) -> Session:
        """A slot's Session: one that keeps its pooled connection between calls (a
        checkout and check-in per call is a noticeable share of a short task's cost),
        unless the pool is too small to lend every slot one for good."""
        if not self._own_sessions:
            return self._sessions()
        engine = db.cached_engine(self.url)
        keep = self.concurrency + POOL_HEADROOM <= _pool_capacity(engine)
        return db.session_factory(engine, keep_connection=keep)()

    def _batch(self, handler_seconds: _Average) -> int:
        """How many tasks a slot claims at once: with ``prefetch``, 1 + prefetch while
        its handlers are short, that is while the batch is done within one heartbeat
        interval, so tasks held waiting never outnumber what the next heartbeat would
        renew anyway (they are heartbeated all the same, should a handler run long)."""
        if not self.prefetch or handler_seconds.value is None:
            return 1
        short = handler_seconds.value * (1 + self.prefetch) < self.heartbeat_seconds
        return 1 + self.prefetch if short else 1

    def _hold(self, task: Task) -> _Job:
        """A claimed task's job, registered for heartbeats from now on."""
        assert task.claim_lock is not None  # a claimed task holds its token
        job = _Job(task=task, claim_lock=task.claim_lock)
        job.lease_until = time.monotonic() + self._lease
        with self._jobs_lock:
            self._jobs[task.id] = job
            self.stats.claimed += 1
        log.info("task %s: claimed (attempt %s): %s", task.id, task.attempts, task.title)
        return job

    def _hand_back(self, session: Session, waiting: deque[_Job]) -> None:
        """Release the tasks a stopping slot holds and has not started."""
        while waiting:
            job = waiting.popleft()
            try:
                if self._settle(job):
                    self._release(session, job, "worker stopping")
            finally:
                with self._jobs_lock:
                    self._jobs.pop(job.task.id, None)

    def _work_on(
        self,
        session: Session,
        job: _Job,
        *,
        claim_next: bool,
        durations: _Average,
        finished: list[tuple[_Job, Any]] | None = None,
    ) -> list[Task]:
        """Run the handler on the job's task and record its outcome; the tasks claimed
        with the completion (``claim_next``: the slot holds nothing else). Given the
        slot's ``finished`` buffer, a completion joins it and is committed with the
        others when the batch ends (``claim_next``) or the oldest has waited
        :data:`ACK_DELAY_SECONDS` (see _acknowledge)."""
        task = job.task
        deadline = self._deadline(job)
        try:
            started = time.monotonic()
            try:
                result = self.handler(task)
            except TaskFailed as failure:
                self._finish(session, job, error=failure.message, retry=failure.retry)
            except Exception as error:
                self._finish(session, job, error=_traceback_tail(error), retry=True)
            except BaseException:
                # SystemExit / KeyboardInterrupt inside a handler: hand the task back.
                if self._settle(job):
                    self._release(session, job, "the handler was interrupted")
                raise
            else:
                ended = time.monotonic()
                durations.add(ended - started)
                limit = self._batch(durations) if claim_next else 0
                if finished is None or (claim_next and not finished):
                    return self._finish(session, job, result=result, claim_next=limit)
                if not self._settle(job):
                    log.info("task %s: handler finished after its claim was given up", task.id)
                else:
                    job.buffered, job.returned_at = True, ended
                    finished.append((job, result))
                oldest = finished[0][0] if finished else None
                if oldest is not None and (
                    claim_next or self.stopping or ended - oldest.returned_at >= self._ack_delay
                ):
                    return self._acknowledge(session, finished, limit)
        finally:
            if deadline is not None:
                deadline.cancel()
                deadline.join()  # a limit that ran out is recorded before the next claim
            if not job.buffered:
                with self._jobs_lock:
                    self._jobs.pop(task.id, None)
        return []

    def _acknowledge(
        self, session: Session, finished: list[tuple[_Job, Any]], claim_next: int
    ) -> list[Task]:
        """Commit the buffered completions in one transaction, claiming up to
        ``claim_next`` more with them unless the worker is stopping
        (:func:`~kanban_orm.service.complete_many_and_claim_many`); the tasks claimed.
        A batch refused as a whole (a claim lost, a result refused) is recorded task by
        task, which says which one and why."""
        batch, finished[:] = list(finished), []
        if not batch:
            return []
        try:
            if len(batch) == 1:
                job, result = batch[0]
                return self._record(session, job, result=result, claim_next=claim_next)
            return self._complete_batch(session, batch, claim_next)
        finally:
            with self._jobs_lock:
                for job, _ in batch:
                    job.buffered = False
                    self._jobs.pop(job.task.id, None)

    def _complete_batch(
        self, session: Session, batch: list[tuple[_Job, Any]], claim_next: int
    ) -> list[Task]:
        triples = [(job.task.id, job.claim_lock, result) for job, result in batch]

        def complete(limit: int) -> list[Task]:
            return service.complete_many_and_claim_many(
                session,
                triples,
                claimer=self.claimer,
                limit=0 if self.stopping else limit,
                assignee=self.assignee,
                tenant=self.tenant,
                ttl_seconds=self.ttl_seconds,
                worker_id=self.registration.worker_id,
            )

        # The lease that ends first bounds how long an outage is worth waiting out.
        first = min((job for job, _ in batch), key=lambda job: job.lease_until)
        try:
            claimed = self._recording(
                first, lambda: complete(claim_next), again=lambda: complete(0)
            )
        except (ClaimLost, InvalidInput):
            for job, result in batch:
                self._record(session, job, result=result)
            return []
        except KanbanError as failure:
            for job, _ in batch:
                log.error("task %s: could not record the outcome: %s", job.task.id, failure)
            return []
        with self._jobs_lock:
            self.stats.completed += len(batch)
        for job, _ in batch:
            log.info("task %s: completed", job.task.id)
        return claimed

    def _settle(self, job: _Job) -> bool:
        """Claim the right to record the job's outcome; False if it was decided already."""
        with job.lock:
            if job.settled:
                return False
            job.settled = True
            return True

    def _finish(
        self,
        session: Session,
        job: _Job,
        *,
        result: Any = None,
        error: str | None = None,
        retry: bool = True,
        claim_next: int = 0,
    ) -> list[Task]:
        """Record the handler's outcome; with ``claim_next`` (a limit), a completion also
        claims up to that many tasks, in the same transaction, unless the worker is
        stopping by then: the tasks it claimed."""
        if not self._settle(job):
            log.info("task %s: handler finished after its claim was given up; ignored", job.task.id)
            return []
        return self._record(
            session, job, result=result, error=error, retry=retry, claim_next=claim_next
        )

    def _record(
        self,
        session: Session,
        job: _Job,
        *,
        result: Any = None,
        error: str | None = None,
        retry: bool = True,
        claim_next: int = 0,
    ) -> list[Task]:
        """Record a settled job's outcome: complete its task (claiming up to
        ``claim_next`` more with it), or fail it with ``error``; the tasks claimed."""
        task_id = job.task.id
        try:
            if error is None:
                try:
                    claimed = self._complete(session, job, result, claim_next)
                except InvalidInput as refused:
                    error, retry = f"result refused: {refused}", False
                else:
                    self._count("completed")
                    log.info("task %s: completed", task_id)
                    return claimed
            stored = _storable(error)
            failed = self._recording(
                job,
                lambda: service.fail_task(
                    session, task_id, claim_lock=job.claim_lock, error=stored, retry=retry
                ),
            )
            self._count("failed")
            log.info("task %s: failed: %s; %s", task_id, _last_line(error), self._what_next(failed))
        except ClaimLost:
            self._count("lost")
            log.warning("task %s: claim lost before the outcome was recorded; skipped", task_id)
        except KanbanError as failure:
            # The lease was not renewed; the task will be reclaimed when it expires.
            log.error("task %s: could not record the outcome: %s", task_id, failure)
        return []

    def _complete(self, session: Session, job: _Job, result: Any, claim_next: int) -> list[Task]:
        """Complete the job's task, claiming up to ``claim_next`` more in the same
        transaction (:func:`~kanban_orm.service.complete_and_claim_many`) while the
        worker is not stopping. Tried again across an outage as a completion alone: a
        worker with its outcome unrecorded claims nothing new."""
        task_id, token = job.task.id, job.claim_lock

        def complete_only() -> list[Task]:
            service.complete_task(session, task_id, claim_lock=token, result=result)
            return []

        def complete_and_claim() -> list[Task]:
            if self.stopping:
                return complete_only()
            return service.complete_and_claim_many(
                session,
                task_id,
                claim_lock=token,
                result=result,
                claimer=self.claimer,
                limit=claim_next,
                assignee=self.assignee,
                tenant=self.tenant,
                ttl_seconds=self.ttl_seconds,
                worker_id=self.registration.worker_id,
            )

        first = complete_and_claim if claim_next else complete_only
        return self._recording(job, first, again=complete_only)

    def _what_next(self, failed: Task) -> str:
        """What becomes of a failed task: retried when (and whether a drain waits), or
        its new status."""
        retry_at = failed.run_at
        if failed.status != "ready" or retry_at is None or failed.updated_at is None:
            return f"now {failed.status}"
        # Both stamps are the database's clock: the backoff, free of this host's skew.
        wait = max(0.0, (retry_at - failed.updated_at).total_seconds())
        line = f"will be retried after {iso(retry_at)} (in {wait:.0f}s)"
        if self.drain:
            line += ", which this drain does not wait for"
        return line

    def _recording(
        self, job: _Job, record: Callable[[], T], *, again: Callable[[], T] | None = None
    ) -> T:
        """``record()`` (a fenced completion or failure), tried again (as ``again()``,
        if given) across an outage while the job's lease may still hold: a database
        back before the lease ends gets the handler's outcome. A try after one whose
        connection was lost asks whether that one's COMMIT had landed
        (db.resolving_unknown_outcome), so a landed outcome is not mistaken for a lost
        claim."""
        delay = self.idle_min
        unknown = False
        attempt = record
        while True:
            try:
                if not unknown:
                    recorded = attempt()
                else:
                    with db.resolving_unknown_outcome():
                        recorded = attempt()
            except OUTAGE as error:
                if time.monotonic() + delay >= job.lease_until:
                    raise  # the lease is over: the task will be reclaimed
                self._outage.failed(f"task {job.task.id}: recording its outcome", error)
                unknown = unknown or isinstance(error, DatabaseUnavailable)
                attempt = again or record
                greenlets.pause(delay)  # aio.Worker records outcomes on its event loop
                delay = min(self.idle_max, delay * 2)
            else:
                # An outcome recorded is the database back, even if no claim or
                # heartbeat has gone through yet (a stop may come before either does).
                self._outage.ok()
                return recorded

    def _release(self, session: Session, job: _Job, reason: str) -> None:
        """Hand the task back (the caller has settled the job)."""
        try:
            service.release_task(session, job.task.id, claim_lock=job.claim_lock, reason=reason)
            self._count("released")
            log.info("task %s: released (%s)", job.task.id, reason)
        except ClaimLost:
            self._count("lost")
            log.warning("task %s: claim lost before it could be released", job.task.id)
        except KanbanError as failure:
            log.error("task %s: could not release: %s", job.task.id, failure)

    # -- shutdown -----------------------------------------------------------------------

    def _abandon_running(self) -> None:
        """End of the grace period: cancel what still runs, then release its task."""
        with self._jobs_lock:
            jobs = list(self._jobs.values())
        if not jobs:
            return
        session = self._sessions()
        try:
            for job in jobs:
                # Settled first, so the killed command is not recorded as a failure by
                # its own thread; cancelled before the release, so the command is gone
                # before another worker can claim the task.
                if not self._settle(job):
                    continue
                self._cancel(job)
                why = f"worker stopped; grace period of {self.grace_seconds:g}s over"
                self._release(session, job, why)
        finally:
            session.close()

    def _cancel(self, job: _Job) -> None:
        cancel = getattr(self.handler, "cancel", None)
        if cancel is None:
            return
        try:
            cancel(job.task)
        except Exception as error:
            log.error("task %s: cancelling the handler failed: %r", job.task.id, error)

    # -- runtime limits -------------------------------------------------------------------

    def _deadline(self, job: _Job) -> threading.Timer | None:
        """A timer that ends the job when it outlasts its limit (None without one)."""
        limits = {"task": job.task.max_runtime, "worker": self.max_runtime}
        whose, limit = min(
            ((who, seconds) for who, seconds in limits.items() if seconds is not None),
            key=lambda pair: pair[1],
            default=(None, None),
        )
        if limit is None:
            return None
        error = f"max_runtime exceeded: the {whose}'s limit of {limit:g}s ran out; cancelled"
        timer = threading.Timer(limit, self._overran, (job, error))
        timer.daemon = True
        timer.start()
        return timer

    def _overran(self, job: _Job, error: str) -> None:
        """The run outlasted its limit: cancel the handler (a command's whole process
        group goes), then fail the task. An in-process handler that cannot be cancelled
        runs on in its thread, its outcome ignored."""
        if not self._settle(job):
            return
        log.warning("task %s: %s", job.task.id, error)
        self._cancel(job)
        self._record_overrun(job, error)

    def _record_overrun(self, job: _Job, error: str) -> None:
        """Fail an overrun job's task, from the timer's thread (aio.Worker records it on
        its event loop instead)."""
        session = self._sessions()
        try:
            self._record(session, job, error=error, retry=True)
        finally:
            session.close()

    # -- leases ---------------------------------------------------------------------------

    def _heartbeats(self) -> None:
        session: Session | None = None
        try:
            while not self._done.wait(self.heartbeat_seconds):
                self.registration.seen()
                with self._jobs_lock:
                    jobs = [job for job in self._jobs.values() if job.buffered or not job.settled]
                if jobs and session is None:
                    session = self._sessions()
                for job in jobs:
                    assert session is not None
                    self._beat(session, job)
        finally:
            if session is not None:
                session.close()

    def _beat(self, session: Session, job: _Job) -> None:
        try:
            service.heartbeat(
                session, job.task.id, claim_lock=job.claim_lock, ttl_seconds=self.ttl_seconds
            )
            job.lease_until = time.monotonic() + self._lease
            self._outage.ok()
        except ClaimLost:
            if self._settle(job):
                self._count("lost")
                log.warning("task %s: lease lost (reclaimed); cancelling its handler", job.task.id)
                # In a thread of its own: cancelling waits for the command to exit, and
                # the other leases must not wait for that.
                threading.Thread(target=self._cancel, args=(job,), daemon=True).start()
        except OUTAGE as error:  # tried again at the next beat
            self._outage.failed(f"task {job.task.id}: heartbeat", error)
        except Exception as error:
            log.warning("task %s: heartbeat failed: %s; will retry", job.task.id, error)


# -- running a command per task -----------------------------------------------------------


class CommandHandler:
    """A handler that runs ``argv`` once per task (what ``kanban-orm work`` runs).

    The command gets the task as JSON on stdin (see :func:`task_json`) and in its
    environment ``KANBAN_TASK_ID``, ``KANBAN_CLAIM_LOCK``, ``KANBAN_RUN_ID``,
    ``KANBAN_TASK_ATTEMPT`` and ``KANBAN_DATABASE_URL``. Exit status 0 completes the task
    with stdout as its result (one trailing newline dropped; empty means no result);
    any other status fails it with the tail of stderr as the error.

    The command runs in a session (process group) of its own, so a Ctrl-C at the
    terminal reaches the worker only, which then lets the command finish within the
    grace period. :meth:`cancel` sends SIGTERM to the group, then SIGKILL after
    ``kill_after`` seconds.
    """

    def __init__(self, argv: Sequence[str], *, url: str, kill_after: float = 5.0) -> None:
        if not argv:
            raise InvalidInput("CommandHandler needs a command to run")
        self.argv = list(argv)
        self.url = url
        self.kill_after = kill_after
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def __call__(self, task: Task) -> str | None:
        env = {
            **os.environ,
            "KANBAN_TASK_ID": str(task.id),
            "KANBAN_CLAIM_LOCK": task.claim_lock or "",
            "KANBAN_RUN_ID": str(task.current_run_id or ""),
            "KANBAN_TASK_ATTEMPT": str(task.attempts),
            db.ENV_URL: self.url,
        }
        stdin = json.dumps(task_json(task), ensure_ascii=False).encode() + b"\n"
        proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        with self._lock:
            self._procs[task.id] = proc
        try:
            try:
                out, err = proc.communicate(stdin)
            except BrokenPipeError:  # the command exited without reading its stdin
                out, err = proc.communicate()
        finally:
            with self._lock:
                self._procs.pop(task.id, None)
        if proc.returncode != 0:
            raise TaskFailed(_exit_error(proc.returncode, err))
        result = out.decode("utf-8", errors="replace")
        result = result[:-1] if result.endswith("\n") else result
        return result or None

    def cancel(self, task: Task) -> None:
        """Terminate the task's command (its whole process group) and wait for it."""
        with self._lock:
            proc = self._procs.get(task.id)
        if proc is None or proc.poll() is not None:
            return
        log.info("task %s: terminating %s (pid %s)", task.id, self.argv[0], proc.pid)
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(self.kill_after)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it has exited already
        os.killpg(proc.pid, signum)


def _exit_error(returncode: int, stderr: bytes) -> str:
    status = (
        f"killed by signal {-returncode}" if returncode < 0 else f"exited with status {returncode}"
    )
    tail = stderr.decode("utf-8", errors="replace").strip()[-ERROR_TAIL_CHARS:]
    return f"command {status}: {tail}" if tail else f"command {status}"


def _traceback_tail(error: BaseException) -> str:
    text = "".join(traceback.format_exception(error)).strip()
    return text[-ERROR_TAIL_CHARS:]


def _storable(error: object) -> str:
    """``error`` as fail_task takes it, whatever a handler or command produced: refusing
    it would leave the task running, its error lost, until its lease expired."""
    text = str(error).replace("\x00", "\\x00")
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if text.strip() else f"failed with an empty error message ({error!r})"


def _last_line(text: str) -> str:
    """A traceback's last line names the exception: the line worth logging."""
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""
