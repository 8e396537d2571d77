"""The hot statements stay index-driven and few, so their cost does not grow with the backlog."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Executable

import kanban_orm as kb
from kanban_orm import driver
from kanban_orm import queries as q
from kanban_orm.backends import mysql


def explain(conn: Connection, statement: Executable, params: dict[str, Any]) -> str:
    """The database's plan for ``statement`` as the write path runs it (compiled by
    kanban_orm.driver, constants written into the SQL), which is not executed. MariaDB's
    rows name the table, access type, index (``key``) and Extra, space-separated."""
    prefix = "EXPLAIN QUERY PLAN " if conn.dialect.name == "sqlite" else "EXPLAIN "
    sql, values = driver.prepared(statement, conn.dialect, tuple(params)).bind(params)
    rows = conn.exec_driver_sql(prefix + sql, values).all()
    return "\n".join(" ".join(str(col) for col in row) for row in rows)


def analyze(conn: Connection) -> None:
    """Fresh statistics for kanban_tasks, in each database's words."""
    statement = {"sqlite": "ANALYZE", "postgresql": "ANALYZE kanban_tasks"}
    conn.exec_driver_sql(statement.get(conn.dialect.name, "ANALYZE TABLE kanban_tasks"))


def mysql_access(plan: str, table: str) -> tuple[str, str, str]:
    """(access type, index, Extra) of ``table``'s row in a MariaDB/MySQL plan."""
    for line in plan.splitlines():
        columns = line.split(" ")
        if columns[2] == table:
            return columns[3], columns[5], " ".join(columns[9:])
    raise AssertionError(f"{table} not in the plan:\n{plan}")


def test_claim_next_walks_the_claim_order_index(engine: Engine) -> None:
    backlog = [
        {"title": f"t{i}", "status": "done" if i % 3 else "ready", "priority": i % 7}
        for i in range(6000)
    ]
    with engine.begin() as conn:
        conn.execute(insert(q.tasks), backlog)
        analyze(conn)
    claim: Executable = q.claim_next_statement(
        False, False, numbered=engine.dialect.name == "sqlite"
    )
    idx = "ix_kanban_tasks_claim_order"
    if engine.dialect.name == "mysql":
        claim = mysql.PICKS[False, False]  # MariaDB picks with a SELECT, then claims
    with engine.connect() as conn:
        plan = explain(conn, claim, {"limit": 1, "ttl": 60})
        conn.rollback()

    if engine.dialect.name == "sqlite":
        assert "SEARCH candidate USING INDEX ix_kanban_tasks_claim_order (status=?)" in plan
        assert "TEMP B-TREE" not in plan  # no sort: the index gives claim order
    elif engine.dialect.name == "mysql":
        access, index, extra = mysql_access(plan, "kanban_tasks")
        assert (access, index) in {("ref", idx), ("range", idx)}, plan
        assert "filesort" not in extra, plan  # no sort: the index gives claim order
    else:
        assert "Index Scan using ix_kanban_tasks_claim_order on kanban_tasks candidate" in plan
        assert "Seq Scan on kanban_tasks" not in plan
        assert "Sort" not in plan, plan


def test_the_claim_update_finds_the_picked_row_by_primary_key(empty_db_url: str) -> None:
    """Regression: the UPDATE repeated the whole claim guard, and PostgreSQL (with the
    default statistics of a table autovacuum has not analysed yet) drove it from the
    ready index, visiting every ready task to find the one picked id."""
    engine = kb.init_db(empty_db_url)  # a new database: no statistics yet
    backlog = [{"title": f"t{i}", "status": "ready"} for i in range(3000)]
    with engine.begin() as conn:
        conn.execute(insert(q.tasks), backlog)
    claim = q.claim_next_statement(False, False, numbered=engine.dialect.name == "sqlite")
    params: dict[str, Any] = {"limit": 1, "ttl": 60}
    if engine.dialect.name == "postgresql":
        claim = q.claim_opening_runs_statement(claim)  # type: ignore[assignment]
        params = {**params, "claimer": "w", "worker_id": None}
    if engine.dialect.name == "mysql":
        claim, params = mysql.CLAIM_PICKED, {"ids": [1500], "ttl": 60}  # type: ignore[assignment]
    with engine.connect() as conn:
        plan = explain(conn, claim, params)
        conn.rollback()

    if engine.dialect.name == "sqlite":
        assert "SEARCH kanban_tasks USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
    elif engine.dialect.name == "mysql":
        access, index, _ = mysql_access(plan, "kanban_tasks")
        assert (access, index) == ("range", "PRIMARY"), plan
    else:
        update = plan[plan.index("Update on kanban_tasks") :]
        # The target table itself (no alias), as opposed to the subqueries' aliases.
        assert re.search(r"pk_kanban_tasks on kanban_tasks\s+\(cost", update), plan
        assert not re.search(r"ix_kanban_tasks_claim_order on kanban_tasks\s+\(cost", update), plan


def test_the_expired_claims_scan_is_bounded_by_the_expiry_index(engine: Engine) -> None:
    """Regression: with a volatile clock in the condition PostgreSQL read the whole
    expiry index and filtered row by row, on every claim's reclaim check."""
    later = datetime.now(UTC) + timedelta(hours=1)
    running = {"status": "running", "claim_lock": "k", "claim_expires": later}
    done = {"status": "done", "claim_lock": None, "claim_expires": None}
    backlog = [{"title": f"t{i}", **(running if i % 2 else done)} for i in range(6000)]
    with engine.begin() as conn:
        conn.execute(insert(q.tasks), backlog)
        analyze(conn)
    with engine.connect() as conn:
        plan = explain(conn, q.expired_claims_statement(False, False), {"limit": 10})
        conn.rollback()

    if engine.dialect.name == "sqlite":
        assert "USING INDEX ix_kanban_tasks_claim_expires (claim_expires<?)" in plan, plan
    elif engine.dialect.name == "mysql":
        access, index, _ = mysql_access(plan, "kanban_tasks")
        assert (access, index) == ("range", "ix_kanban_tasks_claim_expires"), plan
    else:
        assert "ix_kanban_tasks_claim_expires" in plan, plan
        assert re.search(r"Index Cond: \(claim_expires < timezone", plan), plan


@pytest.mark.backends("postgres")  # SQLite prepares once; mysqlclient never prepares
def test_hot_statements_settle_on_one_plan_for_all_calls(engine: Engine) -> None:
    """PostgreSQL re-plans a prepared statement on every call when its generic plan
    looks dearer than the plans made for the actual values; that planning cost more
    than running the claim. The claim and complete statements must settle on the
    generic plan after the planner's five trial calls. (Batch statements take arrays,
    whose generic plan assumes a size; they may be planned per call, once per batch.)"""
    history = [{"title": f"old {i}", "status": "done"} for i in range(5000)]
    with engine.begin() as conn:
        conn.execute(insert(q.tasks), history)  # what a board in use looks like
        conn.exec_driver_sql("ANALYZE kanban_tasks")
    with kb.connect(engine.url.render_as_string(hide_password=False)) as session:
        for i in range(100):
            kb.create_task(session, title=f"t{i}")
        for _ in range(12):
            for task in kb.claim_many(session, claimer="w", limit=1):
                assert task.claim_lock is not None
                kb.complete_task(session, task.id, claim_lock=task.claim_lock)
            tasks = kb.claim_many(session, claimer="w", limit=3)
            kb.complete_many(session, tasks)
    with engine.connect() as conn:
        plans = conn.exec_driver_sql(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
        ).all()
    hot = {
        "claim": [p for p in plans if "SKIP LOCKED" in p.statement and "LIMIT" in p.statement],
        "complete one": [p for p in plans if "ctid" in p.statement and "unnest" not in p.statement],
    }
    assert plans, "the driver path should have prepared its statements on this connection"
    for name, found in hot.items():
        assert found, f"{name} statement not prepared: {[p.statement[:80] for p in plans]}"
        assert all(p.generic_plans > 0 for p in found), (name, found)


def test_a_held_claim_is_found_by_primary_key(engine: Engine) -> None:
    """Regression: the fenced guard named ``status = 'running'`` besides the token, and
    PostgreSQL, whose statistics said almost nothing runs, found the task through the
    claim-order index, walking every 'running' entry, the dead ones of finished claims
    included (0.3 ms per completion on a busy board instead of a key lookup)."""
    with engine.begin() as conn:
        conn.execute(insert(q.tasks), [{"title": f"t{i}", "status": "ready"} for i in range(6000)])
        # The held claim exists (else MariaDB answers "Impossible WHERE" from the key alone).
        conn.execute(
            q.tasks.update()
            .where(q.tasks.c.id == 17)
            .values(status="running", claim_lock="k", claim_expires=datetime.now(UTC))
        )
        analyze(conn)
    held: Executable = q.COMPLETE_HELD
    if engine.dialect.name == "mysql":
        # No RETURNING: an UPDATE pinned to its row's id runs bare, then a read by id.
        held = mysql.emulation(q.COMPLETE_HELD).bare
    with engine.connect() as conn:
        found = explain(conn, held, {"task_id": 17, "token": "k", "task_result": None})
        conn.rollback()

    if engine.dialect.name == "sqlite":
        assert "USING INTEGER PRIMARY KEY (rowid=?)" in found, found
    elif engine.dialect.name == "mysql":
        access, index, _ = mysql_access(found, "kanban_tasks")
        assert index == "PRIMARY" and access in ("const", "range"), found
    else:
        assert "pk_kanban_tasks" in found, found
        assert "ix_kanban_tasks_claim_order" not in found, found


@pytest.mark.backends("sqlite")  # PostgreSQL batches in one statement; MariaDB its own way
def test_sqlite_batch_steps_look_tasks_and_runs_up_by_key(engine: Engine) -> None:
    """SQLite runs a batch as one statement per step, its ids bound as a JSON list; each
    must look its rows up by key, not scan the board."""
    with engine.begin() as conn:
        conn.execute(insert(q.tasks), [{"title": f"t{i}", "status": "ready"} for i in range(6000)])
        conn.exec_driver_sql("ANALYZE")
    params = {"ids": [1, 2], "pairs": [[1, "k"]], "claimer": "w", "task_result": None}
    params["worker_id"] = None
    params.update(run_outcome="completed", run_summary=None, run_metadata=None, run_error=None)
    with engine.connect() as conn:
        for statement in (q.OPEN_NUMBERED_RUNS, q.LOG_CLAIMS, q.COMPLETE_PAIRS, q.CLOSE_OPEN_RUNS):
            found = explain(conn, statement, params)
            assert "SCAN kanban_task" not in found, found
            assert "SEARCH kanban_task" in found, found


def test_a_completion_looks_for_children_to_promote_only_when_one_waits(
    session: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The statement that closes the run says whether a child waits in todo; the
    promotion's own statements run only then (a task without children pays nothing)."""
    run: list[str] = []
    call = driver.Tx._call

    def recording(tx: driver.Tx, sql: str, values: Any) -> Any:
        run.append(sql)
        return call(tx, sql, values)

    monkeypatch.setattr(driver.Tx, "_call", recording)
    lonely = kb.create_task(session, title="no children")
    parent = kb.create_task(session, title="parent")
    child = kb.create_task(session, title="child", parents=[parent])
    locking_children = driver.prepared(
        q.LOCK_WAITING_CHILDREN, session.get_bind().dialect, ("task_id",)
    ).sql

    for task_id in (lonely, parent):
        claimed = kb.claim_task(session, task_id, claimer="w")
        assert claimed is not None
        run.clear()
        kb.complete_task(session, task_id, claim_lock=claimed.claim_lock)
        assert (locking_children in run) == (task_id == parent)
    assert kb.get_task(session, child).status == "ready"


def test_a_forced_completion_without_a_run_still_promotes_its_children(
    session: Any, engine: Engine
) -> None:
    """No open run to close means no answer about children: the promotion looks."""
    parent = kb.create_task(session, title="never claimed")
    child = kb.create_task(session, title="child", parents=[parent])
    kb.complete_task(session, parent, force=True)
    assert kb.get_task(session, child).status == "ready"
