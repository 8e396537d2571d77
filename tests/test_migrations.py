"""The shipped Alembic migrations: upgrade, downgrade, data in place, host apps, concurrency.

Every database test runs on SQLite and on PostgreSQL (the ``empty_db_url`` fixture).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import kanban_orm as kb
from kanban_orm.backends.postgresql import MIGRATION_LOCK_KEY
from kanban_orm.migrate import (
    BRANCH_LABEL,
    VERSION_TABLE,
    alembic_config,
    include_host_name,
    include_name,
    schema_differences,
)
from kanban_orm.models import Base

from .conftest import (
    KANBAN_TABLES,
    REPO_ROOT,
    fresh_mysql_database,
    fresh_postgres_database,
    mysql_url_or_skip,
    postgres_url_or_skip,
)

SPAWN = mp.get_context("spawn")
SCRIPTS = ScriptDirectory.from_config(alembic_config())
#: Every revision of the library's history, oldest first.
REVISIONS = [script.revision for script in reversed(list(SCRIPTS.walk_revisions()))]
HEAD = kb.head()


# -- helpers ----------------------------------------------------------------------------


def backend_of(url: str) -> str:
    return sa.make_url(url).get_backend_name()


def table_names(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def version_rows(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")))


def plain(value: Any) -> Any:
    """Reflected data in comparable form (SQL expressions compare by identity)."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, sa.ClauseElement):
        return str(value)
    return value


def by_name(item: Any) -> str:
    return str(item.get("name"))


def schema_snapshot(engine: Engine, tables: set[str] | None = None) -> dict[str, Any]:
    """Everything the inspector reflects about the given tables (default: all of them)."""
    inspector = sa.inspect(engine)  # a new Inspector: no reflection cache carried over
    names = sorted(tables if tables is not None else inspector.get_table_names())
    return plain(
        {
            name: {
                "columns": [
                    # compiled, so a type's arguments count (MySQL's DATETIME(6) vs DATETIME)
                    (
                        c["name"],
                        c["type"].compile(dialect=engine.dialect),
                        c["nullable"],
                        str(c.get("default")),
                    )
                    for c in inspector.get_columns(name)
                ],
                "pk": inspector.get_pk_constraint(name),
                "fks": sorted(inspector.get_foreign_keys(name), key=by_name),
                "indexes": sorted(inspector.get_indexes(name), key=by_name),
                "uniques": sorted(inspector.get_unique_constraints(name), key=by_name),
                "checks": sorted(inspector.get_check_constraints(name), key=by_name),
            }
            for name in names
        }
    )


def autogenerate_differences(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "version_table": VERSION_TABLE,
                "include_name": include_name,
                "compare_type": True,
            },
        )
        return schema_differences(context)


@pytest.fixture
def empty_engine(empty_db_url: str) -> Engine:
    return kb.cached_engine(empty_db_url)


@pytest.fixture
def other_empty_db_url(empty_db_url: str, tmp_path: Path) -> Iterator[str]:
    """A second empty database on the same backend as ``empty_db_url``."""
    backend = backend_of(empty_db_url)
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'other.db'}"
    elif backend == "mysql":
        yield from fresh_mysql_database(mysql_url_or_skip())
    else:
        yield from fresh_postgres_database(postgres_url_or_skip())


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    yield from fresh_postgres_database(postgres_url)


# -- upgrade / downgrade ----------------------------------------------------------------


def test_upgrade_empty_database_to_head(empty_engine: Engine) -> None:
    assert kb.current(empty_engine) is None
    kb.upgrade(empty_engine)
    assert kb.current(empty_engine) == kb.head() == HEAD
    assert set(KANBAN_TABLES) <= table_names(empty_engine)
    assert set(KANBAN_TABLES) == set(Base.metadata.tables)
    assert version_rows(empty_engine) == [HEAD]
    kb.check(empty_engine)
    assert autogenerate_differences(empty_engine) == []


def test_migrated_schema_equals_create_all_of_the_models(
    empty_db_url: str, other_empty_db_url: str
) -> None:
    """Stronger than autogenerate: every reflected detail (check constraints, partial
    and DESC indexes, foreign-key actions) of the migrated tables equals create_all's."""
    migrated = kb.cached_engine(empty_db_url)
    kb.upgrade(migrated)
    created = kb.cached_engine(other_empty_db_url)
    Base.metadata.create_all(created)
    tables = set(Base.metadata.tables)
    assert schema_snapshot(migrated, tables) == schema_snapshot(created, tables)


def test_upgrade_twice_is_a_no_op(empty_engine: Engine) -> None:
    kb.upgrade(empty_engine)
    before = schema_snapshot(empty_engine)
    session = Session(empty_engine)
    task_id = kb.create_task(session, title="survives a second upgrade")
    session.close()

    kb.upgrade(empty_engine)
    kb.upgrade(empty_engine, "head")

    assert schema_snapshot(empty_engine) == before
    assert kb.current(empty_engine) == HEAD
    assert version_rows(empty_engine) == [HEAD]
    session = Session(empty_engine)
    assert kb.get_task(session, task_id).title == "survives a second upgrade"
    session.close()


def test_downgrade_to_base_removes_every_kanban_table_then_upgrade_again(
    empty_engine: Engine,
) -> None:
    kb.upgrade(empty_engine)
    session = Session(empty_engine)
    kb.create_task(session, title="dropped with its table")
    session.close()

    kb.downgrade(empty_engine, "base")

    assert kb.current(empty_engine) is None
    assert version_rows(empty_engine) == []
    remaining = {name for name in table_names(empty_engine) if name.startswith("kanban_")}
    assert remaining <= {VERSION_TABLE}
    with pytest.raises(kb.SchemaOutOfDate):
        kb.check(empty_engine)

    kb.upgrade(empty_engine)
    assert kb.current(empty_engine) == HEAD
    assert version_rows(empty_engine) == [HEAD]
    kb.check(empty_engine)
    session = Session(empty_engine)
    assert kb.list_tasks(session) == []
    session.close()


@pytest.mark.parametrize("revision", REVISIONS)
def test_each_revision_downgrades_one_step_and_upgrades_again(
    empty_engine: Engine, revision: str
) -> None:
    kb.upgrade(empty_engine, revision)
    assert kb.current(empty_engine) == revision
    down = SCRIPTS.get_revision(revision).down_revision
    assert down is None or isinstance(down, str), "merge revisions need their own test"

    kb.downgrade(empty_engine, "-1")
    assert kb.current(empty_engine) == down

    kb.upgrade(empty_engine, revision)
    assert kb.current(empty_engine) == revision
    kb.upgrade(empty_engine)
    kb.check(empty_engine)


# -- upgrade from every earlier revision with data in place ----------------------------

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456)
T1 = datetime(2026, 1, 2, 3, 5, 0, 1)
T2 = datetime(2026, 1, 2, 4, 0, 0)
#: Bind types for plain-SQL inserts: the raw driver value each backend expects.
_JSON_BIND = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


@dataclass
class Seeded:
    """Rows a seed function wrote at its revision: table -> rows (column -> value).

    Each row names its primary key columns; at head the test reads those rows back
    through the current models and expects every listed column unchanged. A revision
    that transforms data must say so here (expected values as they are at head).
    """

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: Called at head with a Session, to show the library can work on the old rows.
    exercise: Callable[[Session], None] | None = None


def insert(conn: Connection, table: str, row: dict[str, Any], returning: str | None) -> Any:
    """``INSERT INTO table (...) VALUES (...) [RETURNING col]`` as plain SQL (MySQL 8
    has no INSERT ... RETURNING: there the new id is the cursor's lastrowid)."""
    binds = []
    for name, value in row.items():
        if isinstance(value, datetime):
            binds.append(sa.bindparam(name, value, type_=sa.DateTime()))
        elif isinstance(value, dict | list):
            binds.append(sa.bindparam(name, value, type_=_JSON_BIND))
        else:
            binds.append(sa.bindparam(name, value))
    quote = conn.dialect.identifier_preparer.quote
    columns = ", ".join(quote(name) for name in row)
    values = ", ".join(f":{name}" for name in row)
    sql = f"INSERT INTO {table} ({columns}) VALUES ({values})"
    if returning and conn.dialect.insert_returning:
        sql += f" RETURNING {returning}"
    result = conn.execute(sa.text(sql).bindparams(*binds))
    if not returning:
        return None
    if conn.dialect.insert_returning:
        return result.scalar_one()
    assert returning == "id", "lastrowid gives the auto-increment id only"
    return result.lastrowid


def seed_kb0001(conn: Connection) -> Seeded:
    """A running task with an open run, a finished task with a closed run, a child
    linked to the running task, and events with and without a JSON payload."""
    token = "c" * 32
    parent = {
        "title": "seeded parent",
        "body": "a body",
        "status": "running",
        "priority": 5,
        "assignee": "alice",
        "tenant": "t1",
        "created_by": "seed",
        "claim_lock": token,
        "claim_expires": T2,
        "version": 3,
        "attempts": 1,
        "max_attempts": 3,
        "idempotency_key": "idem-1",
        "created_at": T0,
        "updated_at": T1,
        "started_at": T1,
    }
    parent["id"] = insert(conn, "kanban_tasks", parent, "id")
    child = {
        "title": "seeded child",
        "status": "todo",
        "priority": 0,
        "version": 1,
        "attempts": 0,
        "created_at": T0,
        "updated_at": T0,
    }
    child["id"] = insert(conn, "kanban_tasks", child, "id")
    finished = {
        "title": "seeded finished",
        "status": "done",
        "priority": -2,
        "version": 4,
        "attempts": 1,
        "result": "it worked",
        "created_at": T0,
        "updated_at": T2,
        "started_at": T1,
        "completed_at": T2,
    }
    finished["id"] = insert(conn, "kanban_tasks", finished, "id")

    open_run = {
        "task_id": parent["id"],
        "attempt": 1,
        "claimer": "worker-1",
        "claim_lock": token,
        "started_at": T1,
        "last_heartbeat_at": T1,
        "metadata": {"k": [1, 2], "s": "x"},
    }
    open_run["id"] = insert(conn, "kanban_task_runs", open_run, "id")
    closed_run = {
        "task_id": finished["id"],
        "attempt": 1,
        "claimer": "worker-2",
        "claim_lock": "d" * 32,
        "started_at": T1,
        "ended_at": T2,
        "outcome": "completed",
        "summary": "fine",
        "error": None,
    }
    closed_run["id"] = insert(conn, "kanban_task_runs", closed_run, "id")
    conn.execute(
        sa.text("UPDATE kanban_tasks SET current_run_id = :run WHERE id = :id"),
        {"run": open_run["id"], "id": parent["id"]},
    )
    parent["current_run_id"] = open_run["id"]

    events = [
        {
            "task_id": parent["id"],
            "kind": "created",
            "payload": {"title": "seeded parent"},
            "created_at": T0,
        },
        {
            "task_id": parent["id"],
            "run_id": open_run["id"],
            "kind": "claimed",
            "payload": None,
            "created_at": T1,
        },
        {
            "task_id": finished["id"],
            "run_id": closed_run["id"],
            "kind": "completed",
            "created_at": T2,
        },
    ]
    for event in events:
        event["id"] = insert(conn, "kanban_task_events", event, "id")

    link = {"parent_id": parent["id"], "child_id": child["id"], "created_at": T0}
    insert(conn, "kanban_task_links", link, None)

    def exercise(session: Session) -> None:
        # The old running task completes with its old token, closing its old run and
        # promoting the linked child.
        done = kb.complete_task(session, parent["id"], claim_lock=token, result="late")
        assert done.status == "done"
        runs = kb.list_runs(session, task_id=parent["id"])
        assert [(r.id, r.outcome) for r in runs] == [(open_run["id"], "completed")]
        assert kb.get_task(session, child["id"]).status == "ready"
        kinds = [e.kind for e in kb.list_events(session, task_id=parent["id"])]
        assert kinds[:2] == ["created", "claimed"]
        assert kinds[-1] == "completed"

    return Seeded(
        rows={
            "kanban_tasks": [parent, child, finished],
            "kanban_task_runs": [open_run, closed_run],
            "kanban_task_events": events,
            "kanban_task_links": [link],
        },
        exercise=exercise,
    )


def seed_kb0002(conn: Connection) -> Seeded:
    """Everything kb0001 holds, plus comments and tasks holding idempotency keys."""
    seeded = seed_kb0001(conn)
    task_id = seeded.rows["kanban_tasks"][0]["id"]
    comment = {"task_id": task_id, "author": "ana", "body": "looks good", "created_at": T1}
    comment["id"] = insert(conn, "kanban_task_comments", comment, "id")
    keyed = {
        "title": "keyed, no tenant",
        "status": "ready",
        "priority": 0,
        "version": 1,
        "attempts": 0,
        "idempotency_key": "idem-2",
        "created_at": T0,
        "updated_at": T0,
    }
    keyed["id"] = insert(conn, "kanban_tasks", keyed, "id")
    seeded.rows["kanban_tasks"].append(keyed)
    seeded.rows["kanban_task_comments"] = [comment]
    return seeded


def seed_kb0006(conn: Connection) -> Seeded:
    """Everything kb0002 holds, plus an attachment."""
    seeded = seed_kb0002(conn)
    task_id = seeded.rows["kanban_tasks"][0]["id"]
    attachment = {
        "task_id": task_id,
        "run_id": None,
        "name": "report.txt",
        "size": 5,
        "sha256": "0" * 64,
        "data": b"hello",
        "created_at": T1,
    }
    attachment["id"] = insert(conn, "kanban_task_attachments", attachment, "id")
    seeded.rows["kanban_task_attachments"] = [attachment]
    return seeded


#: revision -> a function that writes representative rows with SQL valid at that
#: revision. A new revision must add its own (test_every_revision_has_a_seed_function).
SEEDS: dict[str, Callable[[Connection], Seeded]] = {
    "kb0001": seed_kb0001,
    "kb0002": seed_kb0002,
    # kb0003 adds only PostgreSQL's event log trigger: the same rows must survive it.
    "kb0003": seed_kb0002,
    # kb0004 changes MySQL/MariaDB only (DATETIME(6), utf8mb4, generated-column unique
    # indexes): the same rows must survive it, and nothing changes elsewhere.
    "kb0004": seed_kb0002,
    # kb0005 adds an empty table and an index: the same rows must survive it.
    "kb0005": seed_kb0002,
    "kb0006": seed_kb0006,
    # kb0007 adds MySQL/MariaDB's event log guard (a one-row table and a trigger):
    # the same rows must survive it, and nothing changes elsewhere.
    "kb0007": seed_kb0006,
    # kb0008 gives MySQL/MariaDB's link timestamp microseconds: the same rows survive.
    "kb0008": seed_kb0006,
    # kb0009 adds the status tallies (a table, its rows, an index and triggers): the
    # same rows must survive it, and their counts stay exact (through is NULL).
    "kb0009": seed_kb0006,
    # kb0010 adds PostgreSQL's wake-up triggers (NOTIFY): the same rows must survive it.
    "kb0010": seed_kb0006,
    # kb0011 adds the workers table and two nullable columns: the same rows must
    # survive it (their new columns NULL).
    "kb0011": seed_kb0006,
    # kb0012 makes the tallies' index partial and their update trigger skip rows stamped
    # now: the same rows must survive it, with their counts exact.
    "kb0012": seed_kb0006,
}


def test_kb0002_keeps_a_duplicated_idempotency_key_on_the_oldest_live_task(
    empty_engine: Engine,
) -> None:
    # Before kb0002 concurrent creators on PostgreSQL could both insert a key.
    kb.upgrade(empty_engine, "kb0001")
    base = {"status": "ready", "priority": 0, "version": 1, "attempts": 0}
    stamps = {"created_at": T0, "updated_at": T0}
    tasks = [
        ({"idempotency_key": "k", "tenant": "a"}, "k"),
        ({"idempotency_key": "k", "tenant": "a"}, None),
        # Another key without a tenant: MySQL's kb0002 index on the key alone (no WHERE)
        # would refuse "k" again, with or without a tenant.
        ({"idempotency_key": "j"}, "j"),
        ({"idempotency_key": "j"}, None),
    ]
    if empty_engine.dialect.name not in ("mysql", "mariadb"):
        # An archived task keeps its key beside a live one. Not on MySQL below kb0004:
        # kb0002's unique indexes have no WHERE there (kb0004 gives them one), so such a
        # database cannot be at kb0002 or kb0003 (docs/backends.md, downgrades).
        tasks.append(({"idempotency_key": "k", "tenant": "a", "status": "archived"}, "k"))
    with empty_engine.begin() as conn:
        ids = [
            insert(conn, "kanban_tasks", {**base, **stamps, "title": f"t{i}", **extra}, "id")
            for i, (extra, _) in enumerate(tasks)
        ]
    kb.upgrade(empty_engine)
    with empty_engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, idempotency_key FROM kanban_tasks"))
        keys = {task_id: key for task_id, key in rows}
    assert [keys[i] for i in ids] == [kept for _, kept in tasks]


def test_every_revision_has_a_seed_function() -> None:
    assert REVISIONS, "no revisions found"
    missing = [rev for rev in REVISIONS if rev not in SEEDS]
    assert not missing, f"add a seed function to SEEDS for revision(s) {missing}"
    assert set(SEEDS) <= set(REVISIONS), "SEEDS names a revision that does not exist"


def test_revision_history_is_one_line_with_one_head() -> None:
    assert SCRIPTS.get_heads() == [HEAD]
    assert len(SCRIPTS.get_bases()) == 1
    assert REVISIONS[-1] == HEAD


def read_back(conn: Connection, table_name: str, row: dict[str, Any]) -> dict[str, Any]:
    table = Base.metadata.tables[table_name]
    pk = [c.name for c in table.primary_key.columns]
    statement = sa.select(*(table.c[name] for name in row))
    for name in pk:
        statement = statement.where(table.c[name] == row[name])
    found = conn.execute(statement).mappings().all()
    assert len(found) == 1, f"{table_name} row {[row[n] for n in pk]} is gone"
    return dict(found[0])


def without_fraction(row: dict[str, Any]) -> dict[str, Any]:
    return {
        name: value.replace(microsecond=0) if isinstance(value, datetime) else value
        for name, value in row.items()
    }


@pytest.mark.parametrize("revision", REVISIONS)
def test_upgrade_from_each_revision_with_data_in_place(empty_engine: Engine, revision: str) -> None:
    kb.upgrade(empty_engine, revision)
    assert kb.current(empty_engine) == revision
    with empty_engine.begin() as conn:
        seeded = SEEDS[revision](conn)
    # What the database holds at the seed revision: the seeded rows, except that MySQL
    # before kb0004 keeps timestamps in whole seconds (DATETIME without a fraction).
    with empty_engine.connect() as conn:
        held = {
            table_name: [read_back(conn, table_name, row) for row in rows]
            for table_name, rows in seeded.rows.items()
        }
    for table_name, rows in seeded.rows.items():
        assert [without_fraction(r) for r in held[table_name]] == [
            without_fraction(r) for r in rows
        ]

    kb.upgrade(empty_engine)

    assert kb.current(empty_engine) == HEAD
    kb.check(empty_engine)
    with empty_engine.connect() as conn:
        for table_name, rows in seeded.rows.items():
            assert [read_back(conn, table_name, row) for row in rows] == held[table_name]
    if REVISIONS.index(revision) >= REVISIONS.index("kb0008"):
        # Every timestamp keeps its microseconds on every backend (on MySQL: kb0004,
        # and kb0008 for the link's).
        assert held == seeded.rows
    session = kb.session_factory(empty_engine)()
    try:
        if seeded.exercise is not None:
            seeded.exercise(session)
        # Ids keep counting past the seeded rows (sequences survived the upgrade).
        new_id = kb.create_task(session, title="after the upgrade")
        seeded_ids = [row["id"] for row in seeded.rows.get("kanban_tasks", [])]
        assert all(new_id > seeded_id for seeded_id in seeded_ids)
    finally:
        session.close()


# -- check() ------------------------------------------------------------------------------


def test_check_raises_on_an_empty_database(empty_engine: Engine) -> None:
    with pytest.raises(kb.SchemaOutOfDate, match="run upgrade"):
        kb.check(empty_engine)
    assert isinstance(kb.SchemaOutOfDate("x"), kb.KanbanError)


def test_check_raises_on_tables_without_a_version_row(empty_engine: Engine) -> None:
    Base.metadata.create_all(empty_engine)
    with pytest.raises(kb.SchemaOutOfDate):
        kb.check(empty_engine)


def test_check_raises_on_an_unknown_version(empty_engine: Engine) -> None:
    kb.upgrade(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = 'zz9999'"))
    with pytest.raises(kb.SchemaOutOfDate, match="zz9999"):
        kb.check(empty_engine)


def test_check_raises_when_a_column_was_dropped_by_hand(empty_engine: Engine) -> None:
    kb.upgrade(empty_engine)
    kb.check(empty_engine)
    with empty_engine.begin() as conn:  # SQLite >= 3.35 drops an unindexed column too
        conn.execute(sa.text("ALTER TABLE kanban_tasks DROP COLUMN block_reason"))
    with pytest.raises(kb.SchemaOutOfDate, match="block_reason"):
        kb.check(empty_engine)


def test_check_raises_on_an_extra_index_on_a_kanban_table(empty_engine: Engine) -> None:
    kb.upgrade(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(sa.text("CREATE INDEX ix_kanban_tasks_by_hand ON kanban_tasks (title)"))
    with pytest.raises(kb.SchemaOutOfDate, match="ix_kanban_tasks_by_hand"):
        kb.check(empty_engine)


def test_check_raises_on_an_extra_kanban_table(empty_engine: Engine) -> None:
    kb.upgrade(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE kanban_by_hand (id INTEGER PRIMARY KEY)"))
    with pytest.raises(kb.SchemaOutOfDate, match="kanban_by_hand"):
        kb.check(empty_engine)


@pytest.mark.parametrize(
    ("table", "index"),
    [
        ("kanban_tasks", "ix_kanban_tasks_assignee"),
        ("kanban_task_links", "ix_kanban_task_links_child_id"),
        ("kanban_task_runs", "ux_kanban_task_runs_one_open"),
        ("kanban_tasks", "ix_kanban_tasks_claim_order"),
    ],
)
def test_check_raises_when_an_index_was_dropped_by_hand(
    empty_engine: Engine, table: str, index: str
) -> None:
    # ix_kanban_tasks_claim_order has a DESC column, which SQLite reflects without its
    # sort order: check() must still notice it missing there (a regression test).
    kb.upgrade(empty_engine)
    with empty_engine.begin() as conn:
        if conn.dialect.name in ("mysql", "mariadb"):
            # Else MySQL refuses to drop an index a foreign key uses (error 1553).
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
        # DropIndex names the table where the database needs it (MySQL's DROP INDEX ... ON).
        (declared,) = [i for i in Base.metadata.tables[table].indexes if i.name == index]
        conn.execute(sa.schema.DropIndex(declared))
    with pytest.raises(kb.SchemaOutOfDate, match=index):
        kb.check(empty_engine)


# -- a host application in the same database ------------------------------------------


class HostBase(DeclarativeBase):
    pass


class HostTask(HostBase):
    """The host's own ``tasks`` table, which the kanban tables must never touch."""

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))


def make_host_database(url: str) -> Engine:
    engine = kb.configure_engine(sa.create_engine(url))  # as the README tells a host to
    HostBase.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(HostTask).values(id=7, name="the host's own task"))
        # Exactly what Alembic creates for a host's own history.
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO alembic_version (version_num) VALUES ('host_rev_1')"))
    return engine


def host_state(engine: Engine) -> tuple[Any, ...]:
    with engine.connect() as conn:
        tasks = conn.execute(sa.text("SELECT id, name FROM tasks ORDER BY id")).all()
        versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        host_revision = MigrationContext.configure(conn).get_current_revision()
    snapshot = schema_snapshot(engine, {"tasks", "alembic_version"})
    return [tuple(r) for r in tasks], [tuple(r) for r in versions], host_revision, snapshot


def test_host_tables_and_alembic_history_are_untouched(empty_db_url: str) -> None:
    engine = make_host_database(empty_db_url)
    before = host_state(engine)
    assert before[:3] == ([(7, "the host's own task")], [("host_rev_1",)], "host_rev_1")

    kb.upgrade(engine)

    assert host_state(engine) == before
    assert version_rows(engine) == [HEAD]
    assert kb.current(engine) == HEAD
    assert set(KANBAN_TABLES) <= table_names(engine)
    kb.check(engine)  # the host's tables are not the library's business
    assert autogenerate_differences(engine) == []

    schema = schema_snapshot(engine)
    kb.upgrade(engine)
    assert schema_snapshot(engine) == schema
    assert host_state(engine) == before
    assert version_rows(engine) == [HEAD]

    kb.downgrade(engine, "base")
    assert host_state(engine) == before
    assert {"tasks", "alembic_version"} <= table_names(engine)
    engine.dispose()


def host_autogenerate(engine: Engine, **opts: Any) -> list[Any]:
    """What `alembic revision --autogenerate` in the host's own env.py would write."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts=opts)
        return [d for d in compare_metadata(context, HostBase.metadata) if d]


def test_the_host_filter_keeps_a_host_autogenerate_away_from_the_kanban_tables(
    empty_db_url: str,
) -> None:
    engine = make_host_database(empty_db_url)
    kb.upgrade(engine)

    unfiltered = host_autogenerate(engine)
    dropped = {d[1].name for d in unfiltered if d[0] == "remove_table"}
    assert set(KANBAN_TABLES) | {VERSION_TABLE} <= dropped  # the board, gone

    assert host_autogenerate(engine, include_name=include_host_name) == []
    engine.dispose()


HOST_ENV_PY = """
from alembic import context

context.configure(connection=context.config.attributes["connection"], target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
"""

HOST_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "host0001"
down_revision = None
branch_labels = ("host",)
depends_on = None


def upgrade():
    op.create_table("tasks", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("tasks")
"""


def test_host_can_merge_the_library_history_via_version_locations(
    empty_db_url: str, tmp_path: Path
) -> None:
    """The branch label lets a host run the library's revisions in its own Alembic tree."""
    host_dir = tmp_path / "host_migrations"
    (host_dir / "versions").mkdir(parents=True)
    (host_dir / "env.py").write_text(HOST_ENV_PY)
    (host_dir / "versions" / "host0001.py").write_text(HOST_REVISION)
    kanban_versions = Path(alembic_config().get_main_option("script_location")) / "versions"

    engine = kb.cached_engine(empty_db_url)
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(host_dir))
        config.set_main_option("path_separator", "os")
        config.set_main_option("version_path_separator", "os")
        config.set_main_option(
            "version_locations", os.pathsep.join([str(host_dir / "versions"), str(kanban_versions)])
        )
        config.attributes["connection"] = conn
        command.upgrade(config, f"{BRANCH_LABEL}@head")
        command.upgrade(config, "host@head")

    with engine.connect() as conn:
        host_versions = set(conn.scalars(sa.text("SELECT version_num FROM alembic_version")))
    assert host_versions == {"host0001", HEAD}
    assert {"tasks", *KANBAN_TABLES} <= table_names(engine)
    assert autogenerate_differences(engine) == []


# -- concurrency --------------------------------------------------------------------------


def init_db_in_child(url: str, start: Any, out: str) -> None:
    """Run in a spawned process: wait for the common start, then kb.init_db(url)."""
    start.wait(timeout=120)
    try:
        kb.init_db(url)
        kb.dispose_engines()
    except BaseException as error:
        Path(out).write_text(f"{type(error).__name__}: {error}")
        raise
    Path(out).write_text("ok")


@pytest.mark.slow
def test_init_db_from_8_processes_at_once_on_a_fresh_database(
    empty_db_url: str, tmp_path: Path
) -> None:
    n = 8
    barrier = SPAWN.Barrier(n)
    outs = [tmp_path / f"init-{i}.txt" for i in range(n)]
    procs = [
        SPAWN.Process(target=init_db_in_child, args=(empty_db_url, barrier, str(out)))
        for out in outs
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=180)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    results = [out.read_text() if out.exists() else "no result" for out in outs]
    assert results == ["ok"] * n
    assert [p.exitcode for p in procs] == [0] * n

    engine = kb.cached_engine(empty_db_url)
    assert kb.current(engine) == HEAD
    assert version_rows(engine) == [HEAD]
    assert set(KANBAN_TABLES) <= table_names(engine)
    kb.check(engine)


@pytest.mark.parametrize("isolation_level", ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"])
def test_upgrade_that_waited_for_the_lock_sees_the_first_upgrade(
    fresh_postgres_url: str, isolation_level: str
) -> None:
    """Deterministic form of the race: the lock is held while another upgrade commits.

    A host engine at REPEATABLE READ or SERIALIZABLE must still see, once it holds the
    lock, what the upgrader it waited for committed (no DuplicateTable).
    """
    url = fresh_postgres_url
    holder = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    plain = sa.create_engine(url, poolclass=sa.pool.NullPool)
    host = kb.configure_engine(
        sa.create_engine(url, isolation_level=isolation_level, poolclass=sa.pool.NullPool)
    )
    errors: list[BaseException] = []

    def waiting_upgrade() -> None:
        try:
            kb.upgrade(host)
        except BaseException as error:
            errors.append(error)

    try:
        with holder.connect() as lock:
            lock.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            waiter = threading.Thread(target=waiting_upgrade)
            waiter.start()
            deadline = time.monotonic() + 60
            waiting = 0
            while not waiting and time.monotonic() < deadline:
                waiting = lock.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    )
                ).scalar_one()
                time.sleep(0.02)
            assert waiting, "the second upgrade never queued for the migration lock"
            with plain.begin() as first:  # the first upgrader, committed under the lock
                kb.upgrade(first)
            lock.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
            waiter.join(timeout=60)
        assert not waiter.is_alive()
        assert errors == []
        assert kb.current(plain) == HEAD
        assert version_rows(plain) == [HEAD]
    finally:
        for engine in (host, plain, holder):
            engine.dispose()


# -- the Alembic command line, from the checkout ------------------------------------------


def test_root_revision_carries_the_branch_label() -> None:
    (base,) = SCRIPTS.get_bases()
    assert BRANCH_LABEL == "kanban_orm"
    assert SCRIPTS.get_revision(base).branch_labels == {BRANCH_LABEL}
    assert SCRIPTS.get_revision(f"{BRANCH_LABEL}@head").revision == HEAD


def test_alembic_ini_points_at_the_checkout_migrations() -> None:
    config = Config(str(REPO_ROOT / "alembic.ini"))
    location = config.get_main_option("script_location")
    assert location is not None
    assert Path(location).resolve() == (REPO_ROOT / "migrations").resolve()
    assert not config.get_main_option("sqlalchemy.url"), "never commit a database URL"
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD


def test_alembic_command_line_upgrade_head_from_the_checkout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli' / 'kanban.db'}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["KANBAN_DATABASE_URL"] = url

    def alembic(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "alembic", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    upgraded = alembic("upgrade", "head")
    assert upgraded.returncode == 0, upgraded.stderr
    assert kb.current(url) == HEAD
    kb.check(url)

    current = alembic("current")
    assert current.returncode == 0, current.stderr
    assert f"{HEAD} (head)" in current.stdout

    downgraded = alembic("downgrade", "base")
    assert downgraded.returncode == 0, downgraded.stderr
    assert kb.current(url) is None
    kb.dispose_engines()
    engine = sa.create_engine(url)
    assert not table_names(engine) & set(KANBAN_TABLES)
    engine.dispose()
