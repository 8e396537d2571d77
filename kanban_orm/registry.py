"""Registered workers, and the release of a dead worker's claims before their leases end.

A :class:`~kanban_orm.worker.Worker` registers itself when it starts
(:class:`Registration`): one ``kanban_workers`` row with its claimer, host, pid and
start, and, on PostgreSQL and MySQL/MariaDB, a lock named by the row's id, held on a
connection the worker keeps for that alone. Every claim it makes names the row
(``kanban_task_runs.worker_id``).

The server frees that lock when the connection ends, which happens when the process
dies: a SIGKILL closes its sockets at once. A live worker keeps it however slow it is,
and so does a stopped one (SIGSTOP): the kernel keeps its connection open. So another
worker that finds the lock free has proof, and :func:`release_dead` takes the claims
back at once, through the same compare-and-swap as a lease reclaim (run ``reclaimed``,
attempt counted, one ``reclaimed`` event naming the worker). A server restart frees
every lock: a lock taken before the server started proves nothing, and its claims wait
for their leases. On SQLite the proof is the pid, on the host the worker registered
from: no process holds it, or the one that does started at another time (see
:mod:`kanban_orm.processes`).

Whoever claims looks (:func:`kanban_orm.service.claim_many`, at most every
:data:`DEAD_CHECK_SECONDS` per process while its claims succeed, and whenever they
fall short), and so does :func:`kanban_orm.service.release_stale_claims`. Fencing
guards the rest: a worker whose lock connection broke while it lived finds its claims
gone at its next heartbeat or completion (:class:`~kanban_orm.errors.ClaimLost`).
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from . import backends, db, processes, steps
from . import queries as q
from . import validation as check
from .backends.base import WRITE_OPTION
from .driver import Tx
from .errors import KanbanError

log = logging.getLogger("kanban_orm.registry")

#: A claimer looks for dead workers' claims at least this often while its claims keep
#: succeeding (and whenever they fall short): the bound on how long a dead worker's
#: claim waits, besides the next claimer's own poll.
DEAD_CHECK_SECONDS = 1.0
#: At most this many claims of registered workers are looked at per transaction.
DEAD_CLAIMS_BATCH = 1000
#: Ended workers' rows are forgotten this long after they ended (at each registration).
KEEP_ENDED_SECONDS = 7 * 24 * 3600.0

_last_check: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()


def check_due(engine: Engine) -> bool:
    """True at most once every :data:`DEAD_CHECK_SECONDS` per engine (this process)."""
    now = time.monotonic()
    if now - _last_check.get(engine, float("-inf")) < DEAD_CHECK_SECONDS:
        return False
    _last_check[engine] = now
    return True


# -- releasing the claims of dead workers ------------------------------------------------


def release_dead(s: Tx, params: dict[str, Any]) -> int:
    """In the caller's write transaction: take back every claim held by a registered
    worker that is proven dead or has stopped, within the claim filters of ``params``
    (``only_assignee``, ``only_tenant``); how many were taken back."""
    by_assignee, by_tenant = "only_assignee" in params, "only_tenant" in params
    statement = q.worker_claims_statement(by_assignee, by_tenant)
    held = s.execute(statement, {**params, "limit": DEAD_CLAIMS_BATCH}).all()
    if not held:
        return 0
    holders = {row.worker_id: row for row in held}
    running = [row for row in holders.values() if row.stopped_at is None]
    dead = s.backend.dead_workers(s, running)
    if dead:
        s.execute(q.WORKER_ENDED, {"worker_ids": sorted(dead), "end_reason": "dead"})
    released = 0
    for row in held:
        if row.worker_id in dead:
            why = f"worker {row.worker_id} ({row.claimer}) died"
        elif row.stopped_at is not None:
            why = f"worker {row.worker_id} ({row.claimer}) stopped without finishing it"
        else:
            continue
        released += steps.reclaim(s, row, q.RECLAIM_HELD, why, {"worker": row.worker_id})
    if released:
        log.warning("released %s claim(s) of dead or stopped worker(s) %s", released, dead)
    return released


def release_dead_claims(session: Session) -> int:
    """Take back every claim held by a registered worker that is proven dead (or has
    stopped), before its lease ends; return how many. Each is reclaimed as an expired
    lease is (:func:`~kanban_orm.service.release_stale_claims`, which does this too)."""
    return db.run_write(session, lambda s: release_dead(s, {}))


# -- listing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerInfo:
    """A registered worker as :func:`list_workers` sees it. ``state`` is ``alive`` (not
    proven dead: on SQLite, a worker of another host always is), ``dead``, or
    ``stopped``; ``claims`` the number of tasks it holds."""

    id: int
    claimer: str
    host: str
    pid: int
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None
    state: str
    claims: int


def list_workers(session: Session, *, everyone: bool = False, limit: int = 100) -> list[WorkerInfo]:
    """The registered workers, newest first: those not ended, or with ``everyone`` the
    ended ones too (kept :data:`KEEP_ENDED_SECONDS`). Liveness is proven as the claim
    release proves it, so ``dead`` here means the next claimer releases its claims."""
    everyone = check.boolean(everyone, "everyone")
    limit = check.integer(limit, "limit", minimum=1)
    statement = q.LIST_WORKERS if everyone else q.LIST_LIVE_WORKERS

    def read(s: Session) -> list[WorkerInfo]:
        rows = s.execute(statement, {"limit": limit}).all()
        candidates = [_as_candidate(row) for row in rows if row.stopped_at is None]
        dead = backends.of(s).dead_workers(s, candidates)
        return [_info(row, dead) for row in rows]

    return db.run_read(session, read)


@dataclass(frozen=True)
class _Candidate:
    worker_id: int
    host: str
    pid: int
    process_start: str | None
    locked_at: datetime | None


def _as_candidate(row: Any) -> _Candidate:
    return _Candidate(row.id, row.host, row.pid, row.process_start, row.locked_at)


def _info(row: Any, dead: set[int]) -> WorkerInfo:
    if row.stopped_at is not None:
        state = row.end_reason or "stopped"
    else:
        state = "dead" if row.id in dead else "alive"
    return WorkerInfo(
        id=row.id,
        claimer=row.claimer,
        host=row.host,
        pid=row.pid,
        started_at=row.started_at,
        last_seen_at=row.last_seen_at,
        stopped_at=row.stopped_at,
        state=state,
        claims=int(row.claims or 0),
    )


# -- one worker's registration -------------------------------------------------------------


class Registration:
    """One worker process's row on the board and, where the backend proves liveness by
    a lock, the connection that holds it. :meth:`start` registers, :meth:`seen` (from
    the worker's heartbeat thread) records that the worker lives and registers again
    if the lock's connection was lost, :meth:`stop` ends the row and frees the lock.

    A registration that fails (the database away) is logged and tried again at the next
    :meth:`seen`; meanwhile :attr:`worker_id` is None and claims name no worker (they
    wait for their leases, as before workers registered).
    """

    def __init__(self, sessions: Callable[[], Session], claimer: str) -> None:
        self._sessions = sessions
        self.claimer = steps.claimer_name(claimer)
        #: The row's id while registered, else None.
        self.worker_id: int | None = None
        self._conn: Connection | None = None

    def start(self) -> int | None:
        """Register (see the class docstring); the new id, or None if it failed."""
        session: Session | None = None
        try:
            session = self._sessions()
            engine = session.get_bind()
            assert isinstance(engine, Engine), "a Worker's sessions are bound to an Engine"
            policy = db.retry_policy(session)
            with db.database_errors():
                self.worker_id = db.with_retry(lambda: self._register(engine), policy=policy)
        except KanbanError as error:
            log.warning("could not register this worker (%s); will try again", error)
            return None
        finally:
            if session is not None:
                session.close()
        log.info("registered as worker %s", self.worker_id)
        return self.worker_id

    def _register(self, engine: Engine) -> int:
        backend = backends.of(engine)
        conn = engine.connect().execution_options(**{WRITE_OPTION: True})
        try:
            with conn.begin():
                conn.execute(q.FORGET_ENDED_WORKERS, {"keep_seconds": KEEP_ENDED_SECONDS})
                inserted = conn.execute(
                    q.INSERT_WORKER,
                    {
                        "claimer": self.claimer,
                        "host": processes.host_name(),
                        "pid": os.getpid(),
                        "process_start": processes.start_mark(),
                    },
                )
                key = inserted.inserted_primary_key
                assert key is not None
                worker_id = int(key[0])
                # In the registering transaction: no one sees the row before the lock.
                backend.lock_worker(conn, worker_id)
        except BaseException:
            conn.close()
            raise
        if backend.liveness_lock:
            self._conn = conn  # kept open: its end is the proof of death
        else:
            conn.close()
        return worker_id

    def seen(self) -> None:
        """Record that the worker lives (``last_seen_at``), on the lock's own connection
        where there is one, which also tests it; register again if it was lost."""
        if self.worker_id is None:
            self.start()
            return
        try:
            with db.database_errors():
                if self._conn is None:
                    session = self._sessions()
                    try:
                        db.run_write(session, lambda s: s.execute(q.WORKER_SEEN, self._me()))
                    finally:
                        session.close()
                    return
                with self._conn.begin():
                    self._conn.execute(q.WORKER_SEEN, self._me())
        except KanbanError as error:
            if self._conn is None:
                log.warning("worker %s: could not record it alive: %s", self.worker_id, error)
                return
            # The lock went with its connection: others may take this worker for dead
            # and release its claims (fencing makes its late outcomes harmless).
            log.warning(
                "worker %s: liveness connection lost (%s); registering again", self.worker_id, error
            )
            self._close()
            self.worker_id = None
            self.start()

    def stop(self) -> None:
        """End the row (``stopped``) and free the lock. Safe to call twice."""
        worker_id, self.worker_id = self.worker_id, None
        if worker_id is None:
            return
        ended = {"worker_ids": [worker_id], "end_reason": "stopped"}
        session = self._sessions()
        try:
            db.run_write(session, lambda s: s.execute(q.WORKER_ENDED, ended))
        except KanbanError as error:
            log.warning("worker %s: could not record its stop: %s", worker_id, error)
        finally:
            session.close()
            self._close()

    def _me(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id}

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()  # never back to the pool still holding the lock
            finally:
                conn.close()
