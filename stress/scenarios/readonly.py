"""The SQLite file becomes read-only for the workers, then writable again.

Workers run as an unprivileged user (``nobody`` when the harness runs as root: root
writes whatever the permissions say) and open the file anew for every call (NullPool:
a file's permissions are checked when it is opened). The parent keeps a connection of
its own open all along, so the ``-wal`` and ``-shm`` files stay (without them a process
that may not create them could not even read). When 30% of the tasks are done it makes
the database and those files read-only (0444), waits for writes already in flight, and
notes the newest event; READ_ONLY_SECONDS later it notes it again and makes them
writable (0666).

While read-only: reads work (workers poll the board), every write is refused with
DatabaseReadOnly at once (each refused call is timed, against the retry budget), a
completion refused is tried again until the file is writable (its lease outlasts the
read-only spell), and nothing is written. At the end every task is done exactly once.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.orm import Session

import kanban_orm as kb

from .. import invariants as inv
from ..harness import DB_ERROR, DB_ERRORS, Check, Config, Outcome, WorkerContext, one_line
from .mixed import CLAIM_LOST, KANBAN_ERROR, all_done, replay_check, unfinished

DESCRIPTION = (
    "(SQLite) make the database read-only for the workers mid-run: reads work, writes "
    "raise DatabaseReadOnly at once, nothing is written, writes resume after"
)
TTL_SECONDS = 15.0
READ_ONLY_AT = 0.3
READ_ONLY_SECONDS = 2.0
#: Writes begun before the chmod may still commit this long after it.
IN_FLIGHT_SECONDS = 0.5
#: A refusal slower than this was not "at once" (the retry budget is tens of seconds).
AT_ONCE_SECONDS = 1.0
NOBODY = 65534
IDLE_MS = (5.0, 20.0)
READ_OK = "read_ok"


def _files(db_url: str) -> list[Path]:
    path = Path(str(sa.make_url(db_url).database))
    return [path, Path(f"{path}-wal"), Path(f"{path}-shm")]


#: The parent's connection, held open from setup to the end of the run.
_holder: sqlite3.Connection | None = None


def setup(session: Session, config: Config) -> None:
    global _holder
    if session.get_bind().dialect.name != "sqlite":
        raise kb.InvalidInput("the readonly scenario runs on SQLite")
    for i in range(config.tasks):
        kb.create_task(session, title=f"readonly #{i}")
    files = _files(config.db_url)
    _holder = sqlite3.connect(files[0])
    _holder.execute("SELECT count(*) FROM kanban_tasks").fetchall()
    if files[0].parent.name.startswith("kanban_stress_"):  # the harness's temporary one
        files[0].parent.chmod(0o777)  # the workers' user may look in (and keep the lock)
    for path in files:
        path.chmod(0o666)


# -- in the parent ------------------------------------------------------------------------


def _newest_event(db_url: str) -> int:
    holder = sqlite3.connect(_files(db_url)[0])
    try:
        return int(
            holder.execute("SELECT coalesce(max(id), 0) FROM kanban_task_events").fetchone()[0]
        )
    finally:
        holder.close()


class Disturber:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.files = _files(config.db_url)
        self.engine = sa.create_engine(config.db_url, poolclass=sa.pool.NullPool)
        self.phase = "before"
        self.numbers: dict[str, Any] = {}
        self.read_only_at = 0.0

    def _chmod(self, mode: int) -> None:
        for path in self.files:
            if path.exists():
                path.chmod(mode)

    def _writable(self) -> None:
        self._chmod(0o666)

    def step(self) -> None:
        if self.phase == "before":
            with self.engine.connect() as conn:
                done = conn.execute(
                    select(sa.func.count()).where(kb.Task.status == kb.Status.DONE.value)
                ).scalar_one()
            if done >= READ_ONLY_AT * self.config.tasks:
                self._chmod(0o444)
                self.read_only_at = time.time()
                time.sleep(IN_FLIGHT_SECONDS)
                self.numbers["newest_event_at_read_only"] = _newest_event(self.config.db_url)
                self.numbers["read_only_from"] = self.read_only_at
                self.phase = "read-only"
        elif self.phase == "read-only" and time.time() - self.read_only_at >= READ_ONLY_SECONDS:
            self.numbers["newest_event_at_writable"] = _newest_event(self.config.db_url)
            self.numbers["read_only_until"] = time.time()
            self._writable()
            self.phase = "after"

    def close(self) -> None:
        global _holder
        self._writable()
        self.engine.dispose()
        if _holder is not None:
            _holder.close()
            _holder = None


def disturber(config: Config) -> Disturber:
    return Disturber(config)


# -- in a worker --------------------------------------------------------------------------


def _unprivileged() -> None:
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)


def work(worker: WorkerContext) -> None:
    _unprivileged()
    engine = kb.create_engine(worker.config.db_url, poolclass=sa.pool.NullPool)
    session = kb.session_factory(engine)()
    try:
        while not worker.out_of_time():
            started = time.monotonic()
            try:
                task = kb.claim_next(session, claimer=worker.name, ttl_seconds=TTL_SECONDS)
            except DB_ERRORS as error:
                _refused(worker, "claim", None, error, started)
                _read(worker, session)
                time.sleep(0.05)
                continue
            if task is None:
                if _read(worker, session) == 0:
                    return
                time.sleep(worker.random.uniform(*IDLE_MS) / 1000)
                continue
            token = str(task.claim_lock)
            worker.log("claimed", task=task.id, run_id=task.current_run_id, claim_lock=token)
            worker.work_pause()
            _complete(worker, session, task.id, token, task.current_run_id)
    finally:
        session.close()
        engine.dispose()


def _read(worker: WorkerContext, session: Session) -> int | None:
    try:
        left = unfinished(session)
    except DB_ERRORS as error:
        worker.log(DB_ERROR, during="read", type=type(error).__name__, error=one_line(error))
        return None
    worker.log(READ_OK, left=left)
    return left


def _refused(
    worker: WorkerContext, during: str, task: int | None, error: BaseException, started: float
) -> None:
    worker.log(
        DB_ERROR,
        task=task,
        during=during,
        type=type(error).__name__,
        seconds=round(time.monotonic() - started, 3),
        error=one_line(error),
    )


def _complete(
    worker: WorkerContext, session: Session, task_id: int, token: str, run_id: int | None
) -> None:
    lease_until = time.monotonic() + TTL_SECONDS
    while True:
        started = time.monotonic()
        try:
            kb.complete_task(session, task_id, claim_lock=token, result=worker.name)
        except DB_ERRORS as error:
            _refused(worker, "complete", task_id, error, started)
            if time.monotonic() > lease_until:
                return
            _read(worker, session)  # a worker holding a task reads too while it waits
            time.sleep(0.1)
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


def checks(outcome: Outcome, session: Session) -> list[Check]:
    board = inv.board_violations(session)
    events = inv.load_events(session)
    runs = inv.load_runs(session)
    tasks = session.execute(select(kb.Task.id, kb.Task.status)).all()
    session.rollback()
    numbers = outcome.numbers
    start, end = numbers.get("read_only_from"), numbers.get("read_only_until")
    refusals = [e for e in outcome.entries(DB_ERROR) if e.get("during") != "read"]
    during = [e for e in refusals if start and end and start <= e["at"] <= end]
    not_typed = [
        f"{e['worker']} {e['during']}: {e['error']}"
        for e in refusals
        if e["type"] != "DatabaseReadOnly"
    ]
    slow = [
        f"{e['worker']} {e['during']} refused after {e['seconds']} s"
        for e in refusals
        if e["seconds"] > AT_ONCE_SECONDS
    ]
    reads = [
        e
        for e in outcome.entries(READ_OK)
        if start and end and start + IN_FLIGHT_SECONDS <= e["at"] <= end
    ]
    failed_reads = list(e for e in outcome.entries(DB_ERROR) if e.get("during") == "read")
    written = numbers.get("newest_event_at_writable", -1) - numbers.get(
        "newest_event_at_read_only", -2
    )
    twice = inv.completed_once(events, [t.id for t in tasks])
    kernel = [f"{e['worker']} {e['during']}: {e['error']}" for e in outcome.entries(KANBAN_ERROR)]
    lost = inv.refusals_after_reclaim(list(outcome.entries(CLAIM_LOST)), runs)
    numbers.update(
        {
            "raw_exceptions": len(outcome.casualties),
            "typed_errors": len(refusals),
            "refused_while_read_only": len(during),
            "slowest_refusal_s": max((e["seconds"] for e in refusals), default=None),
            "reads_while_read_only": len(reads),
            "reclaims": sum(1 for e in events if e.kind == "reclaimed"),
        }
    )
    return [
        all_done(tasks, outcome.config.tasks, "1. writes resumed:"),
        Check("2. each task completed exactly once", not twice, inv.sample(twice)),
        Check("3. board consistent", not board, inv.sample(board)),
        replay_check(events, "4."),
        Check(
            "5. the database was read-only mid-run and writes were refused then",
            bool(start and end) and bool(during),
            f"{len(during)} refusals while read-only",
        ),
        Check(
            f"6. every refusal was DatabaseReadOnly, within {AT_ONCE_SECONDS:g} s",
            not not_typed and not slow,
            inv.sample(not_typed + slow),
        ),
        Check(
            "7. nothing was written while read-only",
            written == 0,
            f"{written} events written while read-only",
        ),
        Check(
            "8. reads worked while read-only",
            bool(reads) and not failed_reads,
            f"{len(reads)} reads, {len(failed_reads)} failed",
        ),
        Check("9. every ClaimLost refused a reclaimed claim", not lost, inv.sample(lost)),
        Check(
            "10. no raw driver error reached a worker; no other kernel error",
            not outcome.casualties and not kernel,
            "; ".join([*outcome.casualties, *kernel[:2]]),
        ),
    ]
