"""The link timestamp in microseconds on MySQL/MariaDB, as every other timestamp.

Revision ID: kb0008
Revises: kb0007
Create Date: 2026-12-02

kb0004 turned every timestamp into ``DATETIME(6)`` but left out
``kanban_task_links.created_at``, which stayed ``DATETIME`` (whole seconds): a link's
time lost its fraction, unlike the models' ``Timestamp`` and the other backends. Found
by the data-in-place migration test once it ran on MariaDB. Nothing changes on SQLite
and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "kb0008"
down_revision: str | Sequence[str] | None = "kb0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _mysql() -> bool:
    return op.get_bind().dialect.name in ("mysql", "mariadb")


def upgrade() -> None:
    if not _mysql():
        return
    op.alter_column(
        "kanban_task_links",
        "created_at",
        type_=mysql.DATETIME(fsp=6),
        existing_type=sa.DateTime(),
        existing_nullable=False,
    )


def downgrade() -> None:
    if not _mysql():
        return
    op.alter_column(
        "kanban_task_links",
        "created_at",
        type_=sa.DateTime(),
        existing_type=mysql.DATETIME(fsp=6),
        existing_nullable=False,
    )
