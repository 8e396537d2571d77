"""PostgreSQL through psycopg 3, at READ COMMITTED.

Every transition is one guarded UPDATE, which READ COMMITTED re-checks against the
latest committed row after a lock wait, so no stronger isolation is needed. Where the
portable form takes several statements, this backend takes one: a claim opens its runs
and writes its events in data-modifying CTEs (queries.opening_runs), the end of a run
closes it and logs the event together (queries.FINISH_RUN), and a completion with
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

from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import exc, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from .. import queries as q
from ..clock import new_claim_token, utcnow, utcnow_at_statement_start
from ..models import EVENT_LOG_GUARD_TRIGGER, TaskEvent
from .base import PortableBackend, RunClosing

if TYPE_CHECKING:
    from alembic.runtime.migration import MigrationContext

    from ..driver import Tx

#: SQLSTATEs after which the whole transaction can simply run again: serialization
#: failure, deadlock, lock not available.
_RETRYABLE = frozenset({"40001", "40P01", "55P03"})

#: pg_advisory_xact_lock key of concurrent migrations: the first eight bytes of
#: sha1("kanban_orm.migrate").
MIGRATION_LOCK_KEY = 0x2C6A_04F0_5B11_7A3D

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

    def is_contention(self, error: exc.DBAPIError) -> bool:
        return getattr(error.orig, "sqlstate", None) in _RETRYABLE

    def claim_by_id(self, s: Tx, params: dict[str, Any], claimer: str) -> list[Any]:
        return s.execute(q.opening_runs(q.CLAIM_BY_ID), {**params, "claimer": claimer}).all()

    def claim_next(
        self, s: Tx, by_assignee: bool, by_tenant: bool, params: dict[str, Any], claimer: str
    ) -> list[Any]:
        claim = q.claim_next_statement(by_assignee, by_tenant)
        return s.execute(q.opening_runs(claim), {**params, "claimer": claimer}).all()

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

    def lock_link_graph(self, s: Tx) -> None:
        # SQLite's BEGIN IMMEDIATE already runs one writer at a time.
        s.execute(q.LOCK_LINK_GRAPH, {"key": q.LINK_GRAPH_LOCK_KEY})

    def wait_for_event_writers(self, session: Session, after_id: int) -> None:
        # See models.EVENT_LOG_GUARD_DDL: ids are drawn before commit, and concurrent
        # transactions commit out of id order.
        for statement in q.WAIT_FOR_EVENT_WRITERS:
            session.execute(statement)

    def snapshot_reads(self, session: Session) -> None:
        # At READ COMMITTED each statement sees the latest commits: a task claimed
        # between two reads of one board would be drawn in two columns.
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})

    def prepare_migration(self, conn: Connection) -> None:
        # The lock must come before the snapshot: at REPEATABLE READ or above a waiter
        # would otherwise see the schema as it was before the upgrader it waited for
        # committed, and try to create the tables again.
        conn.execution_options(isolation_level="READ COMMITTED")

    def lock_migrations(self, conn: Connection) -> None:
        conn.execute(q.LOCK_MIGRATIONS, {"key": MIGRATION_LOCK_KEY})

    def storage_bytes(self, conn: Connection) -> dict[str, int]:
        return {"database": int(conn.execute(q.DATABASE_BYTES_POSTGRESQL).scalar_one())}

    def schema_differences(self, context: MigrationContext, found: list[Any]) -> list[Any]:
        bind = context.bind
        if bind is None or not inspect(bind).has_table(TaskEvent.__tablename__):
            return found
        if bind.execute(q.EVENT_LOG_GUARD_PRESENT).first() is None:
            return [*found, ("missing_trigger", EVENT_LOG_GUARD_TRIGGER)]
        return found


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
