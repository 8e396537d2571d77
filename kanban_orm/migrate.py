"""Schema migrations: the shipped Alembic scripts, run from code.

The library keeps its own version table (``kanban_alembic_version``) and only looks at
``kanban_*`` tables, so a host application's Alembic history is untouched. The Alembic
Config is built in code and handed a live connection, so no ini file or URL escaping is
needed at run time, and the scripts are found inside the installed package.

Concurrent callers are serialised: on PostgreSQL by a transaction-scoped advisory lock,
on SQLite by the write lock that ``BEGIN IMMEDIATE`` takes. The migration runs inside
that transaction, so the second caller finds the schema at head and does nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from . import queries as q
from .db import WRITE_OPTION, cached_engine, configure_engine, with_retry
from .errors import KanbanError

# Defined in errors.py with the rest; imported from here by code written before.
from .errors import MigrationError as MigrationError
from .errors import SchemaOutOfDate as SchemaOutOfDate
from .models import EVENT_LOG_GUARD_TRIGGER, Base, TaskEvent

T = TypeVar("T")

#: Every table of the library, its version table included, starts with this.
TABLE_PREFIX = "kanban_"
VERSION_TABLE = f"{TABLE_PREFIX}alembic_version"
BRANCH_LABEL = "kanban_orm"
#: pg_advisory_xact_lock key: the first eight bytes of sha1("kanban_orm.migrate").
_PG_LOCK_KEY = 0x2C6A_04F0_5B11_7A3D

Bind = Engine | Connection | str | None


def script_location() -> str:
    """Where the Alembic scripts are: inside the installed wheel, or the checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return str(candidate)
    raise KanbanError(f"kanban_orm's migrations are missing (looked beside {here})")


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic filter: only the library's own tables exist as far as it is concerned."""
    if type_ == "table":
        return name is not None and name.startswith(TABLE_PREFIX)
    return True


def include_host_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic filter for a host application's own ``env.py``: every table but the
    library's. Without it, autogenerate against the host's metadata proposes to drop
    the ``kanban_*`` tables, the board with them.

    ``context.configure(..., include_name=include_host_name)``
    """
    if type_ == "table":
        return name is None or not name.startswith(TABLE_PREFIX)
    return True


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", script_location())
    config.attributes["connection"] = connection
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


def upgrade(bind: Bind = None, revision: str = "head") -> None:
    """Migrate the kanban tables to ``revision`` (default: the latest). Idempotent."""
    _locked(bind, lambda conn: command.upgrade(alembic_config(conn), revision))


def downgrade(bind: Bind = None, revision: str = "-1") -> None:
    """Migrate the kanban tables down to ``revision`` (``"base"`` drops them all)."""
    _locked(bind, lambda conn: command.downgrade(alembic_config(conn), revision))


def current(bind: Bind = None) -> str | None:
    """The revision the database is at, or None before the first upgrade."""
    with _connect(bind) as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def check(bind: Bind = None) -> None:
    """Raise :class:`SchemaOutOfDate` unless the database is at head and matches the models."""
    latest = head()
    with _connect(bind) as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "version_table": VERSION_TABLE,
                "include_name": include_name,
                "compare_type": True,
            },
        )
        at = context.get_current_revision()
        if at is None:
            raise SchemaOutOfDate(
                f"database has no kanban schema yet (head is {latest}); run upgrade"
            )
        if at != latest:
            raise SchemaOutOfDate(
                f"database is at revision {at}, the library's head is {latest}; run upgrade"
            )
        differences = schema_differences(context)
        if differences:
            raise SchemaOutOfDate(f"database schema differs from the models: {differences}")


#: The names that say what they are (``kb.schema_check``); ``kb.check`` and ``kb.current``
#: stay as aliases.
schema_current = current
schema_check = check


#: Indexes with a DESC column: SQLite reflects them without their sort order, so on
#: SQLite autogenerate always sees a difference that is not there. PostgreSQL, which
#: reflects them fully, still compares them.
_SORT_ORDER_INDEXES = frozenset({"ix_kanban_tasks_claim_order"})
#: Indexes on an expression: SQLite's reflection skips them (with a warning) and Alembic
#: cannot compare them there, so on SQLite they are looked up by name instead.
_EXPRESSION_INDEXES = frozenset({"ix_kanban_tasks_done_order"})


def schema_differences(context: MigrationContext) -> list[Any]:
    """Alembic's autogenerate diff of the database against the models (kanban tables)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*expression-based index")
        differences: list[Any] = compare_metadata(context, Base.metadata)
    if context.dialect.name == "sqlite":
        artifacts = _sort_order_artifacts(differences)
        differences = [d for d in differences if id(d) not in artifacts]
        differences += _missing_sort_order_indexes(context)
    if _missing_event_log_guard(context):
        differences.append(("missing_trigger", EVENT_LOG_GUARD_TRIGGER))
    return differences


def _missing_event_log_guard(context: MigrationContext) -> bool:
    """PostgreSQL: the event table exists without its commit-order trigger (kb0003)."""
    bind = context.bind
    if bind is None or context.dialect.name != "postgresql":
        return False
    if not inspect(bind).has_table(TaskEvent.__tablename__):
        return False
    return bind.execute(q.EVENT_LOG_GUARD_PRESENT).first() is None


def _missing_sort_order_indexes(context: MigrationContext) -> list[Any]:
    # Alembic skips these indexes on SQLite when they are absent, so look them up by name.
    inspector = inspect(context.bind)
    missing = []
    for table in Base.metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
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


def init_db(url: str | None = None) -> Engine:
    """Create (or reuse) this process's engine for ``url`` and upgrade it to head.

    Safe when many processes call it at once on a fresh database.
    """
    engine = cached_engine(url)
    upgrade(engine)
    return engine


@contextmanager
def _connect(bind: Bind) -> Iterator[Connection]:
    if isinstance(bind, Connection):
        yield bind
        return
    # configure_engine: on SQLite the migration lock is the write lock BEGIN IMMEDIATE
    # takes, which only a configured engine emits. Idempotent for engines already set up.
    engine = configure_engine(bind) if isinstance(bind, Engine) else cached_engine(bind)
    with engine.connect() as conn:
        yield conn


def _locked(bind: Bind, migrate: Callable[[Connection], T]) -> T:
    if isinstance(bind, Connection):  # the caller owns the transaction and its locking
        try:
            return migrate(bind)
        except CommandError as error:
            raise MigrationError(str(error)) from error

    def attempt() -> T:
        with _connect(bind) as conn:
            if conn.dialect.name == "postgresql":
                # The lock must come before the snapshot: at REPEATABLE READ or above a
                # waiter would otherwise see the schema as it was before the upgrader it
                # waited for committed, and try to create the tables again.
                conn.execution_options(isolation_level="READ COMMITTED")
            conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
                return migrate(conn)

    try:
        return with_retry(attempt)
    except CommandError as error:
        raise MigrationError(str(error)) from error
