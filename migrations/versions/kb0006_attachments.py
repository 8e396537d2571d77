"""Attachments: files kept with a task, in the database.

Revision ID: kb0006
Revises: kb0003
Create Date: 2026-12-02

One table, deleted with its task. The bytes are a BLOB (bytea on PostgreSQL, LONGBLOB on
MySQL/MariaDB, whose plain BLOB holds only 64 KiB); their size and SHA-256 are kept
beside them so listing attachments never reads the bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "kb0006"
down_revision: str | None = "kb0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
# MySQL and MariaDB keep whole seconds unless told a precision (see kb0004).
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "kanban_task_attachments",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("task_id", BIG_ID, nullable=False),
        sa.Column("run_id", BIG_ID, nullable=True),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("data", BLOB, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("size >= 0", name=op.f("ck_kanban_task_attachments_size_not_negative")),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["kanban_tasks.id"],
            name=op.f("fk_kanban_task_attachments_task_id_kanban_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kanban_task_attachments")),
        # 4-byte characters in names, exact comparison (see kb0004)
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_index(
        "ix_kanban_task_attachments_task_id", "kanban_task_attachments", ["task_id", "id"]
    )


def downgrade() -> None:
    # The table's indexes go with it (MariaDB refuses to drop one a foreign key needs).
    op.drop_table("kanban_task_attachments")
