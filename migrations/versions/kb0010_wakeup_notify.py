"""PostgreSQL wake-up: NOTIFY on every move into ``ready``.

Revision ID: kb0010
Revises: kb0009
Create Date: 2026-12-02

An idle worker used to poll with backoff up to five seconds. Now two row triggers on
``kanban_tasks`` (an INSERT whose status is ``ready``, an UPDATE that moves a task into
``ready`` from any other status) call ``pg_notify('kanban_ready', '')``, on which a
worker LISTENs (see ``kanban_orm.wakeup``). The event log has no trigger: a claim or a
completion that notified would queue its commit behind every other notifying one. The
rule lives in the database, so every statement that makes a task ready notifies,
whichever function runs it. NOTIFY is delivered at commit, never for a rollback.
Nothing changes on SQLite and MySQL/MariaDB.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "kb0010"
down_revision: str | Sequence[str] | None = "kb0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of models.READY_NOTIFY_DDL as this revision installs it.
READY_FUNCTION = "kanban_notify_ready"
TRIGGERS = (
    ("kanban_tasks_ready_insert", "kanban_tasks"),
    ("kanban_tasks_ready_update", "kanban_tasks"),
)
DDL = (
    f"CREATE OR REPLACE FUNCTION {READY_FUNCTION}() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN "
    "PERFORM pg_notify('kanban_ready', ''); RETURN NULL; END $$",
    "CREATE TRIGGER kanban_tasks_ready_insert AFTER INSERT ON kanban_tasks "
    f"FOR EACH ROW WHEN (NEW.status = 'ready') EXECUTE FUNCTION {READY_FUNCTION}()",
    "CREATE TRIGGER kanban_tasks_ready_update AFTER UPDATE OF status ON kanban_tasks "
    "FOR EACH ROW WHEN (NEW.status = 'ready' AND OLD.status <> 'ready') "
    f"EXECUTE FUNCTION {READY_FUNCTION}()",
)


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if not _postgresql():
        return
    # A database made with create_all() and stamped at an earlier revision has them.
    for trigger, table in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
    for statement in DDL:
        op.execute(statement)


def downgrade() -> None:
    if not _postgresql():
        return
    for trigger, table in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
    op.execute(f"DROP FUNCTION IF EXISTS {READY_FUNCTION}()")
