"""The Backend protocol, and the portable implementation every backend starts from.

Every difference between the databases kanban_orm runs on lives in this package, and
nowhere else: the service, workflow, steps and migrate modules ask the backend of the
connection they hold (:func:`kanban_orm.backends.of`) and never the dialect's name.

The pattern is Oban's: its Lite engine (SQLite) delegates every callback whose SQL is
portable to the Basic engine (PostgreSQL) and overrides only ``fetch_jobs`` and a few
others. Here :class:`PortableBackend` holds the statement-by-statement form of each
step, written in SQL all three databases accept, and each backend overrides only what
it can do better (PostgreSQL's one-statement claims and completions) or must do
differently (SQLite's write lock, MariaDB's missing ``UPDATE ... RETURNING``).

Statements themselves are named in :mod:`kanban_orm.queries` (``VERB_OBJECT[_QUALIFIER]``
constants, ``*_statement`` builders for the filtered forms); a statement only one
backend may run says so in its name's comment, and the backend that runs it says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from sqlalchemy import exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement

from .. import queries as q

if TYPE_CHECKING:
    from alembic.runtime.migration import MigrationContext

    from ..driver import Tx

#: Execution option a Connection carries when its transaction will write (on SQLite it
#: makes the transaction's BEGIN an IMMEDIATE one).
WRITE_OPTION = "kanban_write"

#: The parameters CLOSE_OPEN_RUN takes (see kanban_orm.steps._closing).
RunClosing = dict[str, Any]


class Backend(Protocol):
    """What kanban_orm needs from a database, beyond the portable SQL of
    :mod:`kanban_orm.queries`.

    Transaction control (``begin_write``, ``commit_write``, ``roll_back``), error
    classification (``is_contention``), the claim, the end of a run, the batch
    completion, event-log ordering (``wait_for_event_writers``), locks
    (``lock_link_graph``, ``lock_migrations``) and the schema checks that differ.
    Methods that take a :class:`~kanban_orm.driver.Tx` run inside the caller's write
    transaction and never commit.
    """

    #: The SQLAlchemy backend name (``sa.URL.get_backend_name()``) this serves.
    name: ClassVar[str]
    #: Human name, for messages.
    title: ClassVar[str]
    #: Keep a driver cursor from one transaction to the next on the pooled connection.
    keeps_cursor: ClassVar[bool]
    #: A single-statement write may run in autocommit mode (its own transaction).
    autocommits_one_statement: ClassVar[bool]

    # -- engines and transactions ---------------------------------------------------

    def url(self, url: Any) -> Any:
        """``url`` with the driver this backend uses when the URL names none."""
        ...

    def configure_engine(
        self, engine: Engine, *, synchronous: str | None, busy_timeout_ms: int | None
    ) -> None:
        """Connection and transaction set-up of a new Engine (events, pragmas)."""
        ...

    def begin_write(self, tx: Tx) -> None:
        """Open a write transaction on a pooled driver connection."""
        ...

    def commit_write(self, tx: Tx) -> None:
        """Commit what :meth:`begin_write` opened."""
        ...

    def roll_back(self, dbapi_connection: Any) -> None:
        """Roll back the driver connection's open transaction, if any."""
        ...

    def is_contention(self, error: exc.DBAPIError) -> bool:
        """True for a lock, busy, deadlock or serialization error of this backend's
        driver: the whole transaction may simply run again."""
        ...

    # -- claims and runs ------------------------------------------------------------

    def claim_by_id(self, s: Tx, params: dict[str, Any], claimer: str) -> list[Any]:
        """Claim ``:task_id`` if claimable: open its run, write its ``claimed`` event;
        the claimed task row (``current_run_id`` set), or no row."""
        ...

    def claim_next(
        self, s: Tx, by_assignee: bool, by_tenant: bool, params: dict[str, Any], claimer: str
    ) -> list[Any]:
        """Claim up to ``:limit`` of the best claimable tasks, as :meth:`claim_by_id`;
        the claimed task rows, best first."""
        ...

    def finish_run(
        self, s: Tx, closing: RunClosing, payload: dict[str, Any] | None, see_children: bool
    ) -> tuple[int | None, bool]:
        """After a task's own UPDATE: close its open run and write the event named by
        the outcome. Returns the run id (None if no run was open) and whether a child
        may be waiting for the task (always True when ``see_children`` is False)."""
        ...

    def complete_pairs(
        self,
        s: Tx,
        pairs: Sequence[tuple[int, str]],
        task_result: str | None,
        summary: str | None,
        metadata: dict[str, Any] | None,
    ) -> list[Any]:
        """Complete every held claim of ``pairs``, closing its run and writing its
        ``completed`` event; the completed task rows (fewer than ``pairs`` when a claim
        no longer holds: the caller then rolls the whole batch back)."""
        ...

    def uncontested_completion(self, one: bool) -> ClauseElement | None:
        """A statement completing held claims as its own transaction when no child can
        be waiting (see :class:`~kanban_orm.backends.postgresql.PostgreSQLBackend`), or
        None where there is none: completions then take the transaction path."""
        ...

    # -- locks and ordering ---------------------------------------------------------

    def lock_link_graph(self, s: Tx) -> None:
        """Serialise link writers, so two links that together close a cycle cannot both
        pass the cycle check."""
        ...

    def wait_for_event_writers(self, session: Session, after_id: int) -> None:
        """Before a tailing read of events after ``after_id``: wait until no transaction
        holds events it has not committed, so a lower id cannot commit after the read."""
        ...

    def snapshot_reads(self, session: Session) -> None:
        """Make the reads of the Session's next transaction share one snapshot."""
        ...

    # -- storage --------------------------------------------------------------------

    def storage_bytes(self, conn: Connection) -> dict[str, int]:
        """Bytes the database takes, by part (``database``; SQLite adds its ``wal``):
        what an operator watches grow in a long run."""
        ...

    # -- migrations -----------------------------------------------------------------

    def prepare_migration(self, conn: Connection) -> None:
        """Before the migration's transaction begins (isolation, for instance)."""
        ...

    def lock_migrations(self, conn: Connection) -> None:
        """First thing in the migration's transaction: exclude concurrent migrators."""
        ...

    def unlock_migrations(self, conn: Connection) -> None:
        """After the migration's transaction, a lock that outlives it is released."""
        ...

    def schema_differences(self, context: MigrationContext, found: list[Any]) -> list[Any]:
        """Alembic's diff ``found``, less this backend's reflection artifacts, plus
        what autogenerate cannot see (triggers)."""
        ...


class PortableBackend:
    """The steps in SQL every backend accepts, one statement each; a backend subclass
    overrides only what it does differently (see the module docstring)."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    keeps_cursor: ClassVar[bool] = False
    autocommits_one_statement: ClassVar[bool] = False

    def url(self, url: Any) -> Any:
        return url

    def configure_engine(
        self, engine: Engine, *, synchronous: str | None, busy_timeout_ms: int | None
    ) -> None:
        return None

    def begin_write(self, tx: Tx) -> None:
        return None  # the driver begins implicitly (PEP 249)

    def commit_write(self, tx: Tx) -> None:
        tx.commit()

    def roll_back(self, dbapi_connection: Any) -> None:
        dbapi_connection.rollback()

    def is_contention(self, error: exc.DBAPIError) -> bool:
        return False

    def claim_by_id(self, s: Tx, params: dict[str, Any], claimer: str) -> list[Any]:
        raise NotImplementedError  # every backend claims in its own way

    def claim_next(
        self, s: Tx, by_assignee: bool, by_tenant: bool, params: dict[str, Any], claimer: str
    ) -> list[Any]:
        raise NotImplementedError

    def finish_run(
        self, s: Tx, closing: RunClosing, payload: dict[str, Any] | None, see_children: bool
    ) -> tuple[int | None, bool]:
        statement = q.CLOSE_OPEN_RUN_SEEING_CHILDREN if see_children else q.CLOSE_OPEN_RUN
        closed = s.execute(statement, closing).first()
        run_id = None if closed is None else closed.id
        record_events(s, closing["run_outcome"], [(closing["run_task_id"], run_id, payload)])
        # No open run (a forced completion from todo), so nothing was seen: look.
        waiting = closed is None or not see_children or bool(closed.waiting)
        return run_id, waiting

    def complete_pairs(
        self,
        s: Tx,
        pairs: Sequence[tuple[int, str]],
        task_result: str | None,
        summary: str | None,
        metadata: dict[str, Any] | None,
    ) -> list[Any]:
        done: list[Any] = []
        for task_id, token in pairs:
            row = s.execute(
                q.COMPLETE_HELD, {"task_id": task_id, "token": token, "task_result": task_result}
            ).first()
            if row is None:
                return done  # the caller explains this claim and rolls back
            done.append(row)
        for task_id, _ in pairs:
            closing = run_closing(task_id, "completed", summary, metadata, None)
            self.finish_run(s, closing, {"forced": False}, see_children=False)
        return done

    def uncontested_completion(self, one: bool) -> ClauseElement | None:
        return None

    def lock_link_graph(self, s: Tx) -> None:
        return None

    def wait_for_event_writers(self, session: Session, after_id: int) -> None:
        return None

    def snapshot_reads(self, session: Session) -> None:
        return None

    def storage_bytes(self, conn: Connection) -> dict[str, int]:
        raise NotImplementedError  # each database measures itself in its own way

    def prepare_migration(self, conn: Connection) -> None:
        return None

    def lock_migrations(self, conn: Connection) -> None:
        return None

    def unlock_migrations(self, conn: Connection) -> None:
        return None

    def schema_differences(self, context: MigrationContext, found: list[Any]) -> list[Any]:
        return found


def run_closing(
    task_id: int,
    outcome: str,
    summary: str | None,
    metadata: dict[str, Any] | None,
    error: str | None,
) -> RunClosing:
    """The parameters of CLOSE_OPEN_RUN for one task."""
    return {
        "run_task_id": task_id,
        "run_outcome": outcome,
        "run_summary": summary,
        "run_metadata": metadata,
        "run_error": error,
    }


def record_events(
    s: Tx, kind: str, entries: Sequence[tuple[int, int | None, dict[str, Any] | None]]
) -> None:
    """Append one event of ``kind`` per ``(task_id, run_id, payload)``."""
    if entries:
        s.execute(
            q.INSERT_EVENT,
            [
                {"task_id": task_id, "run_id": run_id, "kind": kind, "payload": payload}
                for task_id, run_id, payload in entries
            ],
        )
