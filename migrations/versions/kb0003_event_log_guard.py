"""Event log commit-order guard on PostgreSQL, so a follower never misses an event.

Revision ID: kb0003
Revises: kb0002
Create Date: 2026-11-28

Event ids come from a sequence when a row is inserted, but concurrent transactions
commit in any order: a follower polling ``id > last_seen`` could see id 11 committed
while id 10's transaction is still open, move past 10 and never see it. Every statement
that inserts events now takes a shared transaction advisory lock (writers never wait for
each other); a follower takes the same lock exclusively for its read, which waits out
every transaction that has inserted events and not yet committed. SQLite needs nothing:
it runs one write transaction at a time, so ids are already in commit order.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "kb0003"
down_revision: str | Sequence[str] | None = "kb0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCK_KEY = 0x6B62_6576  # "kbev"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE OR REPLACE FUNCTION kanban_event_log_guard() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN "
        f"PERFORM pg_advisory_xact_lock_shared({LOCK_KEY}); RETURN NULL; END $$"
    )
    # A database made with create_all() (which installs the guard too) and then stamped
    # at kb0002 already has the trigger.
    op.execute("DROP TRIGGER IF EXISTS kanban_task_events_guard ON kanban_task_events")
    op.execute(
        "CREATE TRIGGER kanban_task_events_guard BEFORE INSERT ON kanban_task_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION kanban_event_log_guard()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS kanban_task_events_guard ON kanban_task_events")
    op.execute("DROP FUNCTION IF EXISTS kanban_event_log_guard()")
