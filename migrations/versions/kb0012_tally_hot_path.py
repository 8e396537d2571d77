"""The status tallies off the hot path: a partial index, and no trigger body for a completion.

Revision ID: kb0012
Revises: kb0011
Create Date: 2026-12-02

kb0009's index on (status, updated_at) held every task, so each claim and each completion
moved its entry, although only the finished statuses are ever looked up in it: on SQLite
and PostgreSQL it now holds only done and archived tasks (MariaDB has no partial index
and keeps it whole). Its update trigger ran for every completion, to find each time that
a row stamped now is after every tally's ``through``: it now runs only for a row that
enters a tally stamped before the statement (or leaves one), so a completion runs no
trigger body, and on PostgreSQL and MariaDB takes no lock of the tallies' either.

The trigger SQL is copied here, not imported: a landed revision must not change when
the models do.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "kb0012"
down_revision: str | Sequence[str] | None = "kb0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TALLIED = "'done', 'archived'"
INDEX = "ix_kanban_tasks_status_updated_at"
TRIGGER = "kanban_tasks_tally_update"
STATEMENT_NOW = {
    "sqlite": "strftime('%Y-%m-%d %H:%M:%f000', 'now')",
    "postgresql": "timezone('UTC', statement_timestamp())",
    "mysql": "UTC_TIMESTAMP(6)",
}


def _step(row: str, sign: str) -> str:
    return (
        f"UPDATE kanban_status_tallies SET tasks = tasks {sign} 1 "
        f"WHERE status = {row}.status AND {row}.updated_at <= through"
    )


def _mysql_step(row: str, sign: str, when: str | None = None) -> str:
    return (
        f"IF {row}.status IN ({TALLIED}){f' AND {when}' if when else ''} THEN "
        f"SET cutoff = (SELECT through FROM kanban_status_tallies "
        f"WHERE status = {row}.status LOCK IN SHARE MODE); "
        f"IF {row}.updated_at <= cutoff THEN UPDATE kanban_status_tallies "
        f"SET tasks = tasks {sign} 1 WHERE status = {row}.status; END IF; END IF;"
    )


def _update_trigger(dialect: str, skip_stamped_now: bool) -> str:
    """The update trigger: kb0012's (``skip_stamped_now``) or kb0009's."""
    mysql = dialect in ("mysql", "mariadb")
    now = STATEMENT_NOW["mysql" if mysql else dialect]
    fresh = f"NEW.updated_at < {now}"
    entering = (
        f"(NEW.status IN ({TALLIED}) AND {fresh})"
        if skip_stamped_now
        else (f"NEW.status IN ({TALLIED})")
    )
    if dialect == "sqlite":
        return (
            f"CREATE TRIGGER {TRIGGER} AFTER UPDATE ON kanban_tasks "
            f"WHEN OLD.status IN ({TALLIED}) OR {entering} "
            f"BEGIN {_step('OLD', '-')}; {_step('NEW', '+')}; END"
        )
    if dialect == "postgresql":
        return (
            f"CREATE TRIGGER {TRIGGER} AFTER UPDATE ON kanban_tasks FOR EACH ROW "
            f"WHEN (OLD.status IN ({TALLIED}) OR {entering}) "
            "EXECUTE FUNCTION kanban_status_tally()"
        )
    new_step = _mysql_step("NEW", "+", fresh) if skip_stamped_now else _mysql_step("NEW", "+")
    return (
        f"CREATE TRIGGER {TRIGGER} AFTER UPDATE ON kanban_tasks "
        f"FOR EACH ROW BEGIN DECLARE cutoff DATETIME(6); {_mysql_step('OLD', '-')} "
        f"{new_step} END"
    )


def _swap(skip_stamped_now: bool) -> None:
    dialect = op.get_bind().dialect.name
    on = " ON kanban_tasks" if dialect == "postgresql" else ""
    op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}{on}")
    op.execute(_update_trigger(dialect, skip_stamped_now))
    if dialect in ("sqlite", "postgresql"):
        op.drop_index(INDEX, table_name="kanban_tasks")
        where = {f"{dialect}_where": sa.text(f"status IN ({TALLIED})")} if skip_stamped_now else {}
        op.create_index(INDEX, "kanban_tasks", ["status", "updated_at"], **where)


def upgrade() -> None:
    _swap(skip_stamped_now=True)


def downgrade() -> None:
    _swap(skip_stamped_now=False)
