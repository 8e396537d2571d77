"""Event log commit-order guard on MySQL/MariaDB, so a follower never misses an event.

Revision ID: kb0007
Revises: kb0006
Create Date: 2026-12-02

PostgreSQL has had this since kb0003. On MySQL/MariaDB a tailing read used to take
shared locks on the event rows past the follower's cursor, which waits for every
uncommitted event *row*, but not for an ``AUTO_INCREMENT`` id a writer has drawn and
not yet inserted: a follower could read id 92, move past 91 and never see it.

Now a one-row table, ``kanban_event_guard``, stands for the event log. A
``BEFORE INSERT`` trigger on ``kanban_task_events`` reads its row ``LOCK IN SHARE
MODE``; BEFORE triggers run before the handler draws the row's id, so every
transaction holds the shared lock before its first event id exists, until it ends.
Writers share it and never wait for each other; a tailing read takes the row
``FOR UPDATE`` first, which waits out every transaction that has drawn an event id
and not yet committed (see ``kanban_orm.backends.mysql``). Nothing changes on SQLite
and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "kb0007"
down_revision: str | Sequence[str] | None = "kb0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GUARD_TABLE = "kanban_event_guard"
TRIGGER = "kanban_task_events_guard"


def _mysql() -> bool:
    return op.get_bind().dialect.name in ("mysql", "mariadb")


def upgrade() -> None:
    if not _mysql():
        return
    op.create_table(
        GUARD_TABLE,
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_kanban_event_guard"),
        sa.CheckConstraint("id = 1", name="ck_kanban_event_guard_one_row"),
        mysql_engine="InnoDB",
    )
    op.execute(f"INSERT INTO {GUARD_TABLE} (id) VALUES (1)")
    op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}")
    op.execute(
        f"CREATE TRIGGER {TRIGGER} BEFORE INSERT ON kanban_task_events FOR EACH ROW "
        f"BEGIN DECLARE guard SMALLINT; "
        f"SELECT id INTO guard FROM {GUARD_TABLE} WHERE id = 1 LOCK IN SHARE MODE; END"
    )


def downgrade() -> None:
    if not _mysql():
        return
    op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}")
    op.drop_table(GUARD_TABLE)
