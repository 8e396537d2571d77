"""``kanban-orm doctor``: what the database cannot enforce by itself, checked.

Each check returns a :class:`Finding` that says what it saw and how to fix it. With
``repair=True`` the checks whose fix is safe apply it (each repair its own transaction
through the retry layer, each logged in the board-level log as a ``repaired`` entry, and
the task events the same move would write anyway). Checks that only report: SQLite's
``quick_check``/``integrity_check`` and WAL size, event id gaps, schema drift, table sizes
and the board file's permissions.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from . import backends, maintenance, migrate, queries, steps
from .clock import utcnow
from .db import database_errors, joins_caller_transaction, run_read, run_write
from .driver import Tx
from .errors import DatabaseError, KanbanError, SchemaOutOfDate
from .models import (
    KANBAN_TABLES,
    TALLIED_STATUSES,
    Base,
    Task,
    TaskEvent,
    TaskLink,
    TaskRun,
)
from .states import FINISHED, Status
from .workflow import count_by_status

tasks: Table = Task.__table__  # type: ignore[assignment]
runs: Table = TaskRun.__table__  # type: ignore[assignment]
events: Table = TaskEvent.__table__  # type: ignore[assignment]
links: Table = TaskLink.__table__  # type: ignore[assignment]

OK, INFO, WARNING, ERROR = "ok", "info", "warning", "error"
#: A lease expired this long ago means no worker is reclaiming (a Worker reclaims
#: expired leases within seconds of their expiry).
DEFAULT_STALE_AFTER = timedelta(minutes=30)
#: A WAL larger than this means checkpoints are not keeping up (a reader held open).
WAL_WARNING_BYTES = 256 * 1024 * 1024
SHOWN_IDS = 20  # task ids a finding lists; the count says how many there are
_UNCHECKED = "could not be checked"
_NO_SCHEMA = "no kanban schema"
_RECOVER_FIX = (
    "stop the workers, copy the file (with its -wal), then restore a backup or"
    " `sqlite3 kanban.db .recover | sqlite3 new.db` and point KANBAN_DATABASE_URL at new.db"
)


@dataclass
class Finding:
    """One check's result: ``severity`` is ok, info, warning or error; ``fix`` says what
    to do about it; ``repaired`` is True once ``--repair`` fixed it."""

    check: str
    severity: str
    message: str
    fix: str | None = None
    count: int = 0
    task_ids: list[int] = field(default_factory=list)
    repairable: bool = False
    repaired: bool = False

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def needs_attention(self) -> bool:
        return self.severity in (WARNING, ERROR) and not self.repaired


# -- statements -------------------------------------------------------------------------

#: Open runs of tasks that are not running (every exit from running closes the run).
_OPEN_RUNS_ON_IDLE = (
    select(runs.c.id, runs.c.task_id)
    .join(tasks, tasks.c.id == runs.c.task_id)
    .where(runs.c.ended_at.is_(None), tasks.c.status != Status.RUNNING.value)
    .order_by(runs.c.id)
)
_CLOSE_ORPHAN_RUN = (
    update(runs)
    .where(
        runs.c.id == bindparam("run_id"),
        runs.c.ended_at.is_(None),
        runs.c.task_id.in_(select(tasks.c.id).where(tasks.c.status != Status.RUNNING.value)),
    )
    .values(ended_at=utcnow(), outcome="abandoned", error="closed by kanban-orm doctor")
    .returning(runs.c.task_id)
)
_STALE_LEASES = (
    select(tasks.c.id)
    .where(
        tasks.c.status == Status.RUNNING.value,
        tasks.c.claim_expires < utcnow(-bindparam("stale_seconds")),
    )
    .order_by(tasks.c.id)
)
_HAS_PARENT = select(links.c.child_id).where(links.c.child_id == tasks.c.id).exists()
#: Waiting in todo for parents that are all finished: a promotion was missed (a parent
#: finished by a host's own SQL, or a crash of a writer that bypassed the library).
_STRANDED_TODO = (
    select(tasks.c.id)
    .where(tasks.c.status == Status.TODO.value, _HAS_PARENT, queries.parents_finished(tasks))
    .order_by(tasks.c.id)
)
#: Unfinished tasks only: prune's events_before removes the old events of finished
#: tasks that stay, so a finished task without events is what a prune leaves.
_TASKS_WITHOUT_EVENTS = (
    select(tasks.c.id)
    .where(
        tasks.c.status.not_in([status.value for status in FINISHED]),
        ~select(events.c.id).where(events.c.task_id == tasks.c.id).exists(),
    )
    .order_by(tasks.c.id)
)
_EXACT_FINISHED_COUNTS = (
    select(tasks.c.status, func.count())
    .where(tasks.c.status.in_(TALLIED_STATUSES))
    .group_by(tasks.c.status)
)
_EVENT_SPAN = select(func.count(), func.min(events.c.id), func.max(events.c.id)).where(
    events.c.id > bindparam("above")
)


# -- the checks -------------------------------------------------------------------------


def doctor(
    session: Session,
    *,
    repair: bool = False,
    stale_after: timedelta = DEFAULT_STALE_AFTER,
    full: bool = False,
) -> list[Finding]:
    """Run every check (and with ``repair``, the safe repairs); the findings, in order.

    On SQLite the file is checked first (``PRAGMA quick_check``, or the slower
    ``integrity_check`` with ``full``): a file that fails it gets its findings and
    nothing else runs, above all no repair writes to it. A check the database cannot
    answer (a damaged file, a server gone) is an error finding naming it, with its fix:
    doctor never raises for what it finds.
    """
    engine = _engine_of(session)
    findings: list[Finding] = []
    if backends.of(engine).name == "sqlite":  # checks of the file itself
        findings += [
            _guarded("sqlite_integrity", lambda: sqlite_integrity(engine, full=full)),
            _guarded("sqlite_wal", lambda: sqlite_wal_size(engine)),
        ]
        file_mode = board_file_mode(engine)
        if file_mode is not None:
            findings.append(file_mode)
        if findings[0].severity == ERROR:
            return findings
    schema = _guarded("schema", lambda: schema_drift(engine))
    findings.insert(0, schema)
    if schema.severity == ERROR and (_UNCHECKED in schema.message or _NO_SCHEMA in schema.message):
        return findings  # the board's tables cannot be read: their checks cannot run
    checks: list[tuple[str, Callable[[], Finding]]] = [
        ("open_runs", lambda: open_runs_on_finished_tasks(session, repair=repair)),
        ("stale_leases", lambda: stale_leases(session, stale_after=stale_after, repair=repair)),
        ("stranded_todo", lambda: stranded_todo_tasks(session, repair=repair)),
        ("status_counts", lambda: status_counts(session, repair=repair)),
        ("event_gaps", lambda: event_gaps(session)),
        ("table_sizes", lambda: table_sizes(session)),
    ]
    findings += [_guarded(name, check) for name, check in checks]
    return findings


def _guarded(name: str, check: Callable[[], Finding]) -> Finding:
    """``check``'s finding, or an error finding when the database could not answer it."""
    try:
        return check()
    except KanbanError as error:
        return Finding(
            name,
            ERROR,
            f"{_UNCHECKED}: {error}",
            fix="make the database readable (server up, file intact: see sqlite_integrity),"
            " then run `kanban-orm doctor` again",
        )


def _engine_of(session: Session) -> Engine:
    bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


def schema_drift(engine: Engine) -> Finding:
    try:
        with database_errors():
            migrate.check(engine)
    except SchemaOutOfDate as error:
        return Finding(
            "schema", ERROR, str(error), fix="run `kanban-orm db upgrade` (back up first)"
        )
    return Finding("schema", OK, f"at {migrate.head()}, matches the models")


def sqlite_integrity(engine: Engine, *, full: bool = False) -> Finding:
    pragma = "integrity_check" if full else "quick_check"
    try:
        with database_errors(), engine.connect() as conn:
            rows = [str(r[0]) for r in conn.exec_driver_sql(f"PRAGMA {pragma}")]
    except DatabaseError as error:  # not a SQLite file at all, or a page the check reads
        return Finding(
            "sqlite_integrity",
            ERROR,
            f"PRAGMA {pragma} could not read the file: {error}",
            fix=_RECOVER_FIX,
            count=1,
        )
    if rows == ["ok"]:
        return Finding("sqlite_integrity", OK, f"PRAGMA {pragma}: ok")
    return Finding(
        "sqlite_integrity",
        ERROR,
        f"PRAGMA {pragma} reports {len(rows)} problem(s): {'; '.join(rows[:5])}",
        fix=_RECOVER_FIX,
        count=len(rows),
    )


def _sqlite_path(engine: Engine) -> Path | None:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def sqlite_wal_size(engine: Engine) -> Finding:
    path = _sqlite_path(engine)
    wal = None if path is None else path.with_name(path.name + "-wal")
    size = wal.stat().st_size if wal is not None and wal.exists() else 0
    if size > WAL_WARNING_BYTES:
        return Finding(
            "sqlite_wal",
            WARNING,
            f"the WAL is {size:,} bytes: checkpoints are not keeping up",
            fix="find the reader that keeps a transaction open (a long read blocks"
            " checkpoints); then `PRAGMA wal_checkpoint(TRUNCATE)`",
            count=size,
        )
    return Finding("sqlite_wal", OK, f"WAL is {size:,} bytes", count=size)


def board_file_mode(engine: Engine) -> Finding | None:
    """A SQLite board file (or its directory) that other users can read: a finding with
    the fix; None when the board is not a file. Kept apart from ``db check``'s own
    file-mode warnings so the two can be merged without touching each other."""
    path = _sqlite_path(engine)
    if path is None or not path.exists():
        return None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        return Finding(
            "file_mode",
            WARNING,
            f"{path} is readable by other users (mode {mode:o}): tasks, results and"
            " claim tokens are in it",
            fix=f"chmod 600 {path} (and its -wal and -shm files)",
        )
    return Finding("file_mode", OK, f"{path} mode {mode:o}")


def _ids(session: Session, statement: Any, params: dict[str, Any] | None = None) -> list[int]:
    return run_read(session, lambda s: [int(i) for i in s.scalars(statement, params or {})])


def open_runs_on_finished_tasks(session: Session, *, repair: bool = False) -> Finding:
    found = run_read(session, lambda s: list(s.execute(_OPEN_RUNS_ON_IDLE).all()))
    if not found:
        return Finding("open_runs", OK, "every open run belongs to a running task")
    task_ids = sorted({row.task_id for row in found})
    finding = Finding(
        "open_runs",
        WARNING,
        f"{len(found)} run(s) left open on tasks that are not running",
        fix="`kanban-orm doctor --repair` closes them as 'abandoned'",
        count=len(found),
        task_ids=task_ids[:SHOWN_IDS],
        repairable=True,
    )
    if repair:

        def work(s: Tx) -> None:
            closed = []
            for row in found:
                task_id = s.execute(_CLOSE_ORPHAN_RUN, {"run_id": row.id}).scalar()
                if task_id is not None:
                    closed.append(row.id)
                    steps.record(s, task_id, "run_closed", row.id, {"by": "doctor"})
            _log_repair(s, "open_runs", {"run_ids": closed})

        run_write(session, work)
        finding.repaired = True
    return finding


def stale_leases(
    session: Session, *, stale_after: timedelta = DEFAULT_STALE_AFTER, repair: bool = False
) -> Finding:
    seconds = stale_after.total_seconds()
    found = _ids(session, _STALE_LEASES, {"stale_seconds": seconds})
    if not found:
        return Finding("stale_leases", OK, f"no lease expired more than {stale_after} ago")
    finding = Finding(
        "stale_leases",
        WARNING,
        f"{len(found)} running task(s) whose lease expired more than {stale_after} ago:"
        " no worker is reclaiming them",
        fix="run a worker (it reclaims expired leases), or `kanban-orm doctor --repair`",
        count=len(found),
        task_ids=found[:SHOWN_IDS],
        repairable=True,
    )
    if repair:
        # The service's own reclaim: a compare-and-swap on each token it sees, with the
        # reclaimed event and the attempt counted, as a worker's reclaim would.
        from .service import release_stale_claims

        reclaimed = release_stale_claims(session)
        run_write(session, lambda s: _log_repair(s, "stale_leases", {"reclaimed": reclaimed}))
        finding.repaired = True
    return finding


def stranded_todo_tasks(session: Session, *, repair: bool = False) -> Finding:
    found = _ids(session, _STRANDED_TODO)
    if not found:
        return Finding("stranded_todo", OK, "no todo task waits for parents that are finished")
    finding = Finding(
        "stranded_todo",
        WARNING,
        f"{len(found)} todo task(s) whose parents are all finished (a promotion was missed)",
        fix="`kanban-orm doctor --repair` promotes them to ready",
        count=len(found),
        task_ids=found[:SHOWN_IDS],
        repairable=True,
    )
    if repair:

        def work(s: Tx) -> None:
            promoted = []
            for task_id in found:
                steps.lock_for_ready_or_todo(s, task_id)
                if s.execute(queries.PROMOTE_ONE, {"task_id": task_id}).first() is not None:
                    steps.record(s, task_id, "promoted", None, {"by": "doctor"})
                    promoted.append(task_id)
            _log_repair(s, "stranded_todo", {"task_ids": promoted})

        run_write(session, work)
        finding.repaired = True
    return finding


def status_counts(session: Session, *, repair: bool = False) -> Finding:
    """The board's counts of the finished statuses (kept tallies, models.StatusTally)
    against an exact count: they differ only after a write transaction longer than
    maintenance.REFRESH_MARGIN met a refresh, or when the tally triggers are gone."""

    def read(s: Session) -> tuple[dict[str, int], dict[str, int]]:
        if not joins_caller_transaction(s):
            backends.of(s).snapshot_reads(s)  # both counts on one snapshot
        kept = count_by_status(s)
        exact: dict[str, int] = {k: v for k, v in s.execute(_EXACT_FINISHED_COUNTS)}
        return kept, exact

    kept, exact = run_read(session, read)
    wrong = {
        status: (kept.get(status, 0), exact.get(status, 0))
        for status in TALLIED_STATUSES
        if kept.get(status, 0) != exact.get(status, 0)
    }
    if not wrong:
        return Finding("status_counts", OK, "the board's finished counts are exact")
    text = ", ".join(f"{status} {shown} (is {real})" for status, (shown, real) in wrong.items())
    finding = Finding(
        "status_counts",
        WARNING,
        f"the board counts {text}",
        fix="`kanban-orm doctor --repair` counts them again (kanban_orm.refresh_counts);"
        " if it comes back, check the kanban_tasks_tally_* triggers exist",
        count=len(wrong),
        repairable=True,
    )
    if repair:
        counted = maintenance.refresh_counts(session)
        run_write(session, lambda s: _log_repair(s, "status_counts", {"counted": counted}))
        finding.repaired = True
    return finding


def event_gaps(session: Session) -> Finding:
    """Tasks with no event at all, and (SQLite) event ids missing above the prune
    horizon: history removed outside prune and delete_task."""

    def read(s: Session) -> tuple[list[int], int, int | None]:
        bare = [int(i) for i in s.scalars(_TASKS_WITHOUT_EVENTS)]
        horizon = s.execute(maintenance.EVENTS_HORIZON).scalar() or 0
        count, low, high = s.execute(_EVENT_SPAN, {"above": horizon}).one()
        missing = None
        if backends.of(s).name == "sqlite" and count:
            # SQLite hands out max(id) + 1, so ids above the horizon are dense unless rows
            # were deleted; PostgreSQL's sequence skips the ids of rolled-back inserts.
            missing = int(high) - int(low) + 1 - int(count)
        return bare, int(horizon), missing

    bare, horizon, missing = run_read(session, read)
    problems = []
    if bare:
        problems.append(f"{len(bare)} task(s) have no events")
    if missing:
        problems.append(f"{missing} event id(s) above the prune horizon ({horizon}) are missing")
    if not problems:
        return Finding("event_gaps", OK, f"event log complete above the prune horizon ({horizon})")
    return Finding(
        "event_gaps",
        WARNING,
        "; ".join(problems),
        fix="events were deleted outside prune/delete_task (by hand or a host's SQL):"
        " followers may have missed them; nothing to repair, find who deletes rows",
        count=len(bare) + (missing or 0),
        task_ids=bare[:SHOWN_IDS],
    )


def table_sizes(session: Session) -> Finding:
    tables = [Base.metadata.tables[name] for name in sorted(KANBAN_TABLES)]

    def read(s: Session) -> dict[str, int]:
        return {t.name: int(s.execute(select(func.count()).select_from(t)).scalar_one())
                for t in tables}  # fmt: skip

    sizes = run_read(session, read)
    text = ", ".join(f"{name} {count:,}" for name, count in sizes.items())
    return Finding(
        "table_sizes",
        INFO,
        text,
        fix="`kanban-orm prune --done-before 30d --events-before 30d` keeps history bounded",
        count=sum(sizes.values()),
    )


def _log_repair(s: Tx, check: str, payload: dict[str, Any]) -> None:
    maintenance.log_board_event(s, "repaired", payload={"check": check, **payload})
