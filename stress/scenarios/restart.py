"""The PostgreSQL server restarts under the workers; nothing raw reaches them.

The scenario starts a private server of its own on a spare port (see
:mod:`stress.pgserver`; ``--db`` is refused: the shared server is never restarted).
Workers claim (TTL 10 s), work, heartbeat, work and complete; half of them connect anew
for every transaction (NullPool), so many calls meet a connection being set up. The
parent restarts the server (``pg_ctl restart -m fast``) twice, when 30% and 60% of the
tasks are done, and terminates random worker backends (``pg_terminate_backend``) over
the run, preferring backends younger than 50 ms: ones still in connection set-up.

A worker catches kanban errors only. A typed error is logged and the call tried again
after a pause (a completion inside :func:`kanban_orm.db.resolving_unknown_outcome`
after an error, as the Worker does, until its lease ends); a raw driver error kills the
worker, which fails the run. At the end every task is done exactly once, every run is
closed, and the board is consistent.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import db

from .. import invariants as inv
from ..harness import DB_ERROR, DB_ERRORS, Check, Config, Outcome, WorkerContext, one_line
from ..pgserver import PrivateServer
from .mixed import CLAIM_LOST, KANBAN_ERROR, all_done, replay_check, unfinished

DESCRIPTION = (
    "(PostgreSQL, a private server) restart the server twice and terminate backends, "
    "also mid-connect: no raw error reaches a worker, every task done once"
)
TTL_SECONDS = 10.0
RESTART_AT = (0.3, 0.6)
TERMINATIONS = 12
#: A backend this young is most likely still in connection set-up.
YOUNG_MS = 50
IDLE_MS = (5.0, 20.0)
BACKOFF_SECONDS = (0.05, 0.5)
#: The server the parent started for this run (only in the parent).
_server: PrivateServer | None = None


@contextmanager
def database(db_url: str | None, keep: bool) -> Iterator[str]:
    """A private PostgreSQL server for the run, removed afterwards."""
    global _server
    if db_url:
        raise kb.InvalidInput(
            "the restart scenario starts and restarts a private server of its own; "
            "it takes no --db (it would never restart a server it did not start)"
        )
    with PrivateServer() as server:
        kb.init_db(server.url)
        _server = server
        try:
            yield server.url
        finally:
            _server = None
            kb.dispose_engines()
            if keep:
                print("the private server is removed with the run; --keep-db keeps nothing")


def setup(session: Session, config: Config) -> None:
    for i in range(config.tasks):
        kb.create_task(session, title=f"restart #{i}")


# -- in the parent ------------------------------------------------------------------------


class Disturber:
    """Restarts the private server at RESTART_AT shares of the tasks done, and terminates
    TERMINATIONS random worker backends spread over the run."""

    def __init__(self, config: Config) -> None:
        if _server is None:
            raise kb.InvalidInput("the restart scenario runs on its own private server")
        self.server = _server
        self.config = config
        self.random = random.Random(config.seed * 31 + 7)
        self.restart_at = [share * config.tasks for share in RESTART_AT]
        self.terminate_at = sorted(
            self.random.uniform(0.05, 0.9) * config.tasks for _ in range(TERMINATIONS)
        )
        self.engine = sa.create_engine(self.server.url, poolclass=sa.pool.NullPool)
        self.numbers: dict[str, Any] = {
            "restarts": 0,
            "restart_seconds": [],
            "terminations": 0,
            "terminated_in_set_up": 0,
        }

    def _done(self) -> int:
        try:
            with self.engine.connect() as conn:
                done = conn.execute(
                    select(sa.func.count()).where(kb.Task.status == kb.Status.DONE.value)
                ).scalar_one()
                return int(done)
        except sa.exc.DBAPIError:
            return -1

    def step(self) -> None:
        if not self.restart_at and not self.terminate_at:
            return
        done = self._done()
        if self.restart_at and done >= self.restart_at[0]:
            self.restart_at.pop(0)
            started = time.monotonic()
            self.server.restart()
            self.numbers["restarts"] += 1
            self.numbers["restart_seconds"].append(round(time.monotonic() - started, 2))
        if self.terminate_at and done >= self.terminate_at[0]:
            self.terminate_at.pop(0)
            self._terminate_one()

    def _terminate_one(self) -> None:
        """Terminate a young backend (in connection set-up) if one shows up within a
        second, else any worker backend."""
        find = sa.text(
            "SELECT pid, (now() - backend_start) < make_interval(secs => :young) AS young "
            "FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        deadline = time.monotonic() + 1.0
        try:
            with self.engine.connect() as conn:
                while True:
                    rows = conn.execute(find, {"young": YOUNG_MS / 1000}).all()
                    conn.rollback()
                    young = [r for r in rows if r.young]
                    pool = young or (rows if time.monotonic() > deadline else [])
                    if pool:
                        pid, is_young = self.random.choice(pool)
                        conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                        conn.rollback()
                        self.numbers["terminations"] += 1
                        self.numbers["terminated_in_set_up"] += int(bool(is_young))
                        return
                    if time.monotonic() > deadline + 1.0:
                        return
                    time.sleep(0.001)
        except sa.exc.DBAPIError:
            return

    def close(self) -> None:
        self.engine.dispose()
        # The parent's own pooled connections died with the restarts; its checks that
        # follow read with plain ORM queries, which do not retry.
        kb.dispose_engines()


def disturber(config: Config) -> Disturber:
    return Disturber(config)


# -- in a worker --------------------------------------------------------------------------


def _pause(worker: WorkerContext, tries: int) -> None:
    low, high = BACKOFF_SECONDS
    time.sleep(min(high, low * 2**tries) * worker.random.uniform(0.5, 1.0))


def work(worker: WorkerContext) -> None:
    pool = sa.pool.NullPool if worker.index % 2 else sa.pool.QueuePool
    engine = kb.create_engine(worker.config.db_url, poolclass=pool)
    session = kb.session_factory(engine)()
    tries = 0
    try:
        while not worker.out_of_time():
            try:
                task = kb.claim_next(session, claimer=worker.name, ttl_seconds=TTL_SECONDS)
            except DB_ERRORS as error:
                _typed(worker, "claim", None, error)
                _pause(worker, tries)
                tries += 1
                continue
            tries = 0
            if task is None:
                try:
                    if unfinished(session) == 0:
                        return
                except DB_ERRORS as error:
                    _typed(worker, "poll", None, error)
                time.sleep(worker.random.uniform(*IDLE_MS) / 1000)
                continue
            token = str(task.claim_lock)
            worker.log("claimed", task=task.id, run_id=task.current_run_id, claim_lock=token)
            _finish(worker, session, task.id, token, task.current_run_id)
    finally:
        session.close()
        engine.dispose()


def _typed(worker: WorkerContext, during: str, task: int | None, error: BaseException) -> None:
    worker.log(DB_ERROR, task=task, during=during, type=type(error).__name__, error=one_line(error))


def _finish(
    worker: WorkerContext, session: Session, task_id: int, token: str, run_id: int | None
) -> None:
    lease_until = time.monotonic() + TTL_SECONDS
    worker.work_pause()
    try:
        kb.heartbeat(session, task_id, claim_lock=token, ttl_seconds=TTL_SECONDS)
        lease_until = time.monotonic() + TTL_SECONDS
    except DB_ERRORS as error:
        _typed(worker, "heartbeat", task_id, error)  # the lease still runs: go on
    except kb.ClaimLost as error:
        lost = {"run_id": run_id, "claim_lock": token, "error": str(error)}
        worker.log(CLAIM_LOST, task=task_id, op="heartbeat", **lost)
        return
    worker.work_pause()
    unknown = False
    tries = 0
    while True:
        try:
            if unknown:
                with db.resolving_unknown_outcome():
                    kb.complete_task(session, task_id, claim_lock=token, result=worker.name)
            else:
                kb.complete_task(session, task_id, claim_lock=token, result=worker.name)
        except DB_ERRORS as error:
            _typed(worker, "complete", task_id, error)
            unknown = unknown or isinstance(error, kb.DatabaseUnavailable)
            if time.monotonic() > lease_until:
                return  # the lease is over: the task is reclaimed and done again
            _pause(worker, tries)
            tries += 1
            continue
        except kb.ClaimLost as error:
            lost = {"run_id": run_id, "claim_lock": token, "error": str(error)}
            worker.log(CLAIM_LOST, task=task_id, op="completed", **lost)
            return
        except kb.KanbanError as error:
            worker.log(KANBAN_ERROR, task=task_id, during="complete", error=one_line(error))
            return
        worker.log("completed", task=task_id, run_id=run_id, claim_lock=token)
        return


# -- invariants ---------------------------------------------------------------------------


def typed_errors(outcome: Outcome) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in outcome.entries(DB_ERROR):
        name = str(entry.get("type", "?"))
        counts[name] = counts.get(name, 0) + 1
    return counts


def checks(outcome: Outcome, session: Session) -> list[Check]:
    board = inv.board_violations(session)
    events = inv.load_events(session)
    runs = inv.load_runs(session)
    tasks = session.execute(select(kb.Task.id, kb.Task.status)).all()
    session.rollback()
    open_runs = [f"run {r.id} of task {r.task_id} is open" for r in runs.values() if not r.outcome]
    twice = inv.completed_once(events, [t.id for t in tasks])
    holder = inv.completions_by_holders(
        events, runs, list(outcome.entries("claimed")), list(outcome.entries("completed"))
    )
    false_lost = inv.refusals_after_reclaim(list(outcome.entries(CLAIM_LOST)), runs)
    kernel = [f"{e['worker']} {e['during']}: {e['error']}" for e in outcome.entries(KANBAN_ERROR)]
    wanted = len([s for s in RESTART_AT if s * outcome.config.tasks >= 1])
    outcome.numbers.update(
        {
            "raw_exceptions": len(outcome.casualties),
            "typed_errors": typed_errors(outcome),
            "reclaims": sum(1 for e in events if e.kind == "reclaimed"),
            "claim_lost": sum(1 for _ in outcome.entries(CLAIM_LOST)),
        }
    )
    return [
        all_done(tasks, outcome.config.tasks, "1."),
        Check("2. each task completed exactly once", not twice, inv.sample(twice)),
        Check("3. every run closed with an outcome", not open_runs, inv.sample(open_runs)),
        Check("4. board consistent", not board, inv.sample(board)),
        replay_check(events, "5."),
        Check("6. every completion came from its claim holder", not holder, inv.sample(holder)),
        Check(
            "7. every ClaimLost refused a reclaimed claim, none a completion that landed",
            not false_lost,
            inv.sample(false_lost),
        ),
        Check(
            f"8. the server was restarted {wanted} times mid-run",
            outcome.numbers.get("restarts", 0) >= wanted,
            f"{outcome.numbers.get('restarts', 0)} restarts",
        ),
        Check(
            "9. no raw driver error reached a worker (each would have killed it); "
            "no other kernel error",
            not outcome.casualties and not kernel,
            "; ".join(
                [*outcome.casualties, inv.sample(kernel, 2)] if kernel else outcome.casualties
            ),
        ),
    ]
