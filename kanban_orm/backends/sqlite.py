"""SQLite: one writer at a time, on a file shared by many processes.

* WAL, so readers never block the writer and the writer never blocks readers;
* ``busy_timeout``, so a writer waits for the lock inside SQLite instead of failing;
* ``BEGIN IMMEDIATE`` for write transactions. A deferred transaction that reads and then
  writes must upgrade its lock, and two such transactions can deadlock: SQLite then fails
  one with SQLITE_BUSY at once, whatever the timeout. Taking the write lock up front
  means a writer only ever waits. Plain reads keep a deferred BEGIN and take no lock.
* a bounded WAL (:class:`WalBound`): under writes that never pause the WAL file would
  grow without end, as SQLite's own checkpoints can never restart it;
* ``synchronous=NORMAL`` by default: in WAL mode a process crash loses nothing, a power
  cut may roll back the last commits. ``KANBAN_SQLITE_SYNCHRONOUS=FULL`` (or
  ``configure_engine(engine, synchronous="FULL")``) makes every commit durable at the
  cost of an fsync per commit.

Because writers are serialised, a claim can number its runs itself and SQLite needs no
locking clause (it renders none), no event-log guard and no link-graph lock.
"""

from __future__ import annotations

import contextvars
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import event, exc, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler

from .. import config, files, greenlets, processes
from .. import queries as q
from ..clock import new_claim_token, utcnow
from ..errors import KanbanError
from .base import (
    WRITE_OPTION,
    ChangeSignal,
    DriverThread,
    PolledSignal,
    PortableBackend,
    connect_apart,
    record_events,
)

if TYPE_CHECKING:
    from alembic.runtime.migration import MigrationContext

    from ..driver import Tx

#: RETURNING (3.35) and UPDATE ... FROM (3.33) are used by every transition.
MIN_SQLITE_VERSION = (3, 35, 0)

_BUSY_MESSAGES = ("database is locked", "database table is locked", "database is busy")

#: Indexes with a DESC column: SQLite reflects them without their sort order, so
#: autogenerate always sees a difference that is not there.
_SORT_ORDER_INDEXES = frozenset({"ix_kanban_tasks_claim_order"})
#: Indexes on an expression: SQLite's reflection skips them (with a warning) and Alembic
#: cannot compare them there, so they are looked up by name instead.
_EXPRESSION_INDEXES = frozenset({"ix_kanban_tasks_done_order"})


#: SQLITE_READONLY; its extended codes (a read-only file, directory, connection) share
#: the low byte.
_SQLITE_READONLY = 8
#: How often an idle waiter's held connection asks whether the file changed. PRAGMA
#: data_version costs microseconds and reads no page, so checking often is cheap; a
#: latency of this order is what SQLite's wake-up costs.
DATA_VERSION_CHECK_SECONDS = 0.02
#: Changes when another connection commits a change to the file (its own writes, and
#: a write transaction that changed nothing, leave it alone). Any commit, so a wake-up
#: is broad: the claim or read that follows decides.
DATA_VERSION = "PRAGMA data_version"
#: A WAL file past this size has been starved of restarts (see WalBound).
WAL_BOUND_BYTES = 16 * 2**20
#: How often, at most, one process looks at its WAL's size after a commit.
WAL_CHECK_SECONDS = 1.0
#: How long a bounding checkpoint waits for the writer and readers ahead of it; it holds
#: the write lock while it waits for readers, so it gives up early rather than stall
#: writers behind a long read (and tries again WAL_CHECK_SECONDS later).
WAL_CHECKPOINT_BUSY_MS = 200
#: Where a pooled connection's info keeps the WalBound of its database file.
_WAL_BOUND = "kanban_wal_bound"


def is_busy_message(message: str) -> bool:
    message = message.lower()
    return any(fragment in message for fragment in _BUSY_MESSAGES)


#: Copy the whole WAL back and wait for its readers, so the next writer starts it
#: afresh; one row (busy, frames in the WAL, frames copied), busy 1 when a lock was not
#: had in time.
CHECKPOINT_RESTART = text("PRAGMA wal_checkpoint(RESTART)")
#: The files of the main database (its path in column ``file``).
DATABASE_LIST = text("PRAGMA database_list")


class SQLiteBackend(PortableBackend):
    name: ClassVar[str] = "sqlite"
    title: ClassVar[str] = "SQLite"
    # A sqlite3 cursor is cheap, and one left holding a statement would hold its read
    # snapshot too: closed after each transaction.
    keeps_cursor: ClassVar[bool] = False
    autocommits_one_statement: ClassVar[bool] = False

    def async_url(self, url: Any) -> Any:
        if url.get_driver_name() in ("", "pysqlite"):
            return url.set(drivername="sqlite+aiosqlite")
        return url

    def async_engine_options(self, url: Any) -> dict[str, Any]:
        # A file's connections pooled, as SQLAlchemy 2.0.38+ does by default; before
        # it, aiosqlite got a NullPool (a new connection, and its pragmas, per write).
        if files.sqlite_file(url) is None:
            return {}
        from sqlalchemy.pool import AsyncAdaptedQueuePool

        return {"poolclass": AsyncAdaptedQueuePool}

    def change_signal(self, engine: Engine, topic: str) -> ChangeSignal | None:
        # One signal for both topics: data_version sees every commit. An in-memory
        # database is private to its connection: nothing to watch from another one.
        if files.sqlite_file(engine.url) is None:
            return None
        return PolledSignal(connect_apart(engine), DATA_VERSION, DATA_VERSION_CHECK_SECONDS)

    def dead_workers(self, s: Tx | Session, workers: Sequence[Any]) -> set[int]:
        # One host shares the file (a network file system would break its locking): a
        # worker of another host is never proven dead, one of this host by its pid.
        here = processes.host_name()
        return {
            w.worker_id
            for w in workers
            if w.host == here and processes.is_gone(w.pid, w.process_start)
        }

    def configure_engine(
        self, engine: Engine, *, synchronous: str | None, busy_timeout_ms: int | None
    ) -> None:
        """Take over transaction control from the pysqlite driver (so ``BEGIN`` and
        ``BEGIN IMMEDIATE`` are ours to emit), as SQLAlchemy's documentation recommends
        for correct SAVEPOINT and locking behaviour, and set the pragmas of every new
        connection."""
        synchronous = config.sqlite_synchronous(synchronous)
        busy_timeout_ms = config.sqlite_busy_timeout_ms(busy_timeout_ms)
        version = engine.dialect.dbapi.sqlite_version_info  # type: ignore[union-attr]
        if tuple(version) < MIN_SQLITE_VERSION:
            raise KanbanError(
                f"kanban_orm needs SQLite >= {'.'.join(map(str, MIN_SQLITE_VERSION))}, "
                f"this Python has {'.'.join(map(str, version))}"
            )
        # A "~" is expanded only by create_engine; SQLite would open such a path literally.
        given = engine.url.database or ""
        database = None if given.startswith("~") else files.sqlite_file(engine.url)

        @event.listens_for(engine, "do_connect")
        def _private_file(*_args: Any) -> None:
            # Made 0600 before SQLite opens it, so the -wal and -shm that SQLite creates
            # with the database's mode are private too; an existing file keeps its mode.
            if database is not None and database.parent.is_dir():
                files.create_private_file(database)

        bounds: dict[str, WalBound] = {}  # one per file, shared by the pool's connections

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
            cursor = dbapi_connection.cursor()
            try:
                # busy_timeout first: switching to WAL needs a lock that a concurrent
                # first-time opener may hold.
                cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
                # execute() and fetchone() apart: aiosqlite's adapted execute() does
                # not return the cursor, as sqlite3's does.
                cursor.execute("PRAGMA journal_mode")
                if cursor.fetchone()[0].lower() != "wal":
                    _retry_pragma(cursor, "PRAGMA journal_mode = WAL")
                cursor.execute(f"PRAGMA synchronous = {synchronous}")
                cursor.execute("PRAGMA foreign_keys = ON")
                cursor.execute(f"PRAGMA journal_size_limit = {WAL_BOUND_BYTES}")
                # The file as SQLite opened it (an in-memory database has none).
                cursor.execute("PRAGMA database_list")
                path = next(row[2] for row in cursor.fetchall() if row[1] == "main")
            finally:
                cursor.close()
            if path:
                bound = bounds.setdefault(path, WalBound(Path(path), int(busy_timeout_ms)))
                record.info[_WAL_BOUND] = bound

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get(WRITE_OPTION)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    def begin_write(self, tx: Tx) -> None:
        tx.raw("BEGIN IMMEDIATE")

    def commit_write(self, tx: Tx) -> None:
        tx.raw("COMMIT")
        bound: WalBound | None = tx.pool_info.get(_WAL_BOUND)
        if bound is not None:
            bound.after_commit(tx)

    def roll_back(self, dbapi_connection: Any) -> None:
        # sqlite3's rollback() ends whatever transaction is open, our BEGIN IMMEDIATE's
        # too, and does nothing without one; aiosqlite's adapted connection has it (but
        # neither in_transaction nor execute).
        dbapi_connection.rollback()

    def driver_thread(self, dbapi_connection: Any) -> DriverThread | None:
        # SQLAlchemy's adapter holds the aiosqlite Connection, which holds sqlite3's
        # and runs every call on it in its thread: per statement, an execute and a fetch
        # are two hops, and a transaction's BEGIN, cursor and COMMIT more (SQLAlchemy's
        # own adapter reaches in the same way to set the isolation level).
        adapted = getattr(dbapi_connection, "_connection", None)
        queue = getattr(adapted, "_execute", None)
        connection = getattr(adapted, "_connection", None)
        if queue is None or not isinstance(connection, sqlite3.Connection):
            return None

        def run(fn: Callable[[], Any]) -> Any:
            from sqlalchemy.util import await_only

            return await_only(queue(contextvars.copy_context().run, fn))

        return DriverThread(connection, run)

    def is_contention(self, error: exc.DBAPIError) -> bool:
        return isinstance(error, exc.OperationalError) and is_busy_message(str(error.orig))

    def is_read_only(self, error: exc.DBAPIError) -> bool:
        code = getattr(error.orig, "sqlite_errorcode", None)
        return code is not None and code & 0xFF == _SQLITE_READONLY

    # is_unavailable: never; there is no server to lose.

    # The claim UPDATE numbers each task's run (queries.CLAIM_BY_ID_NUMBERED): no other
    # writer can take those run ids before the INSERT that follows, under the write lock.

    def claim_by_id(self, s: Tx, params: dict[str, Any], claimer: str) -> list[Any]:
        claimed = s.execute(q.CLAIM_BY_ID_NUMBERED, params).all()
        return _open_numbered_runs(s, claimed, claimer, params.get("worker_id"))

    def claim_next(
        self, s: Tx, by_assignee: bool, by_tenant: bool, params: dict[str, Any], claimer: str
    ) -> list[Any]:
        claim = q.claim_next_statement(by_assignee, by_tenant, numbered=True)
        claimed = s.execute(claim, params).all()
        return _open_numbered_runs(s, claimed, claimer, params.get("worker_id"))

    def complete_pairs(
        self,
        s: Tx,
        pairs: Sequence[tuple[int, str]],
        task_result: str | None,
        summary: str | None,
        metadata: dict[str, Any] | None,
    ) -> list[Any]:
        """The batch's UPDATE, its runs closed, its events: a statement each, the ids
        bound as one JSON array (queries.COMPLETE_PAIRS), whatever the batch size."""
        rows = s.execute(
            q.COMPLETE_PAIRS, {"pairs": [list(pair) for pair in pairs], "task_result": task_result}
        ).all()
        if len(rows) < len(pairs):
            return rows  # the caller explains the claim that no longer holds, and rolls back
        ids = [task_id for task_id, _ in pairs]
        closed = s.execute(
            q.CLOSE_OPEN_RUNS,
            {
                "ids": ids,
                "run_outcome": "completed",
                "run_summary": summary,
                "run_metadata": metadata,
                "run_error": None,
            },
        )
        run_of = {run.task_id: run.id for run in closed}
        record_events(s, "completed", [(t, run_of.get(t), {"forced": False}) for t in ids])
        return rows

    def storage_bytes(self, conn: Connection) -> dict[str, int]:
        main = next(row for row in conn.execute(DATABASE_LIST) if row.name == "main")
        if not main.file:  # an in-memory database
            return {"database": 0, "wal": 0}
        path = Path(main.file)
        return {"database": _file_bytes(path), "wal": _file_bytes(Path(f"{path}-wal"))}

    def schema_differences(self, context: MigrationContext, found: list[Any]) -> list[Any]:
        artifacts = _sort_order_artifacts(found)
        kept = [d for d in found if id(d) not in artifacts]
        return kept + _missing_sort_order_indexes(context)


class WalBound:
    """Keeps a database's WAL file bounded while writers never pause.

    SQLite writes commits to the WAL and copies them back to the database file in
    checkpoints: a committer whose WAL holds 1000 pages (``wal_autocheckpoint``) runs
    a PASSIVE one after its COMMIT. The WAL file is only rewritten from its start
    ("restarted") by a writer that began reading after a checkpoint had copied every
    frame. With two or more processes writing back to back, the next writer always
    takes its snapshot as the lock passes, before the previous committer's checkpoint
    has run: so no writer ever restarts the WAL, it grows by every commit (3 → 152 MB in
    a 5-minute soak), and each commit past the first 1000 pages runs a checkpoint too.

    So, at most every WAL_CHECK_SECONDS, a committer looks at the WAL's size and past
    WAL_BOUND_BYTES runs a RESTART checkpoint: it takes the write lock like any writer,
    copies what is left and waits for readers still on older frames, so the next
    writer rewrites the WAL from its start; ``journal_size_limit`` (set on every
    connection) then cuts the file back to WAL_BOUND_BYTES. (The file is reused rather
    than emptied, as SQLite prefers: overwriting is cheaper than growing it again.)
    Busy (another connection's checkpoint, a long read), it tries again for up to
    WAL_CHECKPOINT_BUSY_MS, then gives up until the next check. The commit it follows
    has landed either way: nothing here can fail it.
    """

    def __init__(self, database: Path, busy_timeout_ms: int) -> None:
        self.wal = Path(f"{database}-wal")
        self.busy_timeout_ms = busy_timeout_ms
        self.next_check = 0.0
        #: Checkpoints run, and those that let the WAL restart (for tests and reports).
        self.checkpoints = 0
        self.restarts = 0

    def after_commit(self, tx: Tx) -> None:
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + WAL_CHECK_SECONDS
        if _file_bytes(self.wal) > WAL_BOUND_BYTES:
            self.checkpoint(tx)

    def checkpoint(self, tx: Tx) -> None:
        self.checkpoints += 1
        try:
            tx.raw(f"PRAGMA busy_timeout = {WAL_CHECKPOINT_BUSY_MS}")
            try:
                restarted = self._restart(tx)
            finally:
                tx.raw(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        except exc.DBAPIError:
            return  # a connection gone is the next transaction's to find
        self.restarts += restarted

    @staticmethod
    def _restart(tx: Tx) -> bool:
        # Another connection's checkpoint (a PASSIVE one after each of its commits, once
        # the WAL is this long) makes ours busy at once, without the busy handler:
        # tried again until that one is done, within the same budget.
        deadline = time.monotonic() + WAL_CHECKPOINT_BUSY_MS / 1000
        while True:
            busy = tx.execute(CHECKPOINT_RESTART).first()[0]
            if not busy or time.monotonic() >= deadline:
                return not busy
            greenlets.pause(0.002)  # on the event loop under kanban_orm.aio


def _open_numbered_runs(
    s: Tx, claimed: list[Any], claimer: str, worker_id: int | None
) -> list[Any]:
    """After a numbered claim: the run and ``claimed`` event of each claimed task; the
    rows best first."""
    rows = sorted(claimed, key=lambda t: (-t.priority, t.id))
    if len(rows) == 1:
        # Two INSERT ... VALUES cost about half of the INSERT ... SELECT pair for one id,
        # while for a batch the INSERT ... SELECT costs less per row.
        (one,) = rows
        opened = {
            "run_id": one.current_run_id,
            "task_id": one.id,
            "attempt": one.attempts,
            "claimer": claimer,
        }
        s.execute(q.OPEN_RUN, {**opened, "token": one.claim_lock, "worker_id": worker_id})
        s.execute(q.LOG_CLAIM, opened)
    elif rows:
        numbered = {"ids": [t.id for t in rows], "claimer": claimer, "worker_id": worker_id}
        s.execute(q.OPEN_NUMBERED_RUNS, numbered)
        s.execute(q.LOG_CLAIMS, numbered)
    return rows


def _file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # no WAL between the last connection's close and the next
        return 0


def _retry_pragma(cursor: Any, sql: str, attempts: int = 50) -> None:
    for attempt in range(attempts):
        try:
            cursor.execute(sql)
            return
        except Exception as error:  # sqlite3.OperationalError; the driver is not imported here
            if not is_busy_message(str(error)) or attempt == attempts - 1:
                raise
            greenlets.pause(0.01 + random.random() * 0.05)


def _missing_sort_order_indexes(context: MigrationContext) -> list[Any]:
    # Alembic skips these indexes on SQLite when they are absent, so look them up by name.
    from sqlalchemy import inspect, text

    from ..models import Base

    inspector = inspect(context.bind)
    missing = []
    for table in Base.metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        # sqlite_master, not the inspector: its reflection skips expression indexes.
        present = set(
            context.bind.execute(  # type: ignore[union-attr]
                text("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = :t"),
                {"t": table.name},
            ).scalars()
        )
        missing += [
            ("add_index", ix)
            for ix in table.indexes
            if ix.name in _SORT_ORDER_INDEXES | _EXPRESSION_INDEXES and ix.name not in present
        ]
    return missing


def _sort_order_artifacts(differences: list[Any]) -> set[int]:
    """The remove_index + add_index pairs SQLite reports for an index that is there.

    Only a pair is an artifact: an index that is really missing shows up as an
    add_index alone, and is still reported.
    """
    by_name: dict[str, dict[str, Any]] = {}
    for d in differences:
        is_index_change = isinstance(d, tuple) and d[0] in ("add_index", "remove_index")
        if is_index_change and d[1].name in _SORT_ORDER_INDEXES:
            by_name.setdefault(d[1].name, {})[d[0]] = d
    return {id(d) for pair in by_name.values() if len(pair) == 2 for d in pair.values()}


# -- the database clock and the fencing token ------------------------------------------


@compiles(utcnow, "sqlite")
def _utcnow_sqlite(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    # '%f' is seconds with milliseconds; the '000' suffix gives the six fractional
    # digits SQLAlchemy's SQLite DateTime type writes and parses, so values written by
    # the database and by Python compare correctly as text. 'now' is the statement's
    # time already, so utcnow_at_statement_start needs no form of its own.
    clauses = list(element.clauses)
    offset = compiler.process(clauses[0], **kw) if clauses else None
    modifier = f", printf('%+.6f seconds', {offset})" if offset is not None else ""
    return f"strftime('%Y-%m-%d %H:%M:%f000', 'now'{modifier})"


@compiles(new_claim_token, "sqlite")
def _token_sqlite(element: new_claim_token, compiler: SQLCompiler, **kw: Any) -> str:
    return "lower(hex(randomblob(16)))"
