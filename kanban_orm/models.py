"""The kanban tables as SQLAlchemy 2 typed declarative models.

The package has its own ``Base`` and ``MetaData`` so a host application's models and
migrations never mix with these; every table is prefixed ``kanban_`` so it cannot collide
with a host's own ``tasks``. Constraint names follow :data:`NAMING_CONVENTION`, which
Alembic needs to ALTER and drop constraints by name (above all in SQLite batch mode).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    event,
    text,
)
from sqlalchemy.dialects.mysql import DATETIME as MYSQL_DATETIME
from sqlalchemy.dialects.mysql import LONGBLOB
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .clock import utcnow
from .states import Status

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TITLE_MAX_LENGTH = 500
NAME_MAX_LENGTH = 200  # assignee, tenant, claimer, created_by, idempotency_key
TOKEN_LENGTH = 32  # claim_lock: uuid4 hex
ATTACHMENT_NAME_MAX_LENGTH = 255  # a file name, as most file systems allow

# BIGINT on PostgreSQL; plain INTEGER on SQLite, where only "INTEGER PRIMARY KEY"
# aliases the rowid (and so autoincrements).
BigId = BigInteger().with_variant(Integer(), "sqlite")
JsonDoc = JSON().with_variant(JSONB(), "postgresql")
# MySQL's and MariaDB's BLOB holds 64 KiB; attachments are capped at 25 MiB by default.
Blob = LargeBinary().with_variant(LONGBLOB(), "mysql", "mariadb")
#: Naive UTC. MySQL and MariaDB store whole seconds unless told a precision (kb0004).
Timestamp = DateTime().with_variant(MYSQL_DATETIME(fsp=6), "mysql", "mariadb")


class Milliseconds(TypeDecorator[float]):
    """Seconds in Python, whole milliseconds in an INTEGER column: the same on every
    database (no float column, whose width and driver handling differ)."""

    impl = Integer
    cache_ok = True

    def process_bind_param(self, value: float | None, dialect: Any) -> int | None:
        return None if value is None else max(1, round(value * 1000))

    def process_result_value(self, value: int | None, dialect: Any) -> float | None:
        return None if value is None else value / 1000


HOST_MAX_LENGTH = 255

_KEY_WITH_TENANT = "idempotency_key IS NOT NULL AND tenant IS NOT NULL AND status <> 'archived'"
_KEY_WITHOUT_TENANT = "idempotency_key IS NOT NULL AND tenant IS NULL AND status <> 'archived'"
#: When a task finished, for the done column's order and prune: the same expression as
#: the board's sort (workflow.board_cards), so the index below serves it. created_at
#: stands in for a done task without completed_at (one written by a host's own ORM).
DONE_ORDER_SQL = "coalesce(completed_at, created_at)"
_STATUS_VALUES = ", ".join(f"'{s.value}'" for s in Status)
#: The databases that build the partial unique indexes below as declared. MySQL and
#: MariaDB have no partial index: there each is a unique index on a stored generated
#: column that is NULL wherever the WHERE clause is false (see MYSQL_GENERATED_UNIQUE).
PARTIAL_INDEX_DIALECTS = ("sqlite", "postgresql")
#: The tallied statuses (StatusTally), with their rows (created with the table).
TALLIED_STATUSES = (Status.DONE.value, Status.ARCHIVED.value)
_TALLIED = ", ".join(f"'{status}'" for status in TALLIED_STATUSES)
#: The rows of ix_kanban_tasks_status_updated_at where it can be partial. A query that
#: should use the index repeats this condition word for word: SQLite uses a partial index
#: only for a WHERE clause that contains its condition, and a bound ``status = ?`` does not.
TALLIED_WHERE = f"status IN ({_TALLIED})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Task(Base):
    """A card on the board.

    ``version`` is bumped by every UPDATE the library issues and is the mapper's
    version counter, so a host application's own ORM edits are optimistic too.
    """

    __tablename__ = "kanban_tasks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    title: Mapped[str] = mapped_column(String(TITLE_MAX_LENGTH))
    body: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=Status.READY.value)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    assignee: Mapped[str | None] = mapped_column(String(NAME_MAX_LENGTH))
    tenant: Mapped[str | None] = mapped_column(String(NAME_MAX_LENGTH))
    created_by: Mapped[str | None] = mapped_column(String(NAME_MAX_LENGTH))
    claim_lock: Mapped[str | None] = mapped_column(String(TOKEN_LENGTH))
    claim_expires: Mapped[datetime | None] = mapped_column(Timestamp)
    # Deliberately no foreign key: runs reference tasks, and a cycle of foreign keys
    # would make every migration and delete order-sensitive. The service keeps it
    # pointing at the task's one open run; the stress suite checks it.
    current_run_id: Mapped[int | None] = mapped_column(BigId)
    version: Mapped[int] = mapped_column(Integer, default=1)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int | None] = mapped_column(Integer)
    run_at: Mapped[datetime | None] = mapped_column(Timestamp)
    idempotency_key: Mapped[str | None] = mapped_column(String(NAME_MAX_LENGTH))
    result: Mapped[str | None] = mapped_column(Text)
    block_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow())
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow())
    started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    completed_at: Mapped[datetime | None] = mapped_column(Timestamp)
    #: Seconds a run of this task may take before the Worker cancels it and fails the
    #: task (kb0011, which adds it last); None: no limit of its own. Kept in milliseconds.
    max_runtime: Mapped[float | None] = mapped_column("max_runtime_ms", Milliseconds)

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 - SQLAlchemy's API
    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUS_VALUES})", name="status"),
        # A claim sets both in one statement and every exit from running clears both,
        # so the database itself refuses a half-claimed card.
        CheckConstraint(
            "(status = 'running') = (claim_lock IS NOT NULL)", name="claim_lock_iff_running"
        ),
        CheckConstraint("length(title) > 0", name="title_not_empty"),
        # Serves claim_next: the ready pool in claim order.
        Index("ix_kanban_tasks_claim_order", "status", text("priority DESC"), "id"),
        Index("ix_kanban_tasks_claim_expires", "claim_expires"),
        # Serves the maintained counts (StatusTally): the finished tasks changed since
        # the tally's ``through``, a range of recent rows however long the history.
        # Partial (kb0012): a claim then never touches it, and a completion adds one
        # entry instead of moving one. MariaDB has no partial index: there it is whole.
        Index(
            "ix_kanban_tasks_status_updated_at",
            "status",
            "updated_at",
            sqlite_where=text(TALLIED_WHERE),
            postgresql_where=text(TALLIED_WHERE),
        ),
        Index("ix_kanban_tasks_assignee", "assignee"),
        Index("ix_kanban_tasks_tenant", "tenant"),
        # Serves the done column (newest first, scanned backwards) and prune's search for
        # tasks finished before a cutoff: without it both sort every finished task.
        # MariaDB cannot index an expression: there the column sorts without it (kb0005).
        Index("ix_kanban_tasks_done_order", "status", text(DONE_ORDER_SQL), "id").ddl_if(
            # SQLAlchemy documents a tuple of names here; its stubs say a single str.
            dialect=("sqlite", "postgresql")  # type: ignore[arg-type]
        ),
        # A key is unique among live tasks of a tenant; NULL tenants need their own index
        # because NULLs never collide in a unique index.
        Index(
            "ux_kanban_tasks_idempotency_tenant",
            "tenant",
            "idempotency_key",
            unique=True,
            sqlite_where=text(_KEY_WITH_TENANT),
            postgresql_where=text(_KEY_WITH_TENANT),
        ).ddl_if(dialect=PARTIAL_INDEX_DIALECTS),  # type: ignore[arg-type]
        Index(
            "ux_kanban_tasks_idempotency_no_tenant",
            "idempotency_key",
            unique=True,
            sqlite_where=text(_KEY_WITHOUT_TENANT),
            postgresql_where=text(_KEY_WITHOUT_TENANT),
        ).ddl_if(dialect=PARTIAL_INDEX_DIALECTS),  # type: ignore[arg-type]
    )

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.status} {self.title!r}>"


class TaskRun(Base):
    """One attempt at a task: opened by a claim, closed with an outcome."""

    __tablename__ = "kanban_task_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("kanban_tasks.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    claimer: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    claim_lock: Mapped[str] = mapped_column(String(TOKEN_LENGTH))
    started_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow())
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(Timestamp)
    ended_at: Mapped[datetime | None] = mapped_column(Timestamp)
    outcome: Mapped[str | None] = mapped_column(String(16))
    summary: Mapped[str | None] = mapped_column(Text)
    # "metadata" is reserved on declarative classes; the column keeps its name.
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JsonDoc)
    error: Mapped[str | None] = mapped_column(Text)
    # The registered worker that claimed, if a Worker did: what lets another worker
    # prove the claimer dead and release the claim before its lease ends. No foreign
    # key, as for current_run_id: a run outlives its worker's row. kb0011 adds it last.
    worker_id: Mapped[int | None] = mapped_column(BigId)

    __table_args__ = (
        CheckConstraint("(ended_at IS NULL) = (outcome IS NULL)", name="ended_iff_outcome"),
        Index("ix_kanban_task_runs_task_id", "task_id", "id"),
        # At most one open run per task, enforced by the database.
        Index(
            "ux_kanban_task_runs_one_open",
            "task_id",
            unique=True,
            sqlite_where=text("ended_at IS NULL"),
            postgresql_where=text("ended_at IS NULL"),
        ).ddl_if(dialect=PARTIAL_INDEX_DIALECTS),  # type: ignore[arg-type]
    )

    def __repr__(self) -> str:
        return f"<TaskRun {self.id} task={self.task_id} attempt={self.attempt} {self.outcome}>"


class TaskEvent(Base):
    """An append-only record of one transition, written in the transition's transaction."""

    __tablename__ = "kanban_task_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("kanban_tasks.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(BigId)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow())

    __table_args__ = (
        Index("ix_kanban_task_events_task_id", "task_id", "id"),
        Index("ix_kanban_task_events_kind", "kind"),
        # SQLite hands out max(id) + 1 otherwise: once prune removed the newest events,
        # new ones would reuse their ids and a follower past them would never see them.
        {"sqlite_autoincrement": True},
    )

    def __repr__(self) -> str:
        return f"<TaskEvent {self.id} task={self.task_id} {self.kind}>"


#: PostgreSQL only: the event log's commit-order guard (see :data:`EVENT_LOG_GUARD_DDL`).
EVENT_LOG_LOCK_KEY = 0x6B62_6576  # "kbev"
EVENT_LOG_GUARD_FUNCTION = "kanban_event_log_guard"
EVENT_LOG_GUARD_TRIGGER = "kanban_task_events_guard"
#: Every statement that inserts events first takes a *shared* transaction advisory lock,
#: held until its transaction ends. Writers share it, so they never wait for each
#: other; a tailing reader (list_events) takes it *exclusively* for one read, which
#: waits out every transaction that has inserted events but not yet committed. Event
#: ids come from a sequence when the row is inserted, so without the guard a reader
#: could see id 11 committed while id 10's transaction is still open, move its cursor
#: past 10 and never see it. Alembic revision kb0003 installs the same objects.
EVENT_LOG_GUARD_DDL = (
    f"CREATE OR REPLACE FUNCTION {EVENT_LOG_GUARD_FUNCTION}() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN "
    f"PERFORM pg_advisory_xact_lock_shared({EVENT_LOG_LOCK_KEY}); RETURN NULL; END $$",
    f"CREATE TRIGGER {EVENT_LOG_GUARD_TRIGGER} BEFORE INSERT ON kanban_task_events "
    f"FOR EACH STATEMENT EXECUTE FUNCTION {EVENT_LOG_GUARD_FUNCTION}()",
)

#: PostgreSQL only: the wake-up channel (see :mod:`kanban_orm.wakeup`) a worker LISTENs
#: on. NOTIFY is transactional: a listener hears it once the transaction that moved the
#: task commits, never before, never for a rollback. The event log has no channel:
#: PostgreSQL queues the commits of notifying transactions one at a time, and every claim
#: and completion appends events (measured: claim + complete at 0.8x with an events
#: trigger), so ``events --follow`` polls the newest event id instead.
READY_CHANNEL = "kanban_ready"
READY_NOTIFY_FUNCTION = "kanban_notify_ready"
READY_NOTIFY_TRIGGERS = ("kanban_tasks_ready_insert", "kanban_tasks_ready_update")
#: Every move into ``ready`` notifies, whichever statement makes it (create, promote,
#: release, retry, unblock, reclaim, specify, reopen, a repair by hand): one rule in
#: the database rather than one call per transition. Row triggers with a WHEN clause:
#: the condition is evaluated without calling the function, so the claims and
#: completions of the hot path (ready -> running -> done) pay a comparison, no call.
#: The payload is empty, so PostgreSQL folds a transaction's notifications into one;
#: the wake-up is broad (any tenant, any assignee): the claim that follows decides.
#: Alembic revision kb0010 installs the same objects.
READY_NOTIFY_DDL = (
    f"CREATE OR REPLACE FUNCTION {READY_NOTIFY_FUNCTION}() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN "
    f"PERFORM pg_notify('{READY_CHANNEL}', ''); RETURN NULL; END $$",
    f"CREATE TRIGGER {READY_NOTIFY_TRIGGERS[0]} AFTER INSERT ON kanban_tasks "
    f"FOR EACH ROW WHEN (NEW.status = 'ready') EXECUTE FUNCTION {READY_NOTIFY_FUNCTION}()",
    f"CREATE TRIGGER {READY_NOTIFY_TRIGGERS[1]} AFTER UPDATE OF status ON kanban_tasks "
    "FOR EACH ROW WHEN (NEW.status = 'ready' AND OLD.status <> 'ready') "
    f"EXECUTE FUNCTION {READY_NOTIFY_FUNCTION}()",
)


class TaskLink(Base):
    """A dependency edge: the child is not claimable until the parent is finished."""

    __tablename__ = "kanban_task_links"

    parent_id: Mapped[int] = mapped_column(
        ForeignKey("kanban_tasks.id", ondelete="CASCADE"), primary_key=True
    )
    child_id: Mapped[int] = mapped_column(
        ForeignKey("kanban_tasks.id", ondelete="CASCADE"), primary_key=True
    )
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow())

    __table_args__ = (
        CheckConstraint("parent_id <> child_id", name="not_self"),
        Index("ix_kanban_task_links_child_id", "child_id"),
    )


class TaskComment(Base):
    """A note on a task by a person or an agent; adding one writes a ``commented`` event."""

    __tablename__ = "kanban_task_comments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("kanban_tasks.id", ondelete="CASCADE"))
    author: Mapped[str | None] = mapped_column(String(NAME_MAX_LENGTH))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow())

    __table_args__ = (
        CheckConstraint("length(body) > 0", name="body_not_empty"),
        Index("ix_kanban_task_comments_task_id", "task_id", "id"),
    )

    def __repr__(self) -> str:
        return f"<TaskComment {self.id} task={self.task_id} by {self.author}>"


class TaskAttachment(Base):
    """A file kept with a task (and the run that made it, if any), in the database.

    ``name`` is already sanitised (a bare file name, never a path); ``data`` is deferred
    so listing attachments does not load their bytes. Adding one writes an ``attached``
    event. See :mod:`kanban_orm.attachments`.
    """

    __tablename__ = "kanban_task_attachments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("kanban_tasks.id", ondelete="CASCADE"))
    # No foreign key, as for current_run_id: the service checks the run is the task's.
    run_id: Mapped[int | None] = mapped_column(BigId)
    name: Mapped[str] = mapped_column(String(ATTACHMENT_NAME_MAX_LENGTH))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(Blob, deferred=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow())

    __table_args__ = (
        CheckConstraint("size >= 0", name="size_not_negative"),
        Index("ix_kanban_task_attachments_task_id", "task_id", "id"),
    )

    def __repr__(self) -> str:
        return f"<TaskAttachment {self.id} task={self.task_id} {self.name!r} {self.size}B>"


class BoardEvent(Base):
    """A board-level log entry that outlives the tasks it names: a deletion, a prune
    batch, a doctor repair. ``task_id`` has no foreign key on purpose (the task may be
    gone). ``events_through`` is set when the entry removed task events: every event id
    up to it may be missing, which is how :func:`~kanban_orm.service.list_events` tells a
    follower its cursor points into removed history."""

    __tablename__ = "kanban_board_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    task_id: Mapped[int | None] = mapped_column(BigId)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    events_through: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow())

    __table_args__ = (
        # max(events_through) is read by every tailing list_events: one index probe.
        Index("ix_kanban_board_events_events_through", "events_through"),
        Index("ix_kanban_board_events_task_id", "task_id"),
    )

    def __repr__(self) -> str:
        return f"<BoardEvent {self.id} {self.kind} task={self.task_id}>"


class StatusTally(Base):
    """How many tasks of a finished status (done, archived) had last changed by
    ``through``, kept by triggers on ``kanban_tasks`` (:data:`STATUS_TALLY_DDL`).

    A finished status's count is then ``tasks`` plus its tasks changed after ``through``
    (an index range over recent rows), instead of a scan of the whole history.
    ``through`` is NULL until :func:`kanban_orm.refresh_counts` (prune and the
    housekeeper run it) first counts; until then the count is exact the slow way.
    """

    __tablename__ = "kanban_status_tallies"

    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    tasks: Mapped[int] = mapped_column(BigInteger, default=0)
    through: Mapped[datetime | None] = mapped_column(Timestamp)

    def __repr__(self) -> str:
        return f"<StatusTally {self.status} {self.tasks} through {self.through}>"


STATUS_TALLY_ROWS = "INSERT INTO kanban_status_tallies (status, tasks) VALUES " + ", ".join(
    f"('{status}', 0)" for status in TALLIED_STATUSES
)
#: PostgreSQL: writers that touch a tallied row hold this lock shared; refresh_counts
#: takes it exclusively, so its count never misses a change in flight.
STATUS_TALLY_LOCK_KEY = 0x6B62_7473  # "kbts"


def _tally_step(row: str, sign: str, through: str = "through") -> str:
    """The UPDATE that moves ``row`` (OLD or NEW) in or out of its status's tally."""
    return (
        f"UPDATE kanban_status_tallies SET tasks = tasks {sign} 1 "
        f"WHERE status = {row}.status AND {row}.updated_at <= {through}"
    )


#: The clock utcnow() stamps rows with (kanban_orm.backends), as of the statement's
#: start: a row the statement has just stamped is at or after it.
_STATEMENT_NOW = {
    "sqlite": "strftime('%Y-%m-%d %H:%M:%f000', 'now')",
    "postgresql": "timezone('UTC', statement_timestamp())",
    "mysql": "UTC_TIMESTAMP(6)",
}


def _stamped_before_now(dialect: str) -> str:
    """NEW was last changed before this statement: only then can it enter a tally.

    A row the statement stamps now (a completion) is after every ``through``, which is
    at least REFRESH_MARGIN behind the clock, so its step would change nothing: skipped,
    the hot path neither runs the trigger's body nor takes its lock. On SQLite that is
    exact; where writers run concurrently a refresh could count while such a row is
    uncommitted only if its statement began more than REFRESH_MARGIN earlier, which
    is the long-open transaction refresh_counts already documents."""
    return f"NEW.updated_at < {_STATEMENT_NOW[dialect]}"


def _mysql_tally_step(row: str, sign: str, when: str | None = None) -> str:
    # InnoDB would lock the tally row an UPDATE looks at even when its condition fails
    # (and so serialize every completion): ``through`` is read under a shared lock
    # first, and the row updated only when it moves.
    return (
        f"IF {row}.status IN ({_TALLIED}){f' AND {when}' if when else ''} THEN "
        f"SET cutoff = (SELECT through FROM kanban_status_tallies "
        f"WHERE status = {row}.status LOCK IN SHARE MODE); "
        f"IF {row}.updated_at <= cutoff THEN UPDATE kanban_status_tallies "
        f"SET tasks = tasks {sign} 1 WHERE status = {row}.status; END IF; END IF;"
    )


_MYSQL_TALLY_BODIES = {
    "INSERT": _mysql_tally_step("NEW", "+"),
    "UPDATE": f"{_mysql_tally_step('OLD', '-')} "
    f"{_mysql_tally_step('NEW', '+', _stamped_before_now('mysql'))}",
    "DELETE": _mysql_tally_step("OLD", "-"),
}
_MYSQL_TALLY_DDL = tuple(
    f"CREATE TRIGGER kanban_tasks_tally_{event.lower()} AFTER {event} ON kanban_tasks "
    f"FOR EACH ROW BEGIN DECLARE cutoff DATETIME(6); {body} END"
    for event, body in _MYSQL_TALLY_BODIES.items()
)
#: The triggers that keep StatusTally, per backend (kb0012 installs the same): a row
#: enters or leaves a tally when it was, or becomes, a tallied status changed by
#: ``through``. A claim, a heartbeat or a completion (its updated_at is now, after
#: ``through``) adjusts nothing, and fires no trigger body (_stamped_before_now);
#: reopening, archiving or deleting old history does. Host SQL is counted the same way.
STATUS_TALLY_DDL: dict[str, tuple[str, ...]] = {
    "sqlite": (
        "CREATE TRIGGER kanban_tasks_tally_insert AFTER INSERT ON kanban_tasks "
        f"WHEN NEW.status IN ({_TALLIED}) BEGIN {_tally_step('NEW', '+')}; END",
        "CREATE TRIGGER kanban_tasks_tally_update AFTER UPDATE ON kanban_tasks "
        f"WHEN OLD.status IN ({_TALLIED}) "
        f"OR (NEW.status IN ({_TALLIED}) AND {_stamped_before_now('sqlite')}) "
        f"BEGIN {_tally_step('OLD', '-')}; {_tally_step('NEW', '+')}; END",
        "CREATE TRIGGER kanban_tasks_tally_delete AFTER DELETE ON kanban_tasks "
        f"WHEN OLD.status IN ({_TALLIED}) BEGIN {_tally_step('OLD', '-')}; END",
    ),
    "postgresql": (
        "CREATE OR REPLACE FUNCTION kanban_status_tally() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN "
        f"PERFORM pg_advisory_xact_lock_shared({STATUS_TALLY_LOCK_KEY}); "
        f"IF TG_OP <> 'INSERT' AND OLD.status IN ({_TALLIED}) THEN "
        f"{_tally_step('OLD', '-')}; END IF; "
        f"IF TG_OP <> 'DELETE' AND NEW.status IN ({_TALLIED}) THEN "
        f"{_tally_step('NEW', '+')}; END IF; "
        "RETURN NULL; END $$",
        "CREATE TRIGGER kanban_tasks_tally_insert AFTER INSERT ON kanban_tasks FOR EACH ROW "
        f"WHEN (NEW.status IN ({_TALLIED})) EXECUTE FUNCTION kanban_status_tally()",
        "CREATE TRIGGER kanban_tasks_tally_update AFTER UPDATE ON kanban_tasks FOR EACH ROW "
        f"WHEN (OLD.status IN ({_TALLIED}) "
        f"OR (NEW.status IN ({_TALLIED}) AND {_stamped_before_now('postgresql')})) "
        "EXECUTE FUNCTION kanban_status_tally()",
        "CREATE TRIGGER kanban_tasks_tally_delete AFTER DELETE ON kanban_tasks FOR EACH ROW "
        f"WHEN (OLD.status IN ({_TALLIED})) EXECUTE FUNCTION kanban_status_tally()",
    ),
    "mysql": _MYSQL_TALLY_DDL,
    "mariadb": _MYSQL_TALLY_DDL,
}


class RegisteredWorker(Base):
    """A registered worker process (kb0011): who it is, where it runs, when it was last
    seen, and what proves it alive.

    ``kanban_orm.registry`` writes these rows. On PostgreSQL and MySQL/MariaDB the worker
    holds a lock named by its id on a connection of its own, which the server frees when
    the process dies; ``locked_at`` is when it took it (a server restarted since frees
    every lock, which then proves nothing). On SQLite ``host``, ``pid`` and
    ``process_start`` (the operating system's start mark of the process, so a reused pid
    is not taken for the worker) prove it. ``stopped_at`` is set by a clean stop, or when
    another worker proves this one dead.
    """

    __tablename__ = "kanban_workers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    claimer: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    host: Mapped[str] = mapped_column(String(HOST_MAX_LENGTH))
    pid: Mapped[int] = mapped_column(Integer)
    process_start: Mapped[str | None] = mapped_column(String(NAME_MAX_LENGTH))
    started_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow())
    last_seen_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow())
    locked_at: Mapped[datetime | None] = mapped_column(Timestamp)
    stopped_at: Mapped[datetime | None] = mapped_column(Timestamp)
    #: Why the row ended: ``stopped`` (a clean stop) or ``dead`` (proven so by another).
    end_reason: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (
        # The live workers, which the dead-claim sweep and `kanban-orm workers` read.
        Index("ix_kanban_workers_stopped_at", "stopped_at"),
    )

    def __repr__(self) -> str:
        return f"<RegisteredWorker {self.id} {self.claimer} {self.host}:{self.pid}>"


KANBAN_TABLES = frozenset(Base.metadata.tables)

#: MySQL/MariaDB only: table -> (generated column, its type, expression, unique index,
#: indexed columns), the partial unique indexes' form there. Revision kb0004 builds the
#: same (its own frozen copy); create_all() builds it with the DDL below.
MYSQL_GENERATED_UNIQUE = {
    "kanban_tasks": (
        (
            "live_key_tenant",
            "VARCHAR(200)",
            f"IF({_KEY_WITH_TENANT}, tenant, NULL)",
            "ux_kanban_tasks_idempotency_tenant",
            "live_key_tenant, idempotency_key",
        ),
        (
            "live_key_no_tenant",
            "VARCHAR(200)",
            f"IF({_KEY_WITHOUT_TENANT}, idempotency_key, NULL)",
            "ux_kanban_tasks_idempotency_no_tenant",
            "live_key_no_tenant",
        ),
    ),
    "kanban_task_runs": (
        (
            "open_task_id",
            "BIGINT",
            "IF(ended_at IS NULL, task_id, NULL)",
            "ux_kanban_task_runs_one_open",
            "open_task_id",
        ),
    ),
}
#: MySQL/MariaDB only: the event log's commit-order guard, PostgreSQL's advisory lock
#: on a row (revision kb0007; see kanban_orm.backends.mysql). BEFORE triggers run
#: before the row's id is drawn.
MYSQL_EVENT_GUARD_TABLE = "kanban_event_guard"
MYSQL_EVENT_GUARD_TRIGGER_DDL = (
    f"CREATE TRIGGER {EVENT_LOG_GUARD_TRIGGER} BEFORE INSERT ON kanban_task_events "
    "FOR EACH ROW BEGIN DECLARE guard SMALLINT; "
    f"SELECT id INTO guard FROM {MYSQL_EVENT_GUARD_TABLE} WHERE id = 1 LOCK IN SHARE MODE; END"
)
MYSQL_EVENT_GUARD_DDL = (
    f"CREATE TABLE {MYSQL_EVENT_GUARD_TABLE} (id SMALLINT NOT NULL, "
    "CONSTRAINT pk_kanban_event_guard PRIMARY KEY (id), "
    "CONSTRAINT ck_kanban_event_guard_one_row CHECK (id = 1)) ENGINE=InnoDB",
    f"INSERT INTO {MYSQL_EVENT_GUARD_TABLE} (id) VALUES (1)",
    MYSQL_EVENT_GUARD_TRIGGER_DDL,
)
_MYSQL = ("mysql", "mariadb")


def _mysql_generated_unique_ddl(table: str) -> list[str]:
    return [
        statement
        for column, type_, expression, index, columns in MYSQL_GENERATED_UNIQUE[table]
        for statement in (
            f"ALTER TABLE {table} ADD COLUMN {column} {type_} "
            f"GENERATED ALWAYS AS ({expression}) STORED",
            f"CREATE UNIQUE INDEX {index} ON {table} ({columns})",
        )
    ]


# create_all() installs the guard too, so models-only users get the same tailing
# guarantee as migrated databases (the trigger goes with its table on DROP TABLE).
for _statement in EVENT_LOG_GUARD_DDL:
    event.listen(
        TaskEvent.__table__,
        "after_create",
        DDL(_statement).execute_if(dialect="postgresql"),  # type: ignore[no-untyped-call]
    )
# The tallies' rows come with their table; the triggers with kanban_tasks, which they
# are on (they name the tallies' table only when they fire).
event.listen(StatusTally.__table__, "after_create", DDL(STATUS_TALLY_ROWS))  # type: ignore[no-untyped-call]
for _dialect, _statements in STATUS_TALLY_DDL.items():
    for _statement in _statements:
        event.listen(
            Task.__table__,
            "after_create",
            # DDL() formats its text with %: SQLite's strftime needs its % doubled.
            DDL(_statement.replace("%", "%%")).execute_if(dialect=_dialect),  # type: ignore[no-untyped-call]
        )
event.listen(
    Task.__table__,
    "after_drop",
    DDL("DROP FUNCTION IF EXISTS kanban_status_tally()").execute_if(  # type: ignore[no-untyped-call]
        dialect="postgresql"
    ),
)
event.listen(
    TaskEvent.__table__,
    "after_drop",
    DDL(f"DROP FUNCTION IF EXISTS {EVENT_LOG_GUARD_FUNCTION}()").execute_if(  # type: ignore[no-untyped-call]
        dialect="postgresql"
    ),
)
# create_all() on MySQL/MariaDB builds what the migrations build there: the generated
# columns of the partial unique indexes, and the event log's guard row and trigger.
for _table in MYSQL_GENERATED_UNIQUE:
    for _statement in _mysql_generated_unique_ddl(_table):
        event.listen(
            Base.metadata.tables[_table],
            "after_create",
            DDL(_statement).execute_if(dialect=_MYSQL),  # type: ignore[no-untyped-call,arg-type]
        )
for _statement in MYSQL_EVENT_GUARD_DDL:
    event.listen(
        TaskEvent.__table__,
        "after_create",
        DDL(_statement).execute_if(dialect=_MYSQL),  # type: ignore[no-untyped-call,arg-type]
    )
event.listen(
    TaskEvent.__table__,
    "after_drop",
    DDL(f"DROP TABLE IF EXISTS {MYSQL_EVENT_GUARD_TABLE}").execute_if(  # type: ignore[no-untyped-call]
        dialect=_MYSQL  # type: ignore[arg-type]
    ),
)
# The wake-up triggers, for create_all() as for kb0010. After the events table's
# creation: the last DDL statement needs both tables (kanban_tasks is created first).
for _statement in READY_NOTIFY_DDL:
    event.listen(
        TaskEvent.__table__,
        "after_create",
        DDL(_statement).execute_if(dialect="postgresql"),  # type: ignore[no-untyped-call]
    )
for _function in (READY_NOTIFY_FUNCTION,):
    event.listen(
        TaskEvent.__table__,
        "after_drop",
        DDL(f"DROP FUNCTION IF EXISTS {_function}() CASCADE").execute_if(  # type: ignore[no-untyped-call]
            dialect="postgresql"
        ),
    )
