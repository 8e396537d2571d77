"""Comments, and unique idempotency keys per tenant among live tasks.

Revision ID: kb0002
Revises: kb0001
Create Date: 2026-11-28

Two partial unique indexes make a create with an idempotency key race-free: one for keys
within a tenant, one for keys of tasks without a tenant (a NULL tenant would otherwise
never collide). Archived tasks release their key.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "kb0002"
down_revision: str | Sequence[str] | None = "kb0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
LIVE_WITH_TENANT = "idempotency_key IS NOT NULL AND tenant IS NOT NULL AND status <> 'archived'"
LIVE_WITHOUT_TENANT = "idempotency_key IS NOT NULL AND tenant IS NULL AND status <> 'archived'"


def upgrade() -> None:
    op.create_table(
        "kanban_task_comments",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("task_id", BIG_ID, nullable=False),
        sa.Column("author", sa.String(length=200), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("length(body) > 0", name=op.f("ck_kanban_task_comments_body_not_empty")),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["kanban_tasks.id"],
            name=op.f("fk_kanban_task_comments_task_id_kanban_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kanban_task_comments")),
    )
    op.create_index("ix_kanban_task_comments_task_id", "kanban_task_comments", ["task_id", "id"])

    # Before the unique indexes existed, concurrent creators on PostgreSQL could both
    # insert a key; keep it on the oldest live task and clear it on the others.
    op.execute(
        """
        UPDATE kanban_tasks SET idempotency_key = NULL
        WHERE idempotency_key IS NOT NULL AND status <> 'archived'
          AND id NOT IN (
            SELECT min(id) FROM kanban_tasks
            WHERE idempotency_key IS NOT NULL AND status <> 'archived'
            GROUP BY tenant, idempotency_key
          )
        """
    )
    op.drop_index("ix_kanban_tasks_idempotency_key", table_name="kanban_tasks")
    op.create_index(
        "ux_kanban_tasks_idempotency_tenant",
        "kanban_tasks",
        ["tenant", "idempotency_key"],
        unique=True,
        sqlite_where=sa.text(LIVE_WITH_TENANT),
        postgresql_where=sa.text(LIVE_WITH_TENANT),
    )
    op.create_index(
        "ux_kanban_tasks_idempotency_no_tenant",
        "kanban_tasks",
        ["idempotency_key"],
        unique=True,
        sqlite_where=sa.text(LIVE_WITHOUT_TENANT),
        postgresql_where=sa.text(LIVE_WITHOUT_TENANT),
    )


def downgrade() -> None:
    op.drop_index("ux_kanban_tasks_idempotency_no_tenant", table_name="kanban_tasks")
    op.drop_index("ux_kanban_tasks_idempotency_tenant", table_name="kanban_tasks")
    op.create_index(
        "ix_kanban_tasks_idempotency_key", "kanban_tasks", ["tenant", "idempotency_key"]
    )
    op.drop_table("kanban_task_comments")
