"""Initial schema: tasks, runs, events and dependency links.

Revision ID: kb0001
Revises:
Create Date: 2026-11-28

This revision is frozen: it spells out every type instead of importing the models, so
later model changes (which come with their own revisions) never alter what it creates.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "kb0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("kanban_orm",)
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
STATUSES = "'triage', 'todo', 'ready', 'running', 'review', 'blocked', 'done', 'archived'"


def upgrade() -> None:
    op.create_table(
        "kanban_tasks",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("title", sa.String(length=500), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("assignee", sa.String(length=200), nullable=True),
        sa.Column("tenant", sa.String(length=200), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.Column("claim_lock", sa.String(length=32), nullable=True),
        sa.Column("claim_expires", sa.DateTime(), nullable=True),
        sa.Column("current_run_id", BIG_ID, nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=True),
        sa.Column("run_at", sa.DateTime(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("block_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("completed_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint(f"status IN ({STATUSES})", name=op.f("ck_kanban_tasks_status")),
        sa.CheckConstraint(
            "(status = 'running') = (claim_lock IS NOT NULL)",
            name=op.f("ck_kanban_tasks_claim_lock_iff_running"),
        ),
        sa.CheckConstraint("length(title) > 0", name=op.f("ck_kanban_tasks_title_not_empty")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kanban_tasks")),
    )
    op.create_index(
        "ix_kanban_tasks_claim_order", "kanban_tasks", ["status", sa.text("priority DESC"), "id"]
    )
    op.create_index("ix_kanban_tasks_claim_expires", "kanban_tasks", ["claim_expires"])
    op.create_index("ix_kanban_tasks_assignee", "kanban_tasks", ["assignee"])
    op.create_index("ix_kanban_tasks_tenant", "kanban_tasks", ["tenant"])
    op.create_index(
        "ix_kanban_tasks_idempotency_key", "kanban_tasks", ["tenant", "idempotency_key"]
    )

    op.create_table(
        "kanban_task_runs",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("task_id", BIG_ID, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("claimer", sa.String(length=200), nullable=False),
        sa.Column("claim_lock", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("last_heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("metadata", JSON_DOC, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "(ended_at IS NULL) = (outcome IS NULL)",
            name=op.f("ck_kanban_task_runs_ended_iff_outcome"),
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["kanban_tasks.id"],
            name=op.f("fk_kanban_task_runs_task_id_kanban_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kanban_task_runs")),
    )
    op.create_index("ix_kanban_task_runs_task_id", "kanban_task_runs", ["task_id", "id"])
    op.create_index(
        "ux_kanban_task_runs_one_open",
        "kanban_task_runs",
        ["task_id"],
        unique=True,
        sqlite_where=sa.text("ended_at IS NULL"),
        postgresql_where=sa.text("ended_at IS NULL"),
    )

    op.create_table(
        "kanban_task_events",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("task_id", BIG_ID, nullable=False),
        sa.Column("run_id", BIG_ID, nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("payload", JSON_DOC, nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["kanban_tasks.id"],
            name=op.f("fk_kanban_task_events_task_id_kanban_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kanban_task_events")),
    )
    op.create_index("ix_kanban_task_events_task_id", "kanban_task_events", ["task_id", "id"])
    op.create_index("ix_kanban_task_events_kind", "kanban_task_events", ["kind"])

    op.create_table(
        "kanban_task_links",
        sa.Column("parent_id", BIG_ID, nullable=False),
        sa.Column("child_id", BIG_ID, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("parent_id <> child_id", name=op.f("ck_kanban_task_links_not_self")),
        sa.ForeignKeyConstraint(
            ["child_id"],
            ["kanban_tasks.id"],
            name=op.f("fk_kanban_task_links_child_id_kanban_tasks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["kanban_tasks.id"],
            name=op.f("fk_kanban_task_links_parent_id_kanban_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("parent_id", "child_id", name=op.f("pk_kanban_task_links")),
    )
    op.create_index("ix_kanban_task_links_child_id", "kanban_task_links", ["child_id"])


def downgrade() -> None:
    op.drop_table("kanban_task_links")
    op.drop_table("kanban_task_events")
    op.drop_table("kanban_task_runs")
    op.drop_table("kanban_tasks")
