"""Alembic environment for kanban_orm's own tables.

Run from code (``kb.upgrade``), a live connection arrives in
``config.attributes["connection"]``. Run from the command line (``alembic upgrade head``
in the checkout), the URL comes from ``KANBAN_DATABASE_URL`` (else the embedded default).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from kanban_orm.db import create_engine
from kanban_orm.migrate import VERSION_TABLE, include_name
from kanban_orm.models import Base

config = context.config


def _configure(**kw: object) -> None:
    context.configure(
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        include_name=include_name,
        compare_type=True,
        **kw,
    )


def run_with(connection: Connection) -> None:
    # SQLite cannot ALTER most things in place; batch mode rebuilds the table.
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or None)
    with engine.connect() as conn:
        run_with(conn)
        conn.commit()


def run_offline() -> None:
    url = config.get_main_option("sqlalchemy.url") or str(create_engine().url)
    _configure(url=url, literal_binds=True, render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
