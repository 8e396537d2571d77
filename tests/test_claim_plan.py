"""The claim query stays index-driven, so its cost does not grow with the backlog."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Executable

from kanban_orm import queries as q


def explain(conn: Connection, statement: Executable, params: dict[str, Any]) -> str:
    """The database's plan for ``statement``, which is not executed."""
    prefix = "EXPLAIN QUERY PLAN " if conn.dialect.name == "sqlite" else "EXPLAIN "

    def rewrite(*args: Any) -> tuple[str, Any]:
        _conn, _cursor, sql, parameters, _context, _many = args
        return prefix + sql, parameters

    event.listen(conn, "before_cursor_execute", rewrite, retval=True)
    try:
        rows = conn.execute(statement, params).all()
    finally:
        event.remove(conn, "before_cursor_execute", rewrite)
    return "\n".join(" ".join(str(col) for col in row) for row in rows)


def test_claim_next_walks_the_claim_order_index(engine: Engine) -> None:
    backlog = [
        {"title": f"t{i}", "status": "done" if i % 3 else "ready", "priority": i % 7}
        for i in range(6000)
    ]
    with engine.begin() as conn:
        conn.execute(insert(q.tasks), backlog)
        conn.exec_driver_sql("ANALYZE" if conn.dialect.name == "sqlite" else "ANALYZE kanban_tasks")
    with engine.connect() as conn:
        plan = explain(conn, q.claim_next_statement(False, False), {"limit": 1, "ttl": 60})
        conn.rollback()

    if engine.dialect.name == "sqlite":
        assert "SEARCH candidate USING INDEX ix_kanban_tasks_claim_order (status=?)" in plan
        assert "TEMP B-TREE" not in plan  # no sort: the index gives claim order
    else:
        assert "Index Scan using ix_kanban_tasks_claim_order on kanban_tasks candidate" in plan
        assert "Seq Scan on kanban_tasks" not in plan
        assert "Sort" not in plan, plan
