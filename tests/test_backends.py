"""The backend seam: every backend against the same expectations, and the protocols a
backend states (see kanban_orm.backends).

These tests ask the backend what it can do (``uncontested_completion``, ...), never the
dialect's name. Each test of a session, an engine or a driver's errors runs through
both APIs (the ``api`` fixture, tests/apis.py): as it is, and on kanban_orm.aio with the
backend's asyncio driver; ids say which, as in ``test_x[async-mysql]``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import backends, db
from kanban_orm import queries as q
from kanban_orm.backends.base import run_closing
from kanban_orm.backends.postgresql import WAIT_MAKERS
from kanban_orm.db import run_write
from kanban_orm.driver import Tx
from kanban_orm.states import Status, sources_of

from .apis import Api

REPO_ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


# The conftest's fixtures of the same names, through the test's API.


@pytest.fixture
def engine(api: Api, db_url: str) -> Engine:
    return api.engine(db_url)


@pytest.fixture
def session(api: Api, db_url: str) -> Session:
    return api.session(db_url)  # the api fixture closes it


def test_no_dialect_checks_outside_the_backend_layer() -> None:
    package = REPO_ROOT / "kanban_orm"
    found = []
    for path in package.rglob("*.py"):
        if "backends" in path.relative_to(package).parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(word in line for word in ("dialect.name", "is_postgresql", "is_sqlite")):
                found.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert found == []


def test_every_engine_has_a_backend(api: Api, engine: Engine, session: Session) -> None:
    assert session.get_bind() is engine
    assert engine.dialect.is_async == (api.name == "async")  # the async API's own driver
    backend = backends.of(engine)
    assert isinstance(backend, backends.Backend)  # every member of the protocol is there
    assert backend.name == engine.dialect.name
    assert backends.named(backend.name) is backend


def test_storage_bytes_grow_with_what_is_written(engine: Engine, session: Session) -> None:
    backend = backends.of(engine)

    def measured() -> dict[str, int]:
        with engine.connect() as conn:
            return backend.storage_bytes(conn)

    before = measured()
    for i in range(300):
        kb.create_task(session, title=f"task {i}", body="x" * 2000)
    after = measured()
    # MariaDB's figure is InnoDB's estimate, which its statistics thread updates a
    # little after the writes: waited for, up to a minute.
    deadline = time.monotonic() + 60
    while sum(after.values()) <= sum(before.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
        after = measured()
    assert set(after) == set(before) and "database" in after
    assert sum(after.values()) > sum(before.values()) > 0


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(backends.UnsupportedBackend):
        backends.named("oracle")
    with pytest.raises(kb.InvalidInput, match="runs on SQLite"):
        kb.create_engine("oracle://scott@localhost/orcl")


# -- the one-statement completion protocol ------------------------------------------------
# Where a backend completes a claim in one statement without looking for waiting children
# (Backend.uncontested_completion), every transition that can make a child wait on a
# parent must rewrite the parent's row first (PostgreSQLBackend's docstring). Each
# scenario below ends with `child` waiting on a running `parent`; the parent's physical
# row (ctid) must have changed during the transition.


def _running_parent(session: Session) -> int:
    parent = kb.create_task(session, title="parent")
    assert kb.claim_task(session, parent, claimer="w") is not None
    return parent


def _create_with_parent(session: Session, parent: int) -> Callable[[], int]:
    return lambda: kb.create_task(session, title="child", parents=[parent])


def _link(session: Session, parent: int) -> Callable[[], int]:
    child = kb.create_task(session, title="child")
    return lambda: kb.link_tasks(session, parent=parent, child=child).id


def _unblock(session: Session, parent: int) -> Callable[[], int]:
    child = kb.create_task(session, title="child", parents=[parent])
    kb.block_task(session, child, reason="hold")
    return lambda: kb.unblock_task(session, child).id


def _specify(session: Session, parent: int) -> Callable[[], int]:
    child = kb.create_task(session, title="child", parents=[parent], triage=True)
    return lambda: kb.specify_task(session, child).id


def _request_changes(session: Session, parent: int) -> Callable[[], int]:
    child = kb.create_task(session, title="child")
    held = kb.claim_task(session, child, claimer="w2")
    assert held is not None and held.claim_lock is not None
    kb.submit_for_review(session, child, claim_lock=held.claim_lock)
    kb.link_tasks(session, parent=parent, child=child)  # a task in review does not wait
    return lambda: kb.request_changes(session, child, reason="again").id


def _reopen(session: Session, parent: int) -> Callable[[], int]:
    child = kb.create_task(session, title="child")
    held = kb.claim_task(session, child, claimer="w2")
    assert held is not None
    kb.complete_task(session, child, claim_lock=held.claim_lock)
    kb.link_tasks(session, parent=parent, child=child)  # a finished task does not wait
    return lambda: kb.reopen_task(session, child).id


#: Each wait-maker of WAIT_MAKERS, and the state the child waits from (None: created).
SCENARIOS: dict[str, tuple[Status | None, Callable[[Session, int], Callable[[], int]]]] = {
    "create_task(parents=...)": (None, _create_with_parent),
    "link_tasks": (Status.READY, _link),
    "unblock_task": (Status.BLOCKED, _unblock),
    "specify_task": (Status.TRIAGE, _specify),
    "request_changes": (Status.REVIEW, _request_changes),
    "reopen_task": (Status.DONE, _reopen),
}


def test_every_way_into_todo_is_a_listed_wait_maker() -> None:
    # A new move into todo in the transition table is a new wait-maker: it must be
    # listed on the backend and covered here before this passes.
    assert set(SCENARIOS) == set(WAIT_MAKERS)
    covered = {source for source, _ in SCENARIOS.values() if source is not None}
    assert set(sources_of(Status.TODO)) <= covered


def _row_version(session: Session, task_id: int) -> str:
    # PostgreSQL's physical row address: a rewrite of the row moves it.
    return str(
        session.execute(
            sa.text("SELECT CAST(ctid AS TEXT) FROM kanban_tasks WHERE id = :id"), {"id": task_id}
        ).scalar_one()
    )


def test_only_postgresql_completes_without_looking_for_children(session: Session) -> None:
    # The others complete in a transaction that looks for waiting children, so the
    # row-rewrite protocol below is PostgreSQL's alone.
    uncontested = backends.of(session).uncontested_completion(one=True)
    assert (uncontested is not None) == (backends.of(session).name == "postgresql")


@pytest.mark.backends("postgres")
@pytest.mark.parametrize("maker", sorted(SCENARIOS))
def test_wait_makers_rewrite_the_parent_row(session: Session, maker: str) -> None:
    parent = _running_parent(session)
    _, scenario = SCENARIOS[maker]
    transition = scenario(session, parent)
    before = _row_version(session, parent)
    session.commit()
    child = transition()
    assert kb.get_task(session, child).status == Status.TODO.value
    assert _row_version(session, parent) != before, f"{maker} did not rewrite the parent row"
    session.commit()


# -- the conformance suite: the Backend protocol, the same expectations on every backend --
# (River's riverdrivertest: one body, run against each driver.)


def _write(session: Session, work: Callable[[Tx], T]) -> T:
    return run_write(session, work)


def _ready_tasks(session: Session, priorities: list[int]) -> list[int]:
    return [kb.create_task(session, title=f"p{p}", priority=p) for p in priorities]


def test_claim_next_claims_best_first_with_runs_and_events(session: Session) -> None:
    ids = _ready_tasks(session, [1, 5, 3])
    params = {"limit": 2, "ttl": 60.0}
    rows = _write(session, lambda s: s.backend.claim_next(s, False, False, params, "conf"))
    assert [row.id for row in rows] == [ids[1], ids[2]]
    tokens = {row.claim_lock for row in rows}
    assert len(tokens) == 2 and all(len(t) == 32 and int(t, 16) >= 0 for t in tokens)
    for row in rows:
        assert row.status == Status.RUNNING.value and row.attempts == 1
        run = kb.latest_run(session, row.id)
        assert run is not None and run.id == row.current_run_id
        assert run.claim_lock == row.claim_lock and run.claimer == "conf"
        claimed = [e for e in kb.list_events(session, task_id=row.id) if e.kind == "claimed"]
        assert [e.run_id for e in claimed] == [run.id]
        assert claimed[0].payload == {"claimer": "conf", "attempt": 1}


def test_claim_by_id_of_an_unclaimable_task_claims_nothing(session: Session) -> None:
    (task_id,) = _ready_tasks(session, [0])
    params = {"task_id": task_id, "ttl": 60.0}
    assert len(_write(session, lambda s: s.backend.claim_by_id(s, params, "a"))) == 1
    assert _write(session, lambda s: s.backend.claim_by_id(s, params, "b")) == []
    assert len(kb.list_runs(session, task_id=task_id)) == 1


def test_claim_many_gives_each_claim_its_own_run_and_token(session: Session) -> None:
    _ready_tasks(session, [0] * 12)
    claimed = kb.claim_many(session, claimer="w", limit=10)
    assert len(claimed) == 10
    assert len({t.claim_lock for t in claimed}) == 10
    assert len({t.current_run_id for t in claimed}) == 10


def test_complete_pairs_leaves_out_a_claim_that_no_longer_holds(session: Session) -> None:
    _ready_tasks(session, [2, 1])
    first, second = kb.claim_many(session, claimer="w", limit=2)
    pairs = [(first.id, first.claim_lock), (second.id, "0" * 32)]

    def work(s: Tx) -> list[int]:
        rows = s.backend.complete_pairs(s, pairs, None, None, None)
        raise _Rollback([row.id for row in rows])

    with pytest.raises(_Rollback) as got:
        _write(session, work)
    assert got.value.args[0] == [first.id]
    assert kb.get_task(session, first.id).status == Status.RUNNING.value  # rolled back


def test_finish_run_closes_the_run_and_sees_a_waiting_child(session: Session) -> None:
    (parent,) = _ready_tasks(session, [0])
    child = kb.create_task(session, title="child", parents=[parent])
    held = kb.claim_task(session, parent, claimer="w")
    assert held is not None
    closing = run_closing(parent, "completed", "ok", {"k": [1, "é"]}, None)

    def work(s: Tx) -> tuple[int | None, bool]:
        done = {"task_id": parent, "token": held.claim_lock, "task_result": None}
        s.execute(q.COMPLETE_HELD, done)
        return s.backend.finish_run(s, closing, {"forced": False}, see_children=True)

    run_id, waiting = _write(session, work)
    assert run_id == held.current_run_id and waiting is True
    run = kb.latest_run(session, parent)
    assert run is not None and run.outcome == "completed" and run.metadata_ == {"k": [1, "é"]}
    assert kb.get_task(session, child).status == Status.TODO.value  # promotion is the caller's


def test_a_second_claim_of_one_task_opens_a_run_of_its_own(
    session: Session,
) -> None:
    (task_id,) = _ready_tasks(session, [0])
    first = kb.claim_task(session, task_id, claimer="a")
    assert first is not None
    kb.release_task(session, task_id, claim_lock=first.claim_lock)
    params = {"task_id": task_id, "ttl": 60.0}
    (row,) = _write(session, lambda s: s.backend.claim_by_id(s, params, "b"))
    assert row.claim_lock != first.claim_lock
    runs = kb.list_runs(session, task_id=task_id)
    assert [(r.attempt, r.claimer) for r in runs] == [(first.attempts, "a"), (row.attempts, "b")]
    assert runs[1].id == row.current_run_id and runs[1].claim_lock == row.claim_lock
    assert runs[1].ended_at is None
    claimed = [e for e in kb.list_events(session, task_id=task_id) if e.kind == "claimed"]
    assert [(e.run_id, e.payload) for e in claimed][-1] == (
        runs[1].id,
        {"claimer": "b", "attempt": row.attempts},
    )


def test_claim_task_waits_for_a_row_lock_instead_of_missing_the_task(
    db_url: str, engine: Engine, session: Session
) -> None:
    # Another transaction holds the ready task's row (as a claimer's pick does while it
    # examines the row) and claims nothing: claim_task must wait for it, not give up.
    (task_id,) = _ready_tasks(session, [0])
    got: list[kb.Task | None] = []
    with engine.connect() as holder:
        holder.execute(
            sa.update(kb.Task).where(kb.Task.id == task_id).values(priority=kb.Task.priority)
        )

        def claim() -> None:
            other = kb.connect(db_url)
            try:
                got.append(kb.claim_task(other, task_id, claimer="waiting"))
            finally:
                other.close()

        claimer = threading.Thread(target=claim)
        claimer.start()
        claimer.join(0.3)
        holder.rollback()
    claimer.join(30)
    assert len(got) == 1 and got[0] is not None and got[0].claim_lock is not None


@pytest.mark.parametrize("with_child", [True, False])
def test_move_and_finish_run_returns_the_row_and_whether_a_child_waits(
    session: Session, with_child: bool
) -> None:
    (parent,) = _ready_tasks(session, [0])
    if with_child:
        kb.create_task(session, title="child", parents=[parent])
    held = kb.claim_task(session, parent, claimer="w")
    assert held is not None
    closing = run_closing(parent, "completed", None, None, None)
    done = {"task_id": parent, "token": held.claim_lock, "task_result": "r"}

    def work(s: Tx) -> tuple[int, str, bool]:
        row, waiting = s.backend.move_and_finish_run(
            s, q.COMPLETE_HELD, done, closing, {"forced": False}
        )
        return row.id, row.status, waiting

    assert _write(session, work) == (parent, Status.DONE.value, with_child)
    run = kb.latest_run(session, parent)
    assert run is not None and run.id == held.current_run_id and run.outcome == "completed"
    completed = [e for e in kb.list_events(session, task_id=parent) if e.kind == "completed"]
    assert [e.run_id for e in completed] == [run.id]


def test_move_and_finish_run_of_a_claim_that_no_longer_holds_writes_nothing(
    session: Session,
) -> None:
    (task_id,) = _ready_tasks(session, [0])
    held = kb.claim_task(session, task_id, claimer="w")
    assert held is not None
    closing = run_closing(task_id, "completed", None, None, None)
    lost = {"task_id": task_id, "token": "0" * 32, "task_result": None}
    moved = _write(
        session,
        lambda s: s.backend.move_and_finish_run(s, q.COMPLETE_HELD, lost, closing, None),
    )
    assert moved == (None, False)
    run = kb.latest_run(session, task_id)
    assert run is not None and run.ended_at is None
    assert "completed" not in {e.kind for e in kb.list_events(session, task_id=task_id)}


def test_a_forced_completion_without_a_run_sees_a_waiting_child(session: Session) -> None:
    (parent,) = _ready_tasks(session, [0])
    kb.create_task(session, title="child", parents=[parent])
    closing = run_closing(parent, "completed", None, None, None)
    done = {"task_id": parent, "token": None, "task_result": None}

    def work(s: Tx) -> tuple[str, bool]:
        row, waiting = s.backend.move_and_finish_run(
            s, q.COMPLETE_FORCED, done, closing, {"forced": True}
        )
        return row.status, waiting

    assert _write(session, work) == (Status.DONE.value, True)
    (completed,) = [e for e in kb.list_events(session, task_id=parent) if e.kind == "completed"]
    assert completed.run_id is None


def test_the_database_clock_is_utc_with_sub_second_precision(session: Session) -> None:
    (task_id,) = _ready_tasks(session, [0])
    claimed = kb.claim_task(session, task_id, claimer="w", ttl_seconds=1.5)
    assert claimed is not None and claimed.claim_expires is not None
    started = claimed.started_at
    assert started is not None
    now = datetime.now(UTC).replace(tzinfo=None)
    assert abs((started - now).total_seconds()) < 300
    lease = (claimed.claim_expires - started).total_seconds()
    assert 1.4 < lease < 1.6 + 30  # a lease of 1.5 s, not rounded to whole seconds


def test_four_byte_characters_survive(session: Session) -> None:
    title = "deploy 🚀 𝄞 漢字 🦄"
    task_id = kb.create_task(session, title=title, body="𝄞" * 100)
    assert kb.get_task(session, task_id).title == title


def test_a_unique_violation_is_not_contention(session: Session) -> None:
    parent, child = _ready_tasks(session, [0, 0])

    def work(s: Tx) -> None:
        s.execute(q.INSERT_LINK, {"parent_id": parent, "child_id": child})
        s.execute(q.INSERT_LINK, {"parent_id": parent, "child_id": child})

    with pytest.raises(kb.DatabaseError) as got:  # typed at the retry layer's boundary
        _write(session, work)
    cause = got.value.__cause__
    assert isinstance(cause, sa.exc.IntegrityError)
    assert not backends.of(session).is_contention(cause)


# -- failure classification: each backend recognises its own driver's errors ------------

#: How to make a write the database refuses as read-only, per backend: a statement run
#: first on a connection of its own (SQLite's is a connection setting; the servers', the
#: transaction's access mode).
_READ_ONLY_FIRST = {
    "sqlite": "PRAGMA query_only = ON",
    "postgresql": "SET TRANSACTION READ ONLY",
    "mysql": "START TRANSACTION READ ONLY",
}


def _claimed_by(error: sa.exc.DBAPIError, question: str) -> list[str]:
    """The backends answering yes to ``is_contention``/``is_unavailable``/``is_read_only``."""
    return sorted({b.name for b in backends.BACKENDS.values() if getattr(b, question)(error)})


def _driver_error(api: Api, url: sa.URL, *statements: str) -> sa.exc.DBAPIError:
    """The error a fresh connection to ``url`` raises (connecting, or running
    ``statements``) on ``api``'s driver, as SQLAlchemy wraps it."""
    plain = api.plain_engine(url)
    try:
        with plain.connect() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    except sa.exc.DBAPIError as error:
        return error
    finally:
        plain.dispose()
    raise AssertionError(f"no error from {statements or 'connecting'}")


def test_a_write_refused_as_read_only_is_read_only_and_nothing_else(api: Api, db_url: str) -> None:
    url = sa.make_url(db_url)
    backend = backends.named(url.get_backend_name())
    error = _driver_error(
        api,
        api.url(backend, url),
        _READ_ONLY_FIRST[backend.name],
        "INSERT INTO kanban_tasks (title, status, priority, version, attempts, created_at,"
        " updated_at) VALUES ('x', 'ready', 0, 1, 0, '2026-01-01', '2026-01-01')",
    )
    assert _claimed_by(error, "is_read_only") == [backend.name], error
    assert _claimed_by(error, "is_unavailable") == []
    assert _claimed_by(error, "is_contention") == []
    assert db.failure_kind(error) == db.READ_ONLY
    assert isinstance(db.typed_error(error), kb.DatabaseReadOnly)


@pytest.mark.backends("postgres", "mysql")  # SQLite has no server to lose
def test_a_server_that_refuses_connections_is_unavailable(api: Api, db_url: str) -> None:
    url = sa.make_url(db_url)
    backend = backends.named(url.get_backend_name())
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = _driver_error(api, api.url(backend, url).set(host="127.0.0.1", port=port))
    assert _claimed_by(error, "is_unavailable") == [backend.name], error
    assert _claimed_by(error, "is_read_only") == []
    assert db.failure_kind(error) == db.UNAVAILABLE
    assert isinstance(db.typed_error(error), kb.DatabaseUnavailable)


@pytest.mark.backends("postgres", "mysql")  # SQLite creates a missing database file
def test_an_unknown_database_is_not_unavailable(api: Api, db_url: str) -> None:
    """Waiting won't mend it: the caller hears at once."""
    url = sa.make_url(db_url)
    backend = backends.named(url.get_backend_name())
    unknown = api.url(backend, url).set(database="kanban_seam_no_such_database")
    error = _driver_error(api, unknown)
    assert _claimed_by(error, "is_unavailable") == []
    assert db.failure_kind(error) is None
    assert type(db.typed_error(error)) is kb.DatabaseError


#: MySQL/MariaDB error numbers the real-server tests above do not reach: the kind of
#: each, and the SQLSTATE the server sends with it (None: the client's own error).
_MYSQL_ERRORS: dict[int, tuple[str | None, str | None]] = {
    2002: (None, db.UNAVAILABLE),  # can't connect through the socket
    2006: (None, db.UNAVAILABLE),  # server has gone away
    2013: (None, db.UNAVAILABLE),  # lost connection during a query
    1927: ("70100", db.UNAVAILABLE),  # connection killed (MariaDB)
    1053: ("08S01", db.UNAVAILABLE),  # server shutdown in progress
    1290: ("HY000", db.READ_ONLY),  # the server runs --read-only
    1836: ("HY000", db.READ_ONLY),  # read-only mode (MariaDB)
    1213: ("40001", db.BUSY),  # deadlock
    1205: ("HY000", db.BUSY),  # lock wait timeout
    1045: ("28000", None),  # access denied
    1049: ("42000", None),  # unknown database
    1062: ("23000", None),  # duplicate entry
    1153: ("08S01", None),  # a packet larger than max_allowed_packet: too big, not down
}


def test_mysql_error_numbers_by_kind(api: Api) -> None:
    """Each driver's form of the error: mysqlclient's carries the number alone,
    asyncmy's the SQLSTATE too, in an attribute psycopg's errors also have."""
    errors = pytest.importorskip(api.mysql_errors)

    def wrapped(code: int, sqlstate: str | None) -> sa.exc.DBAPIError:
        orig = errors.OperationalError(code, "message")
        if hasattr(orig, "sqlstate"):
            orig.sqlstate = sqlstate
        return sa.exc.DBAPIError.instance("SELECT 1", None, orig, errors.Error)

    found = {
        code: db.failure_kind(wrapped(code, state)) for code, (state, _) in _MYSQL_ERRORS.items()
    }
    assert found == {code: kind for code, (_, kind) in _MYSQL_ERRORS.items()}


def test_a_bare_url_gets_the_backends_driver(api: Api, db_url: str) -> None:
    url = sa.make_url(db_url)
    bare = url.set(drivername=url.get_backend_name())
    chosen = api.url(backends.named(url.get_backend_name()), bare)
    assert chosen.get_backend_name() == url.get_backend_name()
    engine = api.create_engine(chosen, poolclass=sa.pool.NullPool)
    try:
        assert engine.dialect.is_async == (api.name == "async")
        with engine.connect() as conn:
            assert conn.execute(sa.select(1)).scalar() == 1
    finally:
        engine.dispose()


class _Rollback(Exception):
    """Raised inside a write to see what it did, then roll it back."""


@pytest.mark.backends("mysql")  # SQLite's and PostgreSQL's TEXT hold any length
def test_a_text_longer_than_its_column_is_invalid_input_with_nothing_written(
    session: Session,
) -> None:
    task_id = kb.create_task(session, title="t")
    too_long = "x" * 70_000  # MySQL's TEXT holds 65,535 bytes
    with pytest.raises(kb.InvalidInput, match="longer than this database holds"):
        kb.add_comment(session, task_id, body=too_long, author="a")
    with pytest.raises(kb.InvalidInput, match="longer than this database holds"):
        kb.create_task(session, title="big", body=too_long)
    assert kb.list_comments(session, task_id=task_id) == []
    assert [t.id for t in kb.list_tasks(session)] == [task_id]
    assert [e.kind for e in kb.list_events(session)] == ["created"]
