"""Retention: the board-level log, and an index for the done column's order.

Revision ID: kb0005
Revises: kb0003
Create Date: 2026-12-02

``kanban_board_events`` records what outlives a task: a deletion, a prune batch, a
doctor repair. A row that removed task events carries ``events_through``, the highest
event id it removed, so a follower whose cursor is below it is told its history was
pruned instead of silently skipping it. ``ix_kanban_tasks_done_order`` serves the done
column (newest first) and prune's search for tasks finished before a cutoff. On SQLite
the event table becomes AUTOINCREMENT, so ids of pruned events are never handed out again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "kb0005"
down_revision: str | Sequence[str] | None = "kb0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# MySQL and MariaDB keep whole seconds unless told a precision (see kb0004).
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
#: MySQL/MariaDB tables hold 4-byte characters and compare keys exactly (see kb0004).
MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def _is_mysql() -> bool:
    return op.get_bind().dialect.name in ("mysql", "mariadb")


DONE_ORDER_SQL = "coalesce(completed_at, created_at)"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # Event ids must never be reused once prune removes the newest ones (SQLite's
        # plain rowid is max(id) + 1): AUTOINCREMENT needs the table rebuilt.
        with op.batch_alter_table(
            "kanban_task_events", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass
    op.create_table(
        "kanban_board_events",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("task_id", BIG_ID, nullable=True),
        sa.Column("payload", JSON_DOC, nullable=True),
        sa.Column("events_through", BIG_ID, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kanban_board_events")),
        **MYSQL_TABLE,
    )
    op.create_index(
        "ix_kanban_board_events_events_through", "kanban_board_events", ["events_through"]
    )
    op.create_index("ix_kanban_board_events_task_id", "kanban_board_events", ["task_id"])
    if _is_mysql():
        return  # MariaDB has no index on an expression: the done column sorts without one
    op.create_index(
        "ix_kanban_tasks_done_order",
        "kanban_tasks",
        ["status", sa.text(DONE_ORDER_SQL), "id"],
    )


def downgrade() -> None:
    if not _is_mysql():
        op.drop_index("ix_kanban_tasks_done_order", table_name="kanban_tasks")
    op.drop_index("ix_kanban_board_events_task_id", table_name="kanban_board_events")
    op.drop_index("ix_kanban_board_events_events_through", table_name="kanban_board_events")
    op.drop_table("kanban_board_events")
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("kanban_task_events", recreate="always"):
            pass
