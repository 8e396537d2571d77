"""Schema migrations: the shipped Alembic scripts, run from code.

The library keeps its own version table (``kanban_alembic_version``) and only looks at
``kanban_*`` tables, so a host application's Alembic history is untouched. The Alembic
Config is built in code and handed a live connection, so no ini file or URL escaping is
needed at run time, and the scripts are found inside the installed package.

Concurrent callers are serialised by the backend's migration lock (Backend.lock_migrations):
on PostgreSQL a transaction-scoped advisory lock, on SQLite the write lock that
``BEGIN IMMEDIATE`` takes. The migration runs inside
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
from sqlalchemy.engine import Connection, Engine

from . import backends
from .backends.base import WRITE_OPTION
from .db import cached_engine, configure_engine, with_retry
from .errors import KanbanError

# Defined in errors.py with the rest; imported from here by code written before.
from .errors import MigrationError as MigrationError
from .errors import SchemaOutOfDate as SchemaOutOfDate
from .models import Base

T = TypeVar("T")

#: Every table of the library, its version table included, starts with this.
TABLE_PREFIX = "kanban_"
VERSION_TABLE = f"{TABLE_PREFIX}alembic_version"
BRANCH_LABEL = "kanban_orm"

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


def schema_differences(context: MigrationContext) -> list[Any]:
    """Alembic's autogenerate diff of the database against the models (kanban tables),
    as the backend corrects it (Backend.schema_differences: SQLite's reflection of
    sorted and expression indexes, PostgreSQL's event-log trigger)."""
    with warnings.catch_warnings():
        # SQLite's reflection skips expression indexes with a warning; its backend
        # looks them up by name instead.
        warnings.filterwarnings("ignore", message=".*expression-based index")
        differences: list[Any] = compare_metadata(context, Base.metadata)
    return backends.for_dialect(context.dialect).schema_differences(context, differences)


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
            backend = backends.of(conn)
            backend.prepare_migration(conn)
            conn.execution_options(**{WRITE_OPTION: True})
            try:
                with conn.begin():
                    backend.lock_migrations(conn)
                    return migrate(conn)
            finally:
                backend.unlock_migrations(conn)

    try:
        return with_retry(attempt)
    except CommandError as error:
        raise MigrationError(str(error)) from error
