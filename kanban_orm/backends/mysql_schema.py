"""MySQL/MariaDB: how the migrated schema differs from the models on purpose (kb0004).

The models declare partial unique indexes (``postgresql_where``/``sqlite_where``); on
MySQL the migrations make each one a unique index on a stored generated column
instead. Alembic's diff then reports those columns and indexes, and MariaDB's JSON
columns as LONGTEXT (JSON is an alias there): expected, and left out here, while a
generated column or index that is missing is reported. So is the event log's guard (kb0007): a
table the models do not declare, expected, while a missing table, row or trigger is
reported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect

from ..models import MYSQL_GENERATED_UNIQUE
from .mysql import (
    EVENT_GUARD_ROW,
    EVENT_GUARD_TABLE,
    EVENT_GUARD_TRIGGER,
    EVENT_GUARD_TRIGGER_PRESENT,
    events,
)
from .sqlite import _sort_order_artifacts

if TYPE_CHECKING:
    from alembic.runtime.migration import MigrationContext

#: The generated columns of kb0004, by table, and the unique indexes made on them.
GENERATED_COLUMNS = {
    table: {entry[0] for entry in entries} for table, entries in MYSQL_GENERATED_UNIQUE.items()
}
GENERATED_INDEXES_BY_TABLE = {
    table: {entry[3] for entry in entries} for table, entries in MYSQL_GENERATED_UNIQUE.items()
}
GENERATED_INDEXES = frozenset().union(*GENERATED_INDEXES_BY_TABLE.values())


#: Indexes on an expression, which MariaDB cannot build (kb0005 leaves them out there).
EXPRESSION_INDEXES = frozenset({"ix_kanban_tasks_done_order"})


def _expected(diff: Any) -> bool:
    if isinstance(diff, list):
        return all(_expected(one) for one in diff)
    kind = diff[0]
    if kind == "remove_table":
        return bool(diff[1].name == EVENT_GUARD_TABLE)
    if kind in ("add_index", "remove_index"):
        return diff[1].name in GENERATED_INDEXES | EXPRESSION_INDEXES
    if kind == "remove_column":
        return diff[3].name in GENERATED_COLUMNS.get(diff[2], set())
    if kind == "modify_type":
        # MariaDB's JSON is LONGTEXT CHECK (json_valid(...)); it reflects as LONGTEXT.
        existing, wanted = diff[5], diff[6]
        return "JSON" in type(wanted).__name__.upper() and "TEXT" in type(existing).__name__.upper()
    return False


def differences(context: MigrationContext, found: list[Any]) -> list[Any]:
    # MariaDB, as SQLite, reflects the claim-order index without its DESC column's order.
    artifacts = _sort_order_artifacts(found)
    kept = [diff for diff in found if id(diff) not in artifacts and not _expected(diff)]
    bind = context.bind
    if bind is None:
        return kept
    inspector = inspect(bind)
    for table, columns in GENERATED_COLUMNS.items():
        if not inspector.has_table(table):
            continue
        present = {column["name"] for column in inspector.get_columns(table)}
        kept += [("missing_generated_column", table, c) for c in sorted(columns - present)]
        # Alembic's own diff of these indexes is left out above (the models declare the
        # partial form), so a dropped one is looked for here.
        indexes = {index["name"] for index in inspector.get_indexes(table)}
        missing = GENERATED_INDEXES_BY_TABLE[table] - indexes
        kept += [("missing_generated_index", table, name) for name in sorted(missing)]
    if inspector.has_table(events.name):
        if (
            not inspector.has_table(EVENT_GUARD_TABLE)
            or bind.execute(EVENT_GUARD_ROW).first() is None
        ):
            kept.append(("missing_event_guard_row", EVENT_GUARD_TABLE))
        if bind.execute(EVENT_GUARD_TRIGGER_PRESENT).first() is None:
            kept.append(("missing_trigger", EVENT_GUARD_TRIGGER))
    return kept
