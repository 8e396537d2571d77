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

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, runtime_checkable

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

T = TypeVar("T")


@dataclass(frozen=True)
class DriverThread:
    """An asyncio driver connection that runs its sync driver's connection in a thread of
    its own (aiosqlite): every statement sent through the adapter is a hop to that
    thread and back. ``run(fn)``, from SQLAlchemy's asyncio greenlet, runs ``fn()`` in
    that thread, in the caller's contextvars, and returns its result; ``fn`` may use
    ``connection``, the sync driver's connection, which nothing else uses meanwhile."""

    connection: Any
    run: Callable[[Callable[[], Any]], Any]


#: What a :class:`ChangeSignal` watches: a task may have become claimable (``READY``),
#: an event may have been appended (``EVENTS``).
READY = "ready"
EVENTS = "events"


class ChangeSignal(Protocol):
    """A connection of its own that tells when the board may have changed (see
    :mod:`kanban_orm.wakeup`). Used by one thread; any error means the connection is
    gone (the caller closes it and opens a new one)."""

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True as soon as a change may have happened
        (a spurious True costs a look; a missed one, a wait for the safety poll)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    """What kanban_orm needs from a database, beyond the portable SQL of
    :mod:`kanban_orm.queries`.

    Transaction control (``begin_write``, ``commit_write``, ``roll_back``), error
    classification (``is_contention``, ``is_unavailable``, ``is_read_only``: each
    backend recognises its own driver's errors only), the claim, the end of a run, the batch
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

    def async_url(self, url: Any) -> Any:
        """``url`` with this backend's asyncio driver (for :mod:`kanban_orm.aio`) when
        it names none, or a driver that cannot serve an event loop."""
        ...

    def async_engine_options(self, url: Any) -> dict[str, Any]:
        """Defaults for ``create_async_engine`` on ``url`` (the caller's options win)."""
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

    def driver_thread(self, dbapi_connection: Any) -> DriverThread | None:
        """For an asyncio driver connection whose driver works in a thread of its own,
        how to run a whole transaction there at once (see :class:`DriverThread`);
        None for any other connection."""
        ...

    def is_contention(self, error: exc.DBAPIError) -> bool:
        """True for a lock, busy, deadlock or serialization error of this backend's
        driver: the whole transaction may simply run again."""
        ...

    def is_unavailable(self, error: exc.DBAPIError) -> bool:
        """True for an error of this backend's driver saying the server cannot be
        reached or is going away (refused, shutting down, connection lost): worth
        retrying once the server is back. Never a refusal waiting won't mend (an
        unknown database, bad credentials)."""
        ...

    def is_read_only(self, error: exc.DBAPIError) -> bool:
        """True for an error of this backend's driver refusing a write because the
        database, the server or the transaction is read-only: nothing was written,
        and a retry would be refused the same way."""
        ...

    def is_too_long(self, error: exc.DBAPIError) -> bool:
        """True for an error of this backend's driver refusing a value longer than its
        column holds (MySQL's TEXT: 64 KiB): nothing was written, the input must change."""
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

    def move_and_finish_run(
        self,
        s: Tx,
        statement: ClauseElement,
        params: dict[str, Any],
        closing: RunClosing,
        payload: dict[str, Any] | None,
    ) -> tuple[Any, bool]:
        """A task's guarded UPDATE ``statement`` (with RETURNING of the whole row, its
        WHERE naming ``tasks.id``), then :meth:`finish_run` seeing children. Returns the
        task's new row and whether a child may be waiting; (None, False) when the UPDATE
        matched no row, and nothing was written. Closing the run tells whether a child
        waits, so a task without children pays nothing for promotion."""
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

    def uncontested_completion_and_claim(
        self, by_assignee: bool, by_tenant: bool
    ) -> ClauseElement | None:
        """A statement that is its own transaction completing one held claim, when no
        child can be waiting, and then claiming (see
        :func:`~kanban_orm.queries.completing_and_claiming`); None where there is none:
        complete_and_claim_many then takes the transaction path."""
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

    def lock_status_tallies(self, s: Tx) -> None:
        """Before refresh_counts counts: wait out, and hold off, every transaction that
        moves a row in or out of a tally (models.STATUS_TALLY_DDL)."""
        ...

    def change_signal(self, engine: Engine, topic: str) -> ChangeSignal | None:
        """A new :class:`ChangeSignal` on ``engine``'s database for ``topic``
        (:data:`READY` or :data:`EVENTS`), or None where there is none (an in-memory
        SQLite database): waiters then wake only at their safety poll."""
        ...

    # -- worker liveness (kanban_orm.registry) ------------------------------------------

    #: A registered worker proves itself alive by a lock held on a connection of its
    #: own, which the server frees when the process dies (so the worker keeps it open).
    liveness_lock: ClassVar[bool]

    def lock_worker(self, conn: Connection, worker_id: int) -> None:
        """Take worker ``worker_id``'s liveness lock on ``conn``, inside the transaction
        that registers it, so no one sees the row before the lock is held."""
        ...

    def dead_workers(self, s: Tx | Session, workers: Sequence[Any]) -> set[int]:
        """The ids of those ``workers`` (rows with ``worker_id``, ``host``, ``pid``,
        ``process_start``, ``locked_at``) proven dead. Never a live one, however slow or
        stopped (SIGSTOP): a backend that cannot prove a death returns none."""
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

    def async_url(self, url: Any) -> Any:
        return url

    def async_engine_options(self, url: Any) -> dict[str, Any]:
        return {}

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

    def driver_thread(self, dbapi_connection: Any) -> DriverThread | None:
        return None

    def is_contention(self, error: exc.DBAPIError) -> bool:
        return False

    def is_unavailable(self, error: exc.DBAPIError) -> bool:
        return False

    def is_read_only(self, error: exc.DBAPIError) -> bool:
        return False

    def is_too_long(self, error: exc.DBAPIError) -> bool:
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

    def move_and_finish_run(
        self,
        s: Tx,
        statement: ClauseElement,
        params: dict[str, Any],
        closing: RunClosing,
        payload: dict[str, Any] | None,
    ) -> tuple[Any, bool]:
        moved = s.execute(statement, params).first()
        if moved is None:
            return None, False
        _, waiting = self.finish_run(s, closing, payload, see_children=True)
        return moved, waiting

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

    def uncontested_completion_and_claim(
        self, by_assignee: bool, by_tenant: bool
    ) -> ClauseElement | None:
        return None

    def lock_link_graph(self, s: Tx) -> None:
        return None

    def wait_for_event_writers(self, session: Session, after_id: int) -> None:
        return None

    def snapshot_reads(self, session: Session) -> None:
        return None

    def lock_status_tallies(self, s: Tx) -> None:
        # The tally rows themselves (the triggers read them under a shared lock);
        # SQLite's BEGIN IMMEDIATE already holds every other writer off.
        s.execute(q.LOCK_TALLIES).all()

    def change_signal(self, engine: Engine, topic: str) -> ChangeSignal | None:
        return None

    liveness_lock: ClassVar[bool] = False

    def lock_worker(self, conn: Connection, worker_id: int) -> None:
        return None

    def dead_workers(self, s: Tx | Session, workers: Sequence[Any]) -> set[int]:
        return set()

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


def connect_apart(engine: Engine) -> Any:
    """A driver connection to ``engine``'s database outside its pool, for a
    :class:`ChangeSignal`: it lives as long as its watcher, and a pool would lend it out."""
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    return engine.dialect.connect(*cargs, **cparams)


#: How often an idle waiter polls NEWEST_EVENT_ID (a round trip to the server each time).
NEWEST_EVENT_CHECK_SECONDS = 0.05
#: Every move into ready and every transition appends an event, and the newest event id
#: is one look at the end of the primary key: the cheapest change check where there is
#: no NOTIFY (MariaDB/MySQL) or where one would cost every writer (PostgreSQL's event
#: log). An id committed out of order (lower than one already seen) is missed until the
#: next change or the safety poll; a tailing read still gets it, as the event guard
#: makes it wait for every drawn id.
NEWEST_EVENT_ID = "SELECT MAX(id) FROM kanban_task_events"


def newest_event_signal(connection: Any) -> PolledSignal:
    """A :class:`PolledSignal` on the newest event id; ``connection`` in autocommit."""
    return PolledSignal(connection, NEWEST_EVENT_ID, NEWEST_EVENT_CHECK_SECONDS)


class PolledSignal:
    """A :class:`ChangeSignal` that reads one cheap value every ``interval`` seconds on
    a held connection in autocommit mode and reports a change when the value differs."""

    def __init__(self, connection: Any, statement: str, interval: float) -> None:
        self._connection = connection
        self._cursor = connection.cursor()
        self._statement = statement
        self._interval = interval
        self._last = self._read()

    def _read(self) -> Any:
        self._cursor.execute(self._statement)
        return self._cursor.fetchall()

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            value = self._read()
            if value != self._last:
                self._last = value
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self._interval, left))

    def close(self) -> None:
        self._connection.close()


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
