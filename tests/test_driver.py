"""The driver path's compiled statements: constants written into the SQL, values bound.

PostgreSQL plans a prepared statement once for all calls only when it can cost it
without the values; ``status = $3`` hides how rare a status is, so constants of
:mod:`kanban_orm.queries` are rendered inline and only the caller's values are bound.
"""

from __future__ import annotations

import warnings
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import SAWarning
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement

import kanban_orm as kb
from kanban_orm import driver
from kanban_orm import queries as q
from kanban_orm.backends import postgresql as pg_backend

DIALECTS = {"sqlite": sqlite.dialect(), "postgres": postgresql.psycopg.dialect()}


@pytest.fixture(params=list(DIALECTS))
def dialect(request: pytest.FixtureRequest) -> Dialect:
    return DIALECTS[request.param]


def values_of(plan: driver.Prepared, params: dict[str, Any]) -> list[Any]:
    _sql, values = plan.bind(params)
    return list(values.values()) if isinstance(values, dict) else list(values)


def test_constants_are_written_into_the_sql_and_values_are_bound(dialect: Dialect) -> None:
    plan = driver.prepared(q.claim_next_statement(False, False), dialect, ("limit", "ttl"))
    sql, _ = plan.bind({"limit": 1, "ttl": 60})

    assert "candidate.status = 'ready'" in sql
    assert "status='running'" in sql
    assert "version=(kanban_tasks.version + 1)" in sql
    assert values_of(plan, {"limit": 1, "ttl": 45}).count(45) == 1


def test_a_constant_string_is_quoted_by_the_dialect(dialect: Dialect) -> None:
    statement = select(q.tasks.c.id).where(q.tasks.c.title == "it's", q.tasks.c.priority == 3)
    sql, values = driver.prepared(statement, dialect, ()).bind({})

    assert "kanban_tasks.title = 'it''s'" in sql
    assert "kanban_tasks.priority = 3" in sql
    assert not values


def test_a_constant_in_list_is_inline_and_a_caller_list_is_bound(dialect: Dialect) -> None:
    statement = select(q.tasks.c.id).where(
        q.tasks.c.status.in_(["todo", "ready"]),
        q.tasks.c.id.in_(bindparam("ids", expanding=True)),
    )
    plan = driver.prepared(statement, dialect, ("ids",))
    sql, _ = plan.bind({"ids": [7, 8, 9]})

    assert "'todo', 'ready'" in sql
    assert values_of(plan, {"ids": [7, 8, 9]}) == [7, 8, 9]
    assert values_of(plan, {"ids": [5]}) == [5]


def test_each_limit_gets_its_own_sql_made_once(dialect: Dialect) -> None:
    plan = driver.prepared(q.claim_next_statement(False, False), dialect, ("limit", "ttl"))
    ten, _ = plan.bind({"limit": 10, "ttl": 60})
    fifty, _ = plan.bind({"limit": 50, "ttl": 60})

    assert "LIMIT 10" in ten and "LIMIT 50" in fifty
    assert plan.bind({"limit": 10, "ttl": 5})[0] is ten  # the cached string, not re-made
    assert {(10,), (50,)} <= set(plan.expanded)


def test_statements_with_inline_constants_behave_the_same(session: Session) -> None:
    """End to end on the database: the constants in the claim, complete and promotion
    statements select and write exactly what they did as bound values."""
    parent = kb.create_task(session, title="it's a parent", priority=3)
    child = kb.create_task(session, title="child", parents=[parent])
    claimed = kb.claim_many(session, claimer="w", limit=5)
    assert [t.id for t in claimed] == [parent]
    assert claimed[0].claim_lock is not None
    kb.complete_task(session, parent, claim_lock=claimed[0].claim_lock)

    assert kb.get_task(session, parent).status == "done"
    assert kb.get_task(session, child).status == "ready"


def _bound_by_name() -> list[tuple[str, Any]]:
    """The statements of queries.py whose parameters are all the caller's, under their
    own names, with those names."""
    found = []
    for name, statement in vars(q).items():
        if not name.isupper() or not isinstance(statement, ClauseElement):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SAWarning)  # an INSERT probed with no values
            probe = driver.Prepared(statement, DIALECTS["sqlite"], ())
        keys = tuple(sorted({b.key for b in probe.compiled.bind_names if not b.unique}))
        if keys and driver.Prepared(statement, DIALECTS["sqlite"], keys).order is not None:
            found.append((name, keys))
    return found


#: Statements whose keys the probe above cannot find: INSERTs of the columns passed, and
#: the claims, whose LIMIT is written into the SQL.
_GIVEN_KEYS: list[tuple[str, Any, tuple[str, ...]]] = [
    ("INSERT_EVENT", q.INSERT_EVENT, ("task_id", "run_id", "kind", "payload")),
    ("INSERT_LINK", q.INSERT_LINK, ("parent_id", "child_id")),
    ("claim_next", q.claim_next_statement(False, False), ("limit", "ttl")),
    ("claim_next numbered", q.claim_next_statement(False, False, numbered=True), ("limit", "ttl")),
    (
        "claim_next by both",
        q.claim_next_statement(True, True),
        ("limit", "ttl", "only_assignee", "only_tenant"),
    ),
]


@pytest.mark.parametrize(
    ("statement", "keys"),
    [(getattr(q, name), keys) for name, keys in _bound_by_name()]
    + [(statement, keys) for _, statement, keys in _GIVEN_KEYS],
    ids=[name for name, _ in _bound_by_name()] + [name for name, _, _ in _GIVEN_KEYS],
)
def test_binding_by_name_gives_what_the_compiled_statement_gives(
    dialect: Dialect, statement: ClauseElement, keys: tuple[str, ...]
) -> None:
    """Such statements are bound without the compiled statement's help (the hot path);
    the SQL and values must be what the compiled statement makes of them."""
    plan = driver.Prepared(statement, dialect, keys)
    assert plan.order is not None
    params: dict[str, Any] = {key: _sample_value(key) for key in keys}
    for limit in (7, 50, 7):
        if "limit" in params:
            params["limit"] = limit
        fast = plan.bind(params)
        compiled_only = driver.Prepared(statement, dialect, keys)
        compiled_only.order = None
        sql, values = compiled_only.bind(params)
        if isinstance(values, dict):  # a named driver is not sent the rendered LIMIT
            values = {k: v for k, v in values.items() if k not in plan.per_call}
        assert repr(fast) == repr((sql, values))


def _sample_value(key: str) -> Any:
    """A value of the type the statement's parameter ``key`` takes."""
    if key in {"ids", "tokens", "pairs", "payload"}:
        return [3, 4]
    if key == "through":  # a DateTime parameter: its type's processor refuses a string
        return datetime(2026, 12, 2, 12, 0, 0)
    return f"{key}-value"


def test_a_value_given_with_the_statement_is_used_when_the_call_has_none(
    dialect: Dialect,
) -> None:
    """Regression (review): binding by name dropped parameters whose value came with
    the statement, as the PostgreSQL backend's EVENT_LOG_GUARD_PRESENT's trigger name does."""
    plan = driver.prepared(pg_backend.EVENT_LOG_GUARD_PRESENT, dialect, ())
    assert plan.order is None
    assert values_of(plan, {}) == [pg_backend.EVENT_LOG_GUARD_TRIGGER]
