"""PostgreSQL through psycopg 3, at READ COMMITTED.

Every transition is one guarded UPDATE, which READ COMMITTED re-checks against the
latest committed row after a lock wait, so no stronger isolation is needed. Where the
portable form takes several statements, this backend takes one: a claim opens its runs
and writes its events in data-modifying CTEs (queries.claim_opening_runs_statement), the
end of a run closes it and logs the event together (queries.FINISH_RUN), and a completion with
nothing to promote is a single statement run in autocommit mode.

The one-statement completion protocol
-------------------------------------

:data:`queries.COMPLETE_UNCONTESTED` (and its one-claim form) completes a task without
looking for children to promote, which is safe only when no child can be waiting for
it. Its snapshot is taken when the statement starts; a transaction that makes a child
wait on the task (a new link, a ready-or-todo decision) may commit after that, unseen.
So the statement completes a task only while the task's row is still the version its
snapshot saw (same ``ctid``), and the rule that makes this work is:

    **Every writer that can make a child wait on a task rewrites that task's row
    first** (:data:`queries.TOUCH_PARENTS` / :data:`queries.TOUCH_PARENTS_OF`), in
    the same transaction.

PostgreSQL re-checks a row that changed while the statement waited for its lock against
the newest version, whose ``ctid`` no longer matches the snapshot's: the completion
steps aside and the caller takes the transaction path, which promotes. The writers are
listed in :data:`WAIT_MAKERS`; ``tests/test_backends.py`` runs each one and fails when
one stops rewriting the parent row.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from select import select as wait_readable
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import Integer, bindparam, exc, func, inspect, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from .. import queries as q
from ..clock import new_claim_token, utcnow, utcnow_at_statement_start
from ..models import (
    EVENT_LOG_GUARD_TRIGGER,
    EVENT_LOG_LOCK_KEY,
    READY_CHANNEL,
    READY_NOTIFY_TRIGGERS,
    STATUS_TALLY_LOCK_KEY,
    TaskEvent,
)
from .base import (
    READY,
    ChangeSignal,
    PortableBackend,
    RunClosing,
    connect_apart,
    newest_event_signal,
)

if TYPE_CHECKING:
    from alembic.runtime.migration import MigrationContext

    from ..driver import Tx

#: SQLSTATEs after which the whole transaction can simply run again: serialization
#: failure, deadlock, lock not available.
_RETRYABLE = frozenset({"40001", "40P01", "55P03"})
# admin_shutdown (a terminated backend, a fast shutdown), crash_shutdown,
# cannot_connect_now (starting up, shutting down); and class 08, connection_exception.
_UNAVAILABLE = frozenset({"57P01", "57P02", "57P03"})
#: read_only_sql_transaction: a hot standby, a read-only role or transaction.
_READ_ONLY = "25006"
#: string_data_right_truncation: a value longer than a VARCHAR column.
_TOO_LONG = "22001"
#: Failed connects psycopg reports without a SQLSTATE that waiting won't mend.
_CONNECT_REFUSALS = ("does not exist", "authentication failed", "pg_hba.conf", "permission denied")

#: Link writers take this transaction lock, so two links that together
#: would close a cycle cannot both pass the cycle check. (SQLite's BEGIN IMMEDIATE
#: already runs one writer at a time.)
LOCK_LINK_GRAPH = select(func.pg_advisory_xact_lock(bindparam("key", type_=Integer)))
LINK_GRAPH_LOCK_KEY = 0x6B62_6C6E  # "kbln"

#: The tailing reader's side of the event log guard
#: (models.EVENT_LOG_GUARD_DDL): an exclusive hold on the lock every event insert takes
#: shared, so the read that follows in the same transaction starts after every
#: transaction with uncommitted events has ended. Released when the read's transaction
#: ends; the timeout bounds how long writers queue behind a waiting reader.
WAIT_FOR_EVENT_WRITERS = (
    text("SET LOCAL lock_timeout = '250ms'"),
    select(func.pg_advisory_xact_lock(EVENT_LOG_LOCK_KEY)),
)
EVENT_LOG_GUARD_PRESENT = text(
    "SELECT 1 FROM pg_trigger WHERE tgname = :name AND tgrelid = to_regclass('kanban_task_events')"
).bindparams(name=EVENT_LOG_GUARD_TRIGGER)

#: refresh_counts' side of the tally triggers' shared lock (models.STATUS_TALLY_DDL):
#: waits out every transaction that has moved a tallied row. The timeout, as for the
#: event guard: writers queue behind a waiting exclusive lock.
LOCK_TALLIES_EXCLUSIVE = (
    text("SET LOCAL lock_timeout = '1s'"),
    select(func.pg_advisory_xact_lock(STATUS_TALLY_LOCK_KEY)),
)

#: Which of the wake-up's NOTIFY triggers (models.READY_NOTIFY_DDL) exist.
WAKEUP_TRIGGERS_PRESENT = text(
    "SELECT tgname FROM pg_trigger WHERE tgrelid IN "
    "(to_regclass('kanban_tasks'), to_regclass('kanban_task_events'))"
)

#: Concurrent migrators queue on this transaction lock (kanban_orm.migrate).
LOCK_MIGRATIONS = text("SELECT pg_advisory_xact_lock(:key)")

#: pg_advisory_xact_lock key of concurrent migrations: the first eight bytes of
#: sha1("kanban_orm.migrate").
MIGRATION_LOCK_KEY = 0x2C6A_04F0_5B11_7A3D
#: A registered worker's liveness lock is the two-key advisory lock (this, its id):
#: the two-key space never meets the one-key locks above. Advisory locks belong to
#: one database, so two boards on one server never share a worker's lock.
WORKER_LOCK_CLASS = 0x6B62_776B  # "kbwk"
#: Session-level: it outlives the registering transaction and ends with the connection.
LOCK_WORKER = text(
    "SELECT pg_advisory_lock(CAST(:lock_class AS integer), CAST(:lock_id AS integer))"
)
#: The lock is free (taking it for this transaction succeeds, and it goes with the
#: transaction) and the server has run since the worker took it: a restart frees
#: every lock, which then proves nothing about the worker.
WORKER_LOCK_FREED = text(
    "SELECT pg_try_advisory_xact_lock(CAST(:lock_class AS integer), CAST(:lock_id AS integer))"
    " AND pg_postmaster_start_time() AT TIME ZONE 'UTC' < :locked_at"
)

#: libpq's CONNECTION_OK (psycopg.pq.ConnStatus.OK), without importing psycopg here.
_CONNECTION_OK = 0

#: The transitions that can make a child wait on a parent, each of which must rewrite
#: the parent's row (see the module docstring): the function, and the touch it runs.
WAIT_MAKERS = {
    "create_task(parents=...)": "TOUCH_PARENTS",
    "link_tasks": "TOUCH_PARENTS",
    "unblock_task": "TOUCH_PARENTS_OF",
    "specify_task": "TOUCH_PARENTS_OF",
    "request_changes": "TOUCH_PARENTS_OF",
    "reopen_task": "TOUCH_PARENTS_OF",
}


#: The bytes the current database takes on disk.
DATABASE_BYTES = text("SELECT pg_database_size(current_database())")


class PostgreSQLBackend(PortableBackend):
    name: ClassVar[str] = "postgresql"
    title: ClassVar[str] = "PostgreSQL"
    # Making and closing a psycopg cursor costs, and a new one starts with empty caches
    # of how to send and read each type: one is kept on the pooled connection.
    keeps_cursor: ClassVar[bool] = True
    # A statement in autocommit mode is its own transaction: no BEGIN and COMMIT trips.
    autocommits_one_statement: ClassVar[bool] = True

    def url(self, url: Any) -> Any:
        if url.get_driver_name() in ("", "psycopg2"):
            return url.set(drivername="postgresql+psycopg")
        return url

    def async_url(self, url: Any) -> Any:
        # psycopg 3 is both: an async engine picks its AsyncConnection by itself.
        if "+" not in url.drivername or url.get_driver_name() == "psycopg2":
            return url.set(drivername="postgresql+psycopg")
        return url

    def is_contention(self, error: exc.DBAPIError) -> bool:
        return _psycopg_error(error) and getattr(error.orig, "sqlstate", None) in _RETRYABLE

    def is_unavailable(self, error: exc.DBAPIError) -> bool:
        if not _psycopg_error(error):
            return False
        orig = error.orig
        sqlstate: str | None = getattr(orig, "sqlstate", None)
        if sqlstate in _UNAVAILABLE or (sqlstate is not None and sqlstate.startswith("08")):
            return True
        # psycopg reports every failed connect without a SQLSTATE (refused, timed out,
        # closed mid-read); a few of them waiting won't mend.
        message = str(orig).lower()
        return (
            isinstance(error, exc.OperationalError)
            and sqlstate is None
            and not any(refusal in message for refusal in _CONNECT_REFUSALS)
        )

    def is_read_only(self, error: exc.DBAPIError) -> bool:
        return _psycopg_error(error) and getattr(error.orig, "sqlstate", None) == _READ_ONLY

    def is_too_long(self, error: exc.DBAPIError) -> bool:
        return _psycopg_error(error) and getattr(error.orig, "sqlstate", None) == _TOO_LONG

    liveness_lock: ClassVar[bool] = True

    def lock_worker(self, conn: Connection, worker_id: int) -> None:
        conn.execute(LOCK_WORKER, _worker_lock(worker_id))

    def dead_workers(self, s: Tx | Session, workers: Sequence[Any]) -> set[int]:
        return {
            w.worker_id
            for w in workers
            if w.locked_at is not None
            and s.execute(
                WORKER_LOCK_FREED, {**_worker_lock(w.worker_id), "locked_at": w.locked_at}
            ).scalar()
        }

    def claim_by_id(self, s: Tx, params: dict[str, Any], claimer: str) -> list[Any]:
        claiming = {"worker_id": None, **params, "claimer": claimer}
        return s.execute(q.claim_opening_runs_statement(q.CLAIM_BY_ID), claiming).all()

    def claim_next(
        self, s: Tx, by_assignee: bool, by_tenant: bool, params: dict[str, Any], claimer: str
    ) -> list[Any]:
        claim = q.claim_next_statement(by_assignee, by_tenant)
        claiming = {"worker_id": None, **params, "claimer": claimer}
        return s.execute(q.claim_opening_runs_statement(claim), claiming).all()

    def finish_run(
        self, s: Tx, closing: RunClosing, payload: dict[str, Any] | None, see_children: bool
    ) -> tuple[int | None, bool]:
        finished = s.execute(
            q.FINISH_RUN,
            {**closing, "event_kind": closing["run_outcome"], "event_payload": payload},
        ).first()
        return finished.run_id, bool(finished.waiting)

    def complete_pairs(
        self,
        s: Tx,
        pairs: Any,
        task_result: str | None,
        summary: str | None,
        metadata: dict[str, Any] | None,
    ) -> list[Any]:
        return s.execute(
            q.COMPLETE_BATCH,
            {
                "ids": [task_id for task_id, _ in pairs],
                "tokens": [token for _, token in pairs],
                "run_summary": summary,
                "run_metadata": metadata,
                "task_result": task_result,
            },
        ).all()

    def uncontested_completion(self, one: bool) -> ClauseElement | None:
        return q.COMPLETE_ONE_UNCONTESTED if one else q.COMPLETE_UNCONTESTED

    def uncontested_completion_and_claim(
        self, by_assignee: bool, by_tenant: bool
    ) -> ClauseElement | None:
        return q.completing_and_claiming(by_assignee, by_tenant)

    def lock_link_graph(self, s: Tx) -> None:
        # SQLite's BEGIN IMMEDIATE already runs one writer at a time.
        s.execute(LOCK_LINK_GRAPH, {"key": LINK_GRAPH_LOCK_KEY})

    def wait_for_event_writers(self, session: Session, after_id: int) -> None:
        # See models.EVENT_LOG_GUARD_DDL: ids are drawn before commit, and concurrent
        # transactions commit out of id order.
        for statement in WAIT_FOR_EVENT_WRITERS:
            session.execute(statement)

    def lock_status_tallies(self, s: Tx) -> None:
        # The triggers take the advisory lock shared: a row lock would be a write to
        # the tally row from every change that moves a tally.
        for statement in LOCK_TALLIES_EXCLUSIVE:
            s.execute(statement)

    def snapshot_reads(self, session: Session) -> None:
        # At READ COMMITTED each statement sees the latest commits: a task claimed
        # between two reads of one board would be drawn in two columns.
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})

    def change_signal(self, engine: Engine, topic: str) -> ChangeSignal | None:
        connection = connect_apart(engine)
        if topic == READY:
            return Listener(connection, READY_CHANNEL)
        # No NOTIFY on the event log (see models.READY_CHANNEL): a NOTIFY in every claim
        # and completion would queue their commits one behind another.
        connection.autocommit = True
        return newest_event_signal(connection)

    def prepare_migration(self, conn: Connection) -> None:
        # The lock must come before the snapshot: at REPEATABLE READ or above a waiter
        # would otherwise see the schema as it was before the upgrader it waited for
        # committed, and try to create the tables again.
        conn.execution_options(isolation_level="READ COMMITTED")

    def lock_migrations(self, conn: Connection) -> None:
        conn.execute(LOCK_MIGRATIONS, {"key": MIGRATION_LOCK_KEY})

    def storage_bytes(self, conn: Connection) -> dict[str, int]:
        return {"database": int(conn.execute(DATABASE_BYTES).scalar_one())}

    def schema_differences(self, context: MigrationContext, found: list[Any]) -> list[Any]:
        bind = context.bind
        if bind is None or not inspect(bind).has_table(TaskEvent.__tablename__):
            return found
        if bind.execute(EVENT_LOG_GUARD_PRESENT).first() is None:
            found = [*found, ("missing_trigger", EVENT_LOG_GUARD_TRIGGER)]
        present = {row.tgname for row in bind.execute(WAKEUP_TRIGGERS_PRESENT)}
        for trigger in sorted(set(WAKEUP_TRIGGERS) - present):
            found = [*found, ("missing_trigger", trigger)]
        return found


#: The NOTIFY triggers the wake-up needs (models.READY_NOTIFY_DDL, revision kb0010).
WAKEUP_TRIGGERS = READY_NOTIFY_TRIGGERS


class Listener:
    """A :class:`~kanban_orm.backends.base.ChangeSignal`: a connection that LISTENs on
    one channel (see models.READY_NOTIFY_DDL) and waits on its socket, so an idle
    waiter costs nothing until a notification arrives. libpq's calls, not psycopg's
    ``notifies()`` generator: the same on every psycopg 3 this package accepts."""

    def __init__(self, connection: Any, channel: str) -> None:
        connection.autocommit = True
        connection.execute(f"LISTEN {channel}")
        self._connection = connection

    def wait(self, timeout: float) -> bool:
        pgconn = self._connection.pgconn
        readable, _, _ = wait_readable([pgconn.socket], [], [], timeout)
        if not readable:
            return False
        pgconn.consume_input()  # raises once the server has closed the connection
        heard = False
        while pgconn.notifies() is not None:
            heard = True
        if not heard and pgconn.status != _CONNECTION_OK:
            raise ConnectionError("the LISTEN connection was lost")
        return heard

    def close(self) -> None:
        self._connection.close()


# -- the database clock and the fencing token ------------------------------------------


def _offset_sql(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str | None:
    clauses = list(element.clauses)
    return compiler.process(clauses[0], **kw) if clauses else None


@compiles(utcnow, "postgresql")
def _utcnow_postgresql(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    # clock_timestamp(), not now(): a transaction that waited for a row lock must not
    # start a lease that is already partly spent.
    now = "timezone('UTC', clock_timestamp())"
    offset = _offset_sql(element, compiler, **kw)
    return f"({now} + make_interval(secs => {offset}))" if offset is not None else now


@compiles(utcnow_at_statement_start, "postgresql")
def _statement_start_postgresql(
    element: utcnow_at_statement_start, compiler: SQLCompiler, **kw: Any
) -> str:
    # clock_timestamp() is volatile, so PostgreSQL uses it in a condition only as a
    # filter, row by row; statement_timestamp() is stable, and can bound an index scan.
    if list(element.clauses):
        raise CompileError("utcnow_at_statement_start takes no offset")
    return "timezone('UTC', statement_timestamp())"


@compiles(new_claim_token, "postgresql")
def _token_postgresql(element: new_claim_token, compiler: SQLCompiler, **kw: Any) -> str:
    return "replace(CAST(gen_random_uuid() AS TEXT), '-', '')"


def _psycopg_error(error: exc.DBAPIError) -> bool:
    """Whether psycopg raised ``error``: asyncmy's errors carry a ``sqlstate`` too (the
    MySQL server's, 08S01 for a packet too large), which this backend must not read as
    its own. An error of a psycopg never imported is not psycopg's."""
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(error.orig, psycopg.Error)


def _worker_lock(worker_id: int) -> dict[str, int]:
    # The second key is a 32-bit integer: ids past it wrap, which only a board that
    # registered two billion workers could notice.
    return {"lock_class": WORKER_LOCK_CLASS, "lock_id": worker_id % 2**31}
