"""Registered workers, the run's worker, and a task's own runtime limit.

Revision ID: kb0011
Revises: kb0010
Create Date: 2026-12-02

``kanban_workers`` holds one row per Worker process: its claimer, host, pid, the
process's start mark, when it started, was last seen, took its liveness lock, and
stopped. ``kanban_task_runs.worker_id`` names the registered worker that opened a run,
so another worker that proves it dead can release its claim before the lease ends.
``kanban_tasks.max_runtime_ms`` is a task's own limit on one run, in milliseconds. Existing
rows keep NULL in the new columns: runs of no registered worker, tasks without a limit.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "kb0011"
down_revision: str | Sequence[str] | None = "kb0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# MySQL and MariaDB keep whole seconds unless told a precision (see kb0004).
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "kanban_workers",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("claimer", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("process_start", sa.String(length=200), nullable=True),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("last_seen_at", TIMESTAMP, nullable=False),
        sa.Column("locked_at", TIMESTAMP, nullable=True),
        sa.Column("stopped_at", TIMESTAMP, nullable=True),
        sa.Column("end_reason", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kanban_workers")),
        # 4-byte characters in names, exact comparison (see kb0004)
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_index("ix_kanban_workers_stopped_at", "kanban_workers", ["stopped_at"])
    # Plain ADD COLUMN of a nullable column: no table rebuild, even on SQLite.
    _add_column("kanban_task_runs", sa.Column("worker_id", BIG_ID, nullable=True), "error")
    _add_column(
        "kanban_tasks", sa.Column("max_runtime_ms", sa.Integer(), nullable=True), "completed_at"
    )


def _add_column(table: str, column: sa.Column[object], after: str) -> None:
    """ADD COLUMN, last on SQLite and PostgreSQL; on MySQL/MariaDB ``AFTER`` the last
    mapped column, before the generated ones kb0004 added, where create_all puts it."""
    bind = op.get_bind()
    if bind.dialect.name not in ("mysql", "mariadb"):
        op.add_column(table, column)
        return
    kind = column.type.compile(dialect=bind.dialect)
    op.execute(f"ALTER TABLE {table} ADD COLUMN {column.name} {kind} NULL AFTER {after}")


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35+): a batch copy of kanban_tasks would lose the
    # expression index kb0005 made, which reflection cannot see.
    op.drop_column("kanban_tasks", "max_runtime_ms")
    op.drop_column("kanban_task_runs", "worker_id")
    op.drop_table("kanban_workers")
