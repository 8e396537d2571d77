"""Maintained counts of the finished statuses, so the board stays fast as history grows.

Revision ID: kb0009
Revises: kb0008
Create Date: 2026-12-02

Counting a status's tasks read every one of them: at a million done tasks the board's
header counts took longer than the rest of the board. ``kanban_status_tallies`` holds,
for done and archived, how many tasks had last changed by its ``through``; triggers on
``kanban_tasks`` keep it as rows enter or leave (reopening, archiving, deleting old
history: never a claim or a completion, whose rows change after ``through``), and the
board adds the tasks changed since, found by the new index on (status, updated_at).
``through`` starts NULL (the count stays exact the slow way) until the first
``refresh_counts`` (prune and the housekeeper run it).

The trigger SQL is copied here, not imported: a landed revision must not change when
the models do.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "kb0009"
down_revision: str | Sequence[str] | None = "kb0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
TALLIED = "'done', 'archived'"
LOCK_KEY = 0x6B62_7473  # "kbts", models.STATUS_TALLY_LOCK_KEY
TRIGGERS = ("kanban_tasks_tally_insert", "kanban_tasks_tally_update", "kanban_tasks_tally_delete")


def _step(row: str, sign: str) -> str:
    return (
        f"UPDATE kanban_status_tallies SET tasks = tasks {sign} 1 "
        f"WHERE status = {row}.status AND {row}.updated_at <= through"
    )


def _mysql_step(row: str, sign: str) -> str:
    return (
        f"IF {row}.status IN ({TALLIED}) THEN "
        f"SET cutoff = (SELECT through FROM kanban_status_tallies "
        f"WHERE status = {row}.status LOCK IN SHARE MODE); "
        f"IF {row}.updated_at <= cutoff THEN UPDATE kanban_status_tallies "
        f"SET tasks = tasks {sign} 1 WHERE status = {row}.status; END IF; END IF;"
    )


def _triggers(dialect: str) -> list[str]:
    if dialect == "sqlite":
        return [
            "CREATE TRIGGER kanban_tasks_tally_insert AFTER INSERT ON kanban_tasks "
            f"WHEN NEW.status IN ({TALLIED}) BEGIN {_step('NEW', '+')}; END",
            "CREATE TRIGGER kanban_tasks_tally_update AFTER UPDATE ON kanban_tasks "
            f"WHEN OLD.status IN ({TALLIED}) OR NEW.status IN ({TALLIED}) "
            f"BEGIN {_step('OLD', '-')}; {_step('NEW', '+')}; END",
            "CREATE TRIGGER kanban_tasks_tally_delete AFTER DELETE ON kanban_tasks "
            f"WHEN OLD.status IN ({TALLIED}) BEGIN {_step('OLD', '-')}; END",
        ]
    if dialect == "postgresql":
        return [
            "CREATE OR REPLACE FUNCTION kanban_status_tally() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN "
            f"PERFORM pg_advisory_xact_lock_shared({LOCK_KEY}); "
            f"IF TG_OP <> 'INSERT' AND OLD.status IN ({TALLIED}) THEN "
            f"{_step('OLD', '-')}; END IF; "
            f"IF TG_OP <> 'DELETE' AND NEW.status IN ({TALLIED}) THEN "
            f"{_step('NEW', '+')}; END IF; "
            "RETURN NULL; END $$",
            "CREATE TRIGGER kanban_tasks_tally_insert AFTER INSERT ON kanban_tasks FOR EACH ROW "
            f"WHEN (NEW.status IN ({TALLIED})) EXECUTE FUNCTION kanban_status_tally()",
            "CREATE TRIGGER kanban_tasks_tally_update AFTER UPDATE ON kanban_tasks FOR EACH ROW "
            f"WHEN (OLD.status IN ({TALLIED}) OR NEW.status IN ({TALLIED})) "
            "EXECUTE FUNCTION kanban_status_tally()",
            "CREATE TRIGGER kanban_tasks_tally_delete AFTER DELETE ON kanban_tasks FOR EACH ROW "
            f"WHEN (OLD.status IN ({TALLIED})) EXECUTE FUNCTION kanban_status_tally()",
        ]
    bodies = {
        "INSERT": _mysql_step("NEW", "+"),
        "UPDATE": _mysql_step("OLD", "-") + " " + _mysql_step("NEW", "+"),
        "DELETE": _mysql_step("OLD", "-"),
    }
    return [
        f"CREATE TRIGGER kanban_tasks_tally_{event.lower()} AFTER {event} ON kanban_tasks "
        f"FOR EACH ROW BEGIN DECLARE cutoff DATETIME(6); {body} END"
        for event, body in bodies.items()
    ]


def upgrade() -> None:
    op.create_table(
        "kanban_status_tallies",
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("tasks", sa.BigInteger(), nullable=False),
        sa.Column("through", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("status", name=op.f("pk_kanban_status_tallies")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.execute(
        "INSERT INTO kanban_status_tallies (status, tasks) VALUES ('done', 0), ('archived', 0)"
    )
    op.create_index("ix_kanban_tasks_status_updated_at", "kanban_tasks", ["status", "updated_at"])
    for statement in _triggers(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for trigger in TRIGGERS:
        on = " ON kanban_tasks" if dialect == "postgresql" else ""
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}{on}")
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS kanban_status_tally()")
    op.drop_index("ix_kanban_tasks_status_updated_at", table_name="kanban_tasks")
    op.drop_table("kanban_status_tallies")
