"""MariaDB (10.6 and later) and MySQL 8, through mysqlclient, at READ COMMITTED.

The driver: mysqlclient (MySQLdb, C) ran a one-row round trip 1.5-2.4 times as fast
as PyMySQL (pure Python) in an interleaved measurement on MariaDB 10.11; a plain
``mysql://`` or ``mariadb://`` URL gets it, and ``mysql+pymysql://`` works too.

Neither has ``UPDATE ... RETURNING`` (MariaDB has ``INSERT``/``DELETE ... RETURNING``
since 10.5, MySQL has none), so this backend is the portable one plus two things:

* **Claims** pick their candidates with ``SELECT ... FOR UPDATE SKIP LOCKED`` (MariaDB
  10.6+, MySQL 8.0.1+), then claim them with a guarded ``UPDATE ... WHERE claim_lock IS
  NULL`` whose row count decides, open the runs, number ``current_run_id`` from them and
  write the events, all in one transaction. Concurrent claimers skip each other's
  candidates instead of queueing behind one row. One task (the common case) opens its
  run first and claims with the run's token and id, a statement fewer (:func:`_claim_one`).
* **Closing a run** is one UPDATE that sets ``id = LAST_INSERT_ID(id)``: its reply
  carries the closed run's id, so it needs no RETURNING; a completion then reads the
  task's new row and whether a child waits in one read (``move_and_finish_run``).
* **Every other statement with RETURNING** runs as a locking read of the rows its WHERE
  clause matches (``FOR UPDATE``, which reads the latest committed version, as
  PostgreSQL's UPDATE re-check does), the statement itself restricted to those rows,
  and a read of the returned columns (:func:`run_returning`). The locks are held to the
  end of the transaction, so what was read is what was written.

READ COMMITTED, not InnoDB's default REPEATABLE READ: every decision is taken by a
locking read or a guarded UPDATE, which see the latest committed rows at any level,
and READ COMMITTED takes no gap locks, which at REPEATABLE READ make concurrent claims
and event inserts deadlock for rows that do not even exist.

Where MariaDB and MySQL 8 differ: MariaDB accepts a subquery on the table an UPDATE
changes (``parents_finished``) since 10.3.2, MySQL refuses it (error 1093); MariaDB
has ``RANDOM_BYTES`` since 10.10; ``FOR UPDATE OF`` is MySQL's only (SQLAlchemy leaves
it out on MariaDB). Only MariaDB 10.11 is tested here.

Gap-free event tailing: an event id is drawn when the row is inserted, and transactions
commit in any order, so a follower reading ``id > after_id`` could see id 92 committed
while 91's transaction is still open, move past 91 and never see it. Locking the rows
past the cursor is not enough: it waits for uncommitted rows, not for an id drawn and
not yet inserted. The guard is PostgreSQL's, on a row (revision kb0007): a ``BEFORE
INSERT`` trigger on the event log reads the one row of :data:`EVENT_GUARD_TABLE` ``LOCK
IN SHARE MODE`` before the row's id is drawn, held to the end of the transaction, and a
tailing read first takes that row ``FOR UPDATE`` (:func:`wait_for_event_writers
<MySQLBackend.wait_for_event_writers>`): once it holds it, every transaction that drew
an event id has ended, and none can draw one until the read's transaction ends.
"""

from __future__ import annotations

import threading
from collections import namedtuple
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    Integer,
    bindparam,
    column,
    event,
    exc,
    func,
    insert,
    literal,
    select,
    table,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement, operators
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Delete, Insert, Update, UpdateBase
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList

from .. import queries as q
from ..clock import new_claim_token, utcnow
from ..errors import DatabaseBusy
from ..models import (
    EVENT_LOG_GUARD_TRIGGER,
    MYSQL_EVENT_GUARD_TABLE,
    MYSQL_EVENT_GUARD_TRIGGER_DDL,
)
from ..states import Status
from .base import (
    ChangeSignal,
    PortableBackend,
    RunClosing,
    connect_apart,
    newest_event_signal,
    record_events,
)

if TYPE_CHECKING:
    from alembic.runtime.migration import MigrationContext

    from ..driver import Tx

#: Deadlock found, lock wait timeout, and MySQL 8's NOWAIT refusal (3572; MariaDB reports
#: 1205), from refresh_counts' lock: the whole transaction may run again.
_CONTENTION_CODES = frozenset({1213, 1205, 3572})
#: The server cannot be reached or is going away: can't connect by socket (2002) or TCP
#: (2003), server has gone away (2006), lost connection during a query (2013) or at
#: on a system error (2055), connection killed (MariaDB 1927), server shutdown
#: in progress (1053), too many connections (1040), disconnected for inactivity (MySQL
#: 8's 4031). Not: unknown database (1049), access denied (1044, 1045).
_UNAVAILABLE_CODES = frozenset({2002, 2003, 2006, 2013, 2055, 1927, 1053, 1040, 4031})
#: A write refused as read-only: the server runs ``--read-only`` (1290, "option
#: prevents statement"), a read-only transaction (1792), MariaDB's read-only mode
#: (1836, a replica or ``read_only`` with super), a read-only table or engine (1036).
_READ_ONLY_CODES = frozenset({1290, 1792, 1836, 1036})

tasks, runs, events = q.tasks, q.runs, q.events
_ids: Any = bindparam("ids", expanding=True)


def _claim_pick(by_assignee: bool, by_tenant: bool) -> Any:
    pick = select(tasks.c.id).where(q.claimable(tasks))
    if by_assignee:
        pick = pick.where(tasks.c.assignee == bindparam("only_assignee"))
    if by_tenant:
        pick = pick.where(tasks.c.tenant == bindparam("only_tenant"))
    return (
        pick.order_by(tasks.c.priority.desc(), tasks.c.id)
        .limit(bindparam("limit", type_=Integer, literal_execute=True))
        .with_for_update(skip_locked=True)
    )


#: The pick of claim_next, by (by_assignee, by_tenant).
PICKS = {(a, t): _claim_pick(a, t) for a in (False, True) for t in (False, True)}
#: One task by id, if claimable, locked. It waits for a row lock rather than skipping
#: it, as PostgreSQL's UPDATE does: claim_next's picks lock each row they examine, and
#: release the ones their filters then refuse (READ COMMITTED), so a skip made
#: claim_task miss a claimable task about one call in six while other claimers polled.
#: A claimer that does hold the task commits first, and the re-read finds it claimed.
PICK_BY_ID = (
    select(tasks.c.id)
    .where(tasks.c.id == bindparam("task_id"), q.claimable(tasks))
    .with_for_update()
)
#: The guarded claim of the picked rows: its row count says how many were claimed.
CLAIM_PICKED = (
    update(tasks).where(tasks.c.id.in_(_ids), tasks.c.claim_lock.is_(None)).values(q._CLAIM_VALUES)
)
#: The run of each task just claimed in this transaction (running, no run yet).
_JUST_CLAIMED = (
    tasks.c.id.in_(_ids),
    tasks.c.status == Status.RUNNING.value,
    tasks.c.current_run_id.is_(None),
)
OPEN_CLAIMED_RUNS = insert(runs).from_select(
    ["task_id", "attempt", "claimer", "worker_id", "claim_lock", "started_at", "last_heartbeat_at"],
    select(
        tasks.c.id,
        tasks.c.attempts,
        bindparam("claimer", type_=runs.c.claimer.type),
        bindparam("worker_id", type_=runs.c.worker_id.type),
        tasks.c.claim_lock,
        utcnow(),
        utcnow(),
    ).where(*_JUST_CLAIMED),
)
NAME_CLAIMED_RUNS = (
    update(tasks)
    .where(*_JUST_CLAIMED)
    .values(
        current_run_id=select(runs.c.id)
        .where(runs.c.task_id == tasks.c.id, runs.c.claim_lock == tasks.c.claim_lock)
        .scalar_subquery()
    )
)


def _log_claimed(which: Any) -> Any:
    return insert(events).from_select(
        ["task_id", "run_id", "kind", "payload", "created_at"],
        select(
            tasks.c.id,
            tasks.c.current_run_id,
            literal("claimed"),
            func.json_object(
                literal("claimer"),
                bindparam("claimer", type_=runs.c.claimer.type),
                literal("attempt"),
                tasks.c.attempts,
            ),
            utcnow(),
        ).where(which),
    )


LOG_CLAIMED = _log_claimed(tasks.c.id.in_(_ids))
CLAIMED_ROWS = (
    select(tasks).where(tasks.c.id.in_(_ids)).order_by(tasks.c.priority.desc(), tasks.c.id)
)

# One picked task, the common case (claim_next, claim_task), in one statement fewer: its
# run is opened first, making the fencing token, and the guarded claim then copies the
# token from the run and names the run by the id the INSERT reported (``lastrowid``),
# where several tasks need NAME_CLAIMED_RUNS to find each run by its token. The picked
# row is locked, so the run's attempt (``attempts + 1``) is the one the claim makes.
OPEN_PICKED_RUN = insert(runs).from_select(
    ["task_id", "attempt", "claimer", "worker_id", "claim_lock", "started_at", "last_heartbeat_at"],
    select(
        tasks.c.id,
        tasks.c.attempts + 1,
        bindparam("claimer", type_=runs.c.claimer.type),
        bindparam("worker_id", type_=runs.c.worker_id.type),
        new_claim_token(),
        utcnow(),
        utcnow(),
    ).where(tasks.c.id == bindparam("task_id"), tasks.c.claim_lock.is_(None)),
)
CLAIM_PICKED_ONE = (
    update(tasks)
    .where(tasks.c.id == bindparam("task_id"), tasks.c.claim_lock.is_(None))
    .values(
        {
            **q._CLAIM_VALUES,
            "claim_lock": select(runs.c.claim_lock)
            .where(runs.c.id == bindparam("run_id"))
            .scalar_subquery(),
            "current_run_id": bindparam("run_id", type_=Integer),
        }
    )
)
#: LOG_CLAIMED and CLAIMED_ROWS of one task: by ``id = :task_id``, where an IN list
#: is expanded into the SQL on every call.
LOG_CLAIMED_ONE = _log_claimed(tasks.c.id == bindparam("task_id"))
CLAIMED_ROW = select(tasks).where(tasks.c.id == bindparam("task_id"))
#: The run of a claim its guard refused (kept out of the transaction's writes).
DROP_PICKED_RUN = runs.delete().where(runs.c.id == bindparam("run_id"))

#: CLOSE_OPEN_RUN without RETURNING: ``LAST_INSERT_ID(id)`` hands the closed run's id
#: to the client (the driver's ``lastrowid``) with the UPDATE's reply, where the
#: emulated RETURNING took a locking read before and a read after.
CLOSE_OPEN_RUN_NAMING = (
    update(runs)
    .where(runs.c.task_id == bindparam("run_task_id"), runs.c.ended_at.is_(None))
    .values({**q._CLOSING_RUN, "id": func.last_insert_id(runs.c.id)})
)
#: Whether a child of :run_task_id waits in todo (CLOSE_OPEN_RUN_SEEING_CHILDREN's column).
CHILDREN_WAITING = select(q.children_waiting())
#: A moved task's row and that, in one read (see MySQLBackend.move_and_finish_run).
MOVED_ROW_SEEING_CHILDREN = select(tasks, q.children_waiting().label("waiting")).where(
    tasks.c.id == bindparam("run_task_id")
)
#: A task's row without the read's last column (Tx.attach maps every column it is given).
_TaskRow = namedtuple("_TaskRow", [column.key for column in tasks.c])  # type: ignore[misc]

#: The ctid protocol's touches (queries.TOUCH_PARENTS*) are PostgreSQL's: here a
#: completion always runs in a transaction that looks for waiting children, so locking
#: the parents (in id order) is all a wait-maker needs. Run in their place.
_LOCK_IN_ID_ORDER = {
    id(q.TOUCH_PARENTS): select(tasks.c.id)
    .where(tasks.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(tasks.c.id)
    .with_for_update(),
    id(q.TOUCH_PARENTS_OF): select(tasks.c.id)
    .where(
        tasks.c.id.in_(
            select(q.links.c.parent_id).where(q.links.c.child_id == bindparam("task_id"))
        )
    )
    .order_by(tasks.c.id)
    .with_for_update(),
}

#: The event log's commit-order guard (see the module docstring; revision kb0007 makes
#: the table, its one row and the trigger, which takes the row's name from PostgreSQL's).
EVENT_GUARD_TABLE = MYSQL_EVENT_GUARD_TABLE
EVENT_GUARD_TRIGGER = EVENT_LOG_GUARD_TRIGGER
_guard = table(EVENT_GUARD_TABLE, column("id"))
EVENT_GUARD_TRIGGER_DDL = MYSQL_EVENT_GUARD_TRIGGER_DDL
#: The tailing reader's side: the guard row, exclusively, held to the end of the read's
#: transaction. Writers queue behind a waiting reader, so MariaDB bounds the wait at a
#: second (``WAIT`` takes whole seconds); a timeout is contention, and the read retries.
LOCK_EVENT_GUARD = select(_guard.c.id).where(_guard.c.id == 1).with_for_update()
LOCK_EVENT_GUARD_MARIADB = text(
    f"SELECT id FROM {EVENT_GUARD_TABLE} WHERE id = 1 FOR UPDATE WAIT 1"
).columns(column("id", Integer))
#: The guard's parts, for the schema check.
EVENT_GUARD_ROW = select(_guard.c.id).where(_guard.c.id == 1)
EVENT_GUARD_TRIGGER_PRESENT = text(
    "SELECT 1 FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() "
    "AND TRIGGER_NAME = :name AND EVENT_OBJECT_TABLE = :table"
).bindparams(name=EVENT_GUARD_TRIGGER, table=events.name)

#: Concurrent migrators queue on a named lock, released at the end (GET_LOCK is
#: session-scoped on MySQL: the transaction's end does not release it).
LOCK_MIGRATIONS = select(func.get_lock(literal("kanban_orm.migrate"), literal(600)))
UNLOCK_MIGRATIONS = select(func.release_lock(literal("kanban_orm.migrate")))


#: A registered worker's liveness lock: a named lock, which the server frees when the
#: connection that took it ends. Names are server-wide, so the database's name (hashed:
#: a name holds at most 64 characters) keeps two boards on one server apart.
_WORKER_LOCK_NAME = "CONCAT('kbw:', LEFT(SHA1(DATABASE()), 16), ':', :worker_id)"
#: Waits up to 10 s: the lock of a fresh id is free, unless a checker holds it a moment.
LOCK_WORKER = text(f"SELECT GET_LOCK({_WORKER_LOCK_NAME}, 10)")


def _worker_lock_freed(status_table: str) -> Any:
    """The lock is free and the server has run since the worker took it (a restart frees
    every lock, which then proves nothing). An uptime that cannot be read (no such
    status) proves nothing either: NULL, not dead."""
    return text(
        f"SELECT IS_FREE_LOCK({_WORKER_LOCK_NAME}) = 1 AND UTC_TIMESTAMP(6) - INTERVAL ("
        f"SELECT VARIABLE_VALUE FROM {status_table}"
        " WHERE VARIABLE_NAME = 'UPTIME') SECOND < :locked_at"
    )


#: The server's status is in information_schema on MariaDB, performance_schema on MySQL 8.
WORKER_LOCK_FREED = {
    True: _worker_lock_freed("information_schema.GLOBAL_STATUS"),
    False: _worker_lock_freed("performance_schema.global_status"),
}


#: Data and index bytes of the current schema's tables, as InnoDB's statistics last
#: estimated them (they lag the truth by up to ~10 % of a table's rows).
DATABASE_BYTES = text(
    "SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables"
    " WHERE table_schema = DATABASE()"
)


class MySQLBackend(PortableBackend):
    name: ClassVar[str] = "mysql"
    title: ClassVar[str] = "MariaDB/MySQL"
    keeps_cursor: ClassVar[bool] = False
    autocommits_one_statement: ClassVar[bool] = False

    def url(self, url: Any) -> Any:
        if url.get_driver_name() == "":
            return url.set(drivername=f"{url.get_backend_name()}+mysqldb")
        return url

    def async_url(self, url: Any) -> Any:
        # asyncmy rather than aiomysql: compiled (Cython) protocol code, so less client
        # time per transition on the same loop, and maintained (docs/async.md).
        if url.get_driver_name() in ("", "mysqldb", "pymysql"):
            return url.set(drivername=f"{url.get_backend_name()}+asyncmy")
        return url

    def configure_engine(
        self, engine: Engine, *, synchronous: str | None, busy_timeout_ms: int | None
    ) -> None:
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                cursor.execute("SET SESSION time_zone = '+00:00'")
            finally:
                cursor.close()

    def is_contention(self, error: exc.DBAPIError) -> bool:
        return _error_code(error) in _CONTENTION_CODES

    def is_unavailable(self, error: exc.DBAPIError) -> bool:
        return _error_code(error) in _UNAVAILABLE_CODES

    def is_read_only(self, error: exc.DBAPIError) -> bool:
        return _error_code(error) in _READ_ONLY_CODES

    def is_too_long(self, error: exc.DBAPIError) -> bool:
        # ER_DATA_TOO_LONG, in strict mode (MariaDB's default): TEXT holds 64 KiB.
        return _error_code(error) == 1406

    liveness_lock: ClassVar[bool] = True

    def lock_worker(self, conn: Connection, worker_id: int) -> None:
        if conn.execute(LOCK_WORKER, {"worker_id": worker_id}).scalar() != 1:
            raise DatabaseBusy(f"worker {worker_id}'s liveness lock is held elsewhere")

    def dead_workers(self, s: Tx | Session, workers: Sequence[Any]) -> set[int]:
        dialect = s.dialect if not isinstance(s, Session) else s.get_bind().dialect
        freed = WORKER_LOCK_FREED[bool(getattr(dialect, "is_mariadb", False))]
        return {
            w.worker_id
            for w in workers
            if w.locked_at is not None
            and s.execute(freed, {"worker_id": w.worker_id, "locked_at": w.locked_at}).scalar()
        }

    def claim_by_id(self, s: Tx, params: dict[str, Any], claimer: str) -> list[Any]:
        ids = list(s.scalars(PICK_BY_ID, params))
        return _claim(s, ids, params, claimer)

    def claim_next(
        self, s: Tx, by_assignee: bool, by_tenant: bool, params: dict[str, Any], claimer: str
    ) -> list[Any]:
        ids = list(s.scalars(PICKS[by_assignee, by_tenant], params))
        return _claim(s, ids, params, claimer)

    def finish_run(
        self, s: Tx, closing: RunClosing, payload: dict[str, Any] | None, see_children: bool
    ) -> tuple[int | None, bool]:
        closed = s.run_for_cursor(CLOSE_OPEN_RUN_NAMING, closing)
        run_id = closed.lastrowid if closed.rowcount else None
        record_events(s, closing["run_outcome"], [(closing["run_task_id"], run_id, payload)])
        if run_id is None or not see_children:
            return run_id, True  # no open run (a forced completion from todo): look
        return run_id, bool(s.execute(CHILDREN_WAITING, closing).scalar())

    def move_and_finish_run(
        self,
        s: Tx,
        statement: ClauseElement,
        params: dict[str, Any],
        closing: RunClosing,
        payload: dict[str, Any] | None,
    ) -> tuple[Any, bool]:
        # The emulated RETURNING's read of the moved row waits until the run is closed,
        # and says whether a child waits too: one read where there were two. Still after
        # the task's UPDATE, so it sees every wait-maker that held the row before it.
        plan = emulation(statement) if isinstance(statement, Update) else None
        if plan is None or plan.pinned is None or plan.pinned.key != "task_id":
            return super().move_and_finish_run(s, statement, params, closing, payload)
        if s.run_for_cursor(plan.bare, params).rowcount == 0:
            return None, False
        run_id, _ = self.finish_run(s, closing, payload, see_children=False)
        row = s.execute(MOVED_ROW_SEEING_CHILDREN, closing).first()
        # No open run (a forced completion from todo), so nothing was seen: look.
        return _TaskRow(*row[:-1]), run_id is None or bool(row.waiting)

    def wait_for_event_writers(self, session: Session, after_id: int) -> None:
        mariadb = getattr(session.get_bind().dialect, "is_mariadb", False)
        session.execute(LOCK_EVENT_GUARD_MARIADB if mariadb else LOCK_EVENT_GUARD).all()

    def snapshot_reads(self, session: Session) -> None:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})

    def change_signal(self, engine: Engine, topic: str) -> ChangeSignal | None:
        # MariaDB/MySQL have no NOTIFY and no cheap change counter (a table's
        # update_time counts whole seconds); every move into ready appends an event.
        connection = connect_apart(engine)
        # Each poll its own transaction: at REPEATABLE READ an open one would keep
        # reading the snapshot of its first poll.
        connection.autocommit(True)
        return newest_event_signal(connection)

    def lock_migrations(self, conn: Any) -> None:
        conn.execute(LOCK_MIGRATIONS)

    def unlock_migrations(self, conn: Any) -> None:
        conn.execute(UNLOCK_MIGRATIONS)

    def run_returning(
        self, s: Tx, statement: ClauseElement, params: dict[str, Any]
    ) -> list[Any] | None:
        """Statements with RETURNING, emulated (see :func:`run_returning`)."""
        return run_returning(s, statement, params)

    def storage_bytes(self, conn: Connection) -> dict[str, int]:
        return {"database": int(conn.execute(DATABASE_BYTES).scalar_one())}

    def schema_differences(self, context: MigrationContext, found: list[Any]) -> list[Any]:
        from . import mysql_schema

        return mysql_schema.differences(context, found)


def _error_code(error: exc.DBAPIError) -> int | None:
    """The MySQL error number of a mysqlclient or PyMySQL error (their first argument;
    sqlite3's and psycopg's errors have a message there instead)."""
    args: tuple[Any, ...] = tuple(getattr(error.orig, "args", ()))
    code = args[0] if args else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _claim(s: Tx, ids: list[int], params: dict[str, Any], claimer: str) -> list[Any]:
    if not ids:
        return []
    picked = {
        "ids": ids,
        "ttl": params["ttl"],
        "claimer": claimer,
        "worker_id": params.get("worker_id"),
    }
    if len(ids) == 1:
        return _claim_one(s, picked, ids[0])
    if s.run_for_cursor(CLAIM_PICKED, picked).rowcount == 0:
        return []  # the guard decides; the picked rows were locked, so it seldom says no
    s.execute(OPEN_CLAIMED_RUNS, picked)
    s.execute(NAME_CLAIMED_RUNS, picked)
    s.execute(LOG_CLAIMED, picked)
    return s.execute(CLAIMED_ROWS, picked).all()


def _claim_one(s: Tx, picked: dict[str, Any], task_id: int) -> list[Any]:
    one = {**picked, "task_id": task_id}
    run_id = s.run_for_cursor(OPEN_PICKED_RUN, one).lastrowid
    if not run_id:
        return []
    one["run_id"] = run_id
    if s.run_for_cursor(CLAIM_PICKED_ONE, one).rowcount == 0:
        # The guard decides (the picked row was locked, so it seldom says no), and a
        # refused claim leaves no run behind.
        s.run_for_cursor(DROP_PICKED_RUN, one)
        return []
    s.execute(LOG_CLAIMED_ONE, {"task_id": task_id, "claimer": one["claimer"]})
    return s.execute(CLAIMED_ROW, {"task_id": task_id}).all()


# -- RETURNING, emulated -----------------------------------------------------------------


class _Emulated:
    """The three statements that stand for one DML statement with RETURNING."""

    __slots__ = ("bare", "lock", "original", "pinned", "reread")

    def __init__(self, statement: UpdateBase) -> None:
        self.original = statement
        table: Any = statement.table
        returning = list(statement._returning)
        self.lock: Any = None
        self.reread: Any = None
        bare: Any = statement._clone()
        bare._returning = ()
        if isinstance(statement, Insert):
            self.bare = bare
            self.reread = select(*returning).where(table.c.id == bindparam("_kanban_id"))
            return
        where = getattr(statement, "whereclause", None)
        matched = () if where is None else (where,)
        if isinstance(statement, Delete):
            # The rows are read, and locked, before they go (any key: links have no id).
            self.reread = select(*returning).where(*matched).with_for_update()
            self.bare = bare
            return
        # An UPDATE whose WHERE names the row's id (``id = :task_id AND ...``, most
        # transitions) needs no locking read first: the UPDATE locks that one row and
        # its row count says whether it matched; the read by id follows.
        self.pinned = _pinned_id(table, where)
        if self.pinned is not None:
            self.bare = bare
            self.reread = select(*returning).where(table.c.id == self.pinned)
            return
        by_id = table.c.id.in_(bindparam("_kanban_ids", expanding=True))
        self.lock = select(table.c.id).where(*matched).with_for_update()
        self.reread = select(*returning).where(by_id)
        self.bare = bare.where(by_id)


def _pinned_id(table: Any, where: Any) -> BindParameter[Any] | None:
    """The parameter ``where`` (a conjunction) sets ``table.id`` equal to, if any."""
    if where is None or "id" not in table.c:
        return None
    terms = where.clauses if isinstance(where, BooleanClauseList) else (where,)
    if isinstance(where, BooleanClauseList) and where.operator is not operators.and_:
        return None
    for term in terms:
        if (
            isinstance(term, BinaryExpression)
            and term.operator is operators.eq
            and term.left is table.c.id
            and isinstance(term.right, BindParameter)
        ):
            return term.right
    return None


_emulated: dict[int, _Emulated] = {}
_emulated_lock = threading.Lock()


def emulation(statement: UpdateBase) -> _Emulated:
    found = _emulated.get(id(statement))
    if found is None or found.original is not statement:
        found = _Emulated(statement)
        with _emulated_lock:
            _emulated[id(statement)] = found
    return found


def run_returning(s: Tx, statement: ClauseElement, params: dict[str, Any]) -> list[Any] | None:
    """``statement`` (INSERT, UPDATE or DELETE ... RETURNING) as a lock, the statement
    and a read; its rows. None when ``statement`` returns nothing (run it as it is)."""
    instead = _LOCK_IN_ID_ORDER.get(id(statement))
    if instead is not None:
        return s.execute(instead, params).all()
    if not isinstance(statement, UpdateBase) or not statement._returning:
        return None
    plan = emulation(statement)
    if isinstance(statement, Insert):
        cursor = s.run_for_cursor(plan.bare, params)
        return s.execute(plan.reread, {**params, "_kanban_id": cursor.lastrowid}).all()
    if isinstance(statement, Delete):
        rows = s.execute(plan.reread, params).all()
        if rows:
            s.run_for_cursor(plan.bare, params)
        return rows
    assert isinstance(statement, Update)
    if plan.pinned is not None:
        if s.run_for_cursor(plan.bare, params).rowcount == 0:
            return []
        return s.execute(plan.reread, params).all()
    ids = list(s.scalars(plan.lock, params))
    if not ids:
        return []
    found = {**params, "_kanban_ids": ids}
    s.run_for_cursor(plan.bare, found)
    return s.execute(plan.reread, found).all()


# -- the database clock and the fencing token ------------------------------------------


@compiles(utcnow, "mysql")
@compiles(utcnow, "mariadb")
def _utcnow_mysql(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    # UTC_TIMESTAMP(6): microseconds, whatever the session's time zone.
    clauses = list(element.clauses)
    if not clauses:
        return "UTC_TIMESTAMP(6)"
    offset = compiler.process(clauses[0], **kw)
    return f"(UTC_TIMESTAMP(6) + INTERVAL ROUND(({offset}) * 1000000) MICROSECOND)"


@compiles(new_claim_token, "mysql")
@compiles(new_claim_token, "mariadb")
def _token_mysql(element: new_claim_token, compiler: SQLCompiler, **kw: Any) -> str:
    # Evaluated per row, so one UPDATE hands each claimed task its own token.
    return "LOWER(HEX(RANDOM_BYTES(16)))"
