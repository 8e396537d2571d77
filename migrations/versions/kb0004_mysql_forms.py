"""MySQL/MariaDB forms of the schema: microsecond timestamps, utf8mb4, and the partial
unique indexes as unique indexes on generated columns.

Revision ID: kb0004
Revises: kb0003
Create Date: 2026-12-02

Nothing changes on SQLite and PostgreSQL. On MySQL and MariaDB, kb0001..kb0003 made:

* ``DATETIME`` columns of whole seconds: leases and the order of runs need microseconds
  (``DATETIME(6)``, what ``UTC_TIMESTAMP(6)`` gives);
* tables in the database's default character set, which may be 3-byte ``utf8``:
  converted to ``utf8mb4`` (4-byte characters in titles) with a binary collation, so
  keys, tenants and names compare exactly as on the other backends;
* plain unique indexes where the models have partial ones (MySQL has no ``WHERE`` on an
  index): "one open run per task" would allow one run per task ever, and an archived
  task's idempotency key would never be released. Each becomes a unique index on a
  stored generated column that is NULL for the rows the partial index leaves out
  (NULLs never collide), so a racing second insert still fails on the index and
  ``create_task`` finds the winner, as on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "kb0004"
down_revision: str | Sequence[str] | None = "kb0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = (
    "kanban_tasks",
    "kanban_task_runs",
    "kanban_task_events",
    "kanban_task_links",
    "kanban_task_comments",
)
#: (table, column, nullable) of every timestamp.
TIMESTAMPS = (
    ("kanban_tasks", "claim_expires", True),
    ("kanban_tasks", "run_at", True),
    ("kanban_tasks", "created_at", False),
    ("kanban_tasks", "updated_at", False),
    ("kanban_tasks", "started_at", True),
    ("kanban_tasks", "completed_at", True),
    ("kanban_task_runs", "started_at", False),
    ("kanban_task_runs", "last_heartbeat_at", True),
    ("kanban_task_runs", "ended_at", True),
    ("kanban_task_events", "created_at", False),
    ("kanban_task_comments", "created_at", False),
)
#: generated column -> (table, type, expression, unique index, indexed columns).
GENERATED = {
    "open_task_id": (
        "kanban_task_runs",
        sa.BigInteger(),
        "IF(ended_at IS NULL, task_id, NULL)",
        "ux_kanban_task_runs_one_open",
        ["open_task_id"],
        ["task_id"],
    ),
    "live_key_tenant": (
        "kanban_tasks",
        sa.String(200),
        "IF(idempotency_key IS NOT NULL AND tenant IS NOT NULL AND status <> 'archived', "
        "tenant, NULL)",
        "ux_kanban_tasks_idempotency_tenant",
        ["live_key_tenant", "idempotency_key"],
        ["tenant", "idempotency_key"],
    ),
    "live_key_no_tenant": (
        "kanban_tasks",
        sa.String(200),
        "IF(idempotency_key IS NOT NULL AND tenant IS NULL AND status <> 'archived', "
        "idempotency_key, NULL)",
        "ux_kanban_tasks_idempotency_no_tenant",
        ["live_key_no_tenant"],
        ["idempotency_key"],
    ),
}


def _is_mysql() -> bool:
    return op.get_bind().dialect.name in ("mysql", "mariadb")


def upgrade() -> None:
    if not _is_mysql():
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    for table, column, nullable in TIMESTAMPS:
        op.alter_column(
            table,
            column,
            type_=mysql.DATETIME(fsp=6),
            existing_type=sa.DateTime(),
            existing_nullable=nullable,
        )
    for column, (table, type_, expression, index, columns, _) in GENERATED.items():
        op.drop_index(index, table_name=table)
        op.add_column(
            table, sa.Column(column, type_, sa.Computed(expression, persisted=True), nullable=True)
        )
        op.create_index(index, table, columns, unique=True)


def downgrade() -> None:
    if not _is_mysql():
        return
    for column, (table, _, _, index, _, plain) in GENERATED.items():
        op.drop_index(index, table_name=table)
        op.drop_column(table, column)
        op.create_index(index, table, plain, unique=True)
    for table, column, nullable in TIMESTAMPS:
        op.alter_column(
            table,
            column,
            type_=sa.DateTime(),
            existing_type=mysql.DATETIME(fsp=6),
            existing_nullable=nullable,
        )
