"""The service layer: each transition, its run row and its event, on SQLite and PostgreSQL.

What a call committed is read back through Core (``task_row``, ``runs``, ``events``) on a
connection of its own, never through the ORM objects the call returned, so the assertions
are about the database. Rejected calls and bad input are in ``test_service_errors.py``;
host transactions and the retry layer in ``test_service_transactions.py``.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Row, Table, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import config
from kanban_orm.clock import utcnow
from kanban_orm.models import Task, TaskEvent, TaskLink, TaskRun

from .helpers import snapshot

TASKS: Table = Task.__table__  # type: ignore[assignment]
RUNS: Table = TaskRun.__table__  # type: ignore[assignment]
EVENTS: Table = TaskEvent.__table__  # type: ignore[assignment]
LINKS: Table = TaskLink.__table__  # type: ignore[assignment]

TOKEN = re.compile(r"[0-9a-f]{32}")

# -- helpers (shared with the other test_service_* modules) ------------------------------


def task_row(engine: Engine, task_id: int) -> Row[Any]:
    """The task's committed row, read on a fresh connection."""
    with engine.connect() as conn:
        return conn.execute(select(TASKS).where(TASKS.c.id == task_id)).one()


def task_ids(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.scalars(select(TASKS.c.id).order_by(TASKS.c.id)))


def runs(engine: Engine, task_id: int) -> list[Row[Any]]:
    """The task's committed runs, oldest first."""
    with engine.connect() as conn:
        return list(conn.execute(select(RUNS).where(RUNS.c.task_id == task_id).order_by(RUNS.c.id)))


def events(engine: Engine, task_id: int | None = None) -> list[Row[Any]]:
    """Committed events (of one task, or all), in id order."""
    statement = select(EVENTS).order_by(EVENTS.c.id)
    if task_id is not None:
        statement = statement.where(EVENTS.c.task_id == task_id)
    with engine.connect() as conn:
        return list(conn.execute(statement))


def kinds(engine: Engine, task_id: int) -> list[str]:
    return [e.kind for e in events(engine, task_id)]


def db_now(engine: Engine) -> datetime:
    """The database's clock, the one every lease is measured by."""
    with engine.connect() as conn:
        now: datetime = conn.execute(select(utcnow())).scalar_one()
        return now


def claimed(
    session: Session,
    *,
    claimer: str = "worker-1",
    ttl_seconds: float | None = None,
    title: str = "a task",
    **create: Any,
) -> tuple[int, str]:
    """A new task, claimed; its id and claim_lock."""
    task_id = kb.create_task(session, title=title, **create)
    task = kb.claim_task(session, task_id, claimer=claimer, ttl_seconds=ttl_seconds)
    assert task is not None and task.claim_lock is not None
    return task_id, task.claim_lock


def task_in(session: Session, status: str) -> tuple[int, str | None]:
    """A task in ``status`` reached through the public API; its claim_lock if running."""
    if status == "triage":
        return kb.create_task(session, title="needs triage", triage=True), None
    if status == "todo":
        parent = kb.create_task(session, title="parent")
        return kb.create_task(session, title="child", parents=[parent]), None
    if status == "running":
        return claimed(session)
    task_id = kb.create_task(session, title=f"a {status} task")
    if status == "blocked":
        kb.block_task(session, task_id, reason="parked")
    elif status == "done":
        kb.complete_task(session, task_id, force=True)
    else:
        assert status == "ready", status
    return task_id, None


#: a lease short enough to outlive in a test: claim with it, then outlive_short_leases().
SHORT_TTL = 0.2


def outlive_short_leases() -> None:
    """Wait until leases claimed with SHORT_TTL have expired by the database clock."""
    time.sleep(0.5)


# -- create_task ------------------------------------------------------------------------


def test_create_task_returns_an_int_id_of_a_ready_task_with_a_created_event(
    session: Session, engine: Engine
) -> None:
    task_id = kb.create_task(session, title="write the report")

    assert type(task_id) is int
    row = task_row(engine, task_id)
    assert (row.title, row.status, row.priority, row.attempts) == (
        "write the report",
        "ready",
        0,
        0,
    )
    assert row.claim_lock is None and row.current_run_id is None and row.claim_expires is None
    assert row.created_at is not None and row.started_at is None and row.completed_at is None
    assert runs(engine, task_id) == []
    (created,) = events(engine, task_id)
    assert (created.kind, created.run_id) == ("created", None)
    assert created.payload["title"] == "write the report"
    assert created.payload["status"] == "ready"
    assert created.payload["parents"] == []


def test_create_task_ids_are_distinct_and_increasing(session: Session) -> None:
    ids = [kb.create_task(session, title=f"task {i}") for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5


VERBATIM_TEXTS = {
    "quotes": 'O\'Brien said "hi" and `ran` \\ away',
    "drop_table": "'; DROP TABLE kanban_tasks; --",
    "delete_events": "x'); DELETE FROM kanban_task_events; --",
    "placeholders": "%s %(title)s ? :title $1 {}",
    "unicode_emoji": "naïve café 日本語 🎉👩‍👩‍👧 Ω",
    "whitespace": "  padded\ttabs\r\nand newlines  ",
}


@pytest.mark.parametrize("text", VERBATIM_TEXTS.values(), ids=VERBATIM_TEXTS)
def test_create_task_stores_text_verbatim(session: Session, engine: Engine, text: str) -> None:
    task_id = kb.create_task(
        session, title=text, body=text, assignee=text, tenant=text, created_by=text
    )

    row = task_row(engine, task_id)
    assert (row.title, row.body, row.assignee, row.tenant, row.created_by) == (text,) * 5
    assert kb.get_task(session, task_id).title == text
    assert events(engine, task_id)[0].payload["title"] == text
    assert task_ids(engine) == [task_id]  # the tables are all still there


@pytest.mark.parametrize("char", ["x", "é", "🎉"], ids=["ascii", "accented", "emoji"])
def test_a_title_of_exactly_500_characters_is_accepted(
    session: Session, engine: Engine, char: str
) -> None:
    title = char * 500
    task_id = kb.create_task(session, title=title)
    assert task_row(engine, task_id).title == title


def test_create_task_with_triage_starts_in_triage_and_is_not_claimable(
    session: Session, engine: Engine
) -> None:
    task_id = kb.create_task(session, title="look at me first", triage=True)

    assert task_row(engine, task_id).status == "triage"
    assert events(engine, task_id)[0].payload["status"] == "triage"
    assert kb.claim_next(session, claimer="w") is None


def test_a_child_of_an_unfinished_parent_starts_todo_of_a_finished_one_ready(
    session: Session, engine: Engine
) -> None:
    parent = kb.create_task(session, title="parent")
    waiting = kb.create_task(session, title="waiting child", parents=[parent])
    assert task_row(engine, waiting).status == "todo"
    kb.complete_task(session, parent, force=True)
    free = kb.create_task(session, title="free child", parents=[parent])

    assert task_row(engine, free).status == "ready"
    assert kinds(engine, free) == ["created"]  # ready at birth, not promoted
    with engine.connect() as conn:
        edges = conn.execute(select(LINKS.c.parent_id, LINKS.c.child_id).order_by("child_id"))
        assert [tuple(e) for e in edges] == [(parent, waiting), (parent, free)]
    assert events(engine, waiting)[0].payload["parents"] == [parent]


def test_a_child_is_todo_while_any_of_its_parents_is_unfinished(
    session: Session, engine: Engine
) -> None:
    done = kb.create_task(session, title="done parent")
    kb.complete_task(session, done, force=True)
    open_parent = kb.create_task(session, title="open parent")

    child = kb.create_task(session, title="child", parents=[done, open_parent, done])

    assert task_row(engine, child).status == "todo"
    with engine.connect() as conn:
        parents = conn.scalars(select(LINKS.c.parent_id).where(LINKS.c.child_id == child))
        assert sorted(parents) == sorted([done, open_parent])  # the duplicate is one edge


def test_triage_wins_over_parents(session: Session, engine: Engine) -> None:
    parent = kb.create_task(session, title="parent")
    child = kb.create_task(session, title="child", parents=[parent], triage=True)
    assert task_row(engine, child).status == "triage"


def test_idempotency_key_returns_the_same_task_and_writes_nothing(
    session: Session, engine: Engine
) -> None:
    first = kb.create_task(session, title="once", idempotency_key="order-42", tenant="acme")
    before = snapshot(session)

    again = kb.create_task(session, title="once", idempotency_key="order-42", tenant="acme")

    assert again == first
    assert snapshot(session) == before


def test_idempotency_key_is_scoped_by_tenant(session: Session, engine: Engine) -> None:
    acme = kb.create_task(session, title="t", idempotency_key="k", tenant="acme")
    other = kb.create_task(session, title="t", idempotency_key="k", tenant="globex")
    no_tenant = kb.create_task(session, title="t", idempotency_key="k")
    other_key = kb.create_task(session, title="t", idempotency_key="k2", tenant="acme")

    assert len({acme, other, no_tenant, other_key}) == 4
    assert kb.create_task(session, title="t", idempotency_key="k") == no_tenant
    assert kb.create_task(session, title="t", idempotency_key="k", tenant="globex") == other
    assert len(task_ids(engine)) == 4


def test_idempotency_key_held_by_an_archived_task_is_free_again(
    session: Session, engine: Engine
) -> None:
    old = kb.create_task(session, title="t", idempotency_key="k")
    kb.archive_task(session, old)
    new = kb.create_task(session, title="t", idempotency_key="k")
    assert new != old
    assert kb.create_task(session, title="t", idempotency_key="k") == new


def test_create_task_stores_every_optional_field(session: Session, engine: Engine) -> None:
    run_at = datetime(2031, 5, 6, 7, 8, 9, 123456)
    task_id = kb.create_task(
        session,
        title="t",
        body="the body",
        priority=-7,
        assignee="alice",
        tenant="acme",
        max_attempts=5,
        run_at=run_at,
        created_by="bob",
    )

    row = task_row(engine, task_id)
    assert (row.body, row.priority, row.assignee, row.tenant) == ("the body", -7, "alice", "acme")
    assert (row.max_attempts, row.run_at, row.created_by) == (5, run_at, "bob")
    payload = events(engine, task_id)[0].payload
    assert (payload["priority"], payload["assignee"], payload["tenant"]) == (-7, "alice", "acme")


def test_an_aware_run_at_is_stored_as_naive_utc(session: Session, engine: Engine) -> None:
    plus_five = timezone(timedelta(hours=5))
    task_id = kb.create_task(session, title="t", run_at=datetime(2031, 1, 1, 12, tzinfo=plus_five))
    assert task_row(engine, task_id).run_at == datetime(2031, 1, 1, 7)


# -- claim_task -------------------------------------------------------------------------


def test_claim_task_returns_the_running_task_with_a_token_and_its_one_open_run(
    session: Session, engine: Engine
) -> None:
    task_id = kb.create_task(session, title="t")
    before = task_row(engine, task_id)

    task = kb.claim_task(session, task_id, claimer="worker-1", ttl_seconds=60)

    assert task is not None
    assert (task.id, task.status, task.attempts) == (task_id, "running", 1)
    assert task.claim_lock is not None and TOKEN.fullmatch(task.claim_lock)
    (run,) = runs(engine, task_id)
    assert task.current_run_id == run.id
    assert (run.outcome, run.ended_at, run.claimer, run.attempt) == (None, None, "worker-1", 1)
    assert run.claim_lock == task.claim_lock and run.started_at is not None
    row = task_row(engine, task_id)
    assert (row.status, row.claim_lock, row.current_run_id) == ("running", task.claim_lock, run.id)
    assert row.version > before.version and row.started_at is not None
    assert timedelta(seconds=50) < row.claim_expires - db_now(engine) <= timedelta(seconds=60)
    assert task.claim_expires == row.claim_expires
    claim_events = [e for e in events(engine, task_id) if e.kind == "claimed"]
    assert len(claim_events) == 1
    assert claim_events[0].run_id == run.id
    assert claim_events[0].payload["claimer"] == "worker-1"


def test_a_second_claim_returns_none_and_writes_nothing(session: Session) -> None:
    task_id, _ = claimed(session)
    before = snapshot(session)

    assert kb.claim_task(session, task_id, claimer="worker-2") is None
    assert kb.claim_task(session, task_id, claimer="worker-1") is None
    assert snapshot(session) == before


@pytest.mark.parametrize("status", ["triage", "todo", "blocked", "done"])
def test_a_task_that_is_not_ready_is_not_claimable(session: Session, status: str) -> None:
    task_id, _ = task_in(session, status)
    before = snapshot(session)

    assert kb.claim_task(session, task_id, claimer="w") is None
    assert snapshot(session) == before


def test_each_claim_gets_a_new_token_and_the_old_one_is_dead(
    session: Session, engine: Engine
) -> None:
    task_id, first = claimed(session, claimer="same-worker")
    kb.release_task(session, task_id, claim_lock=first)
    again = kb.claim_task(session, task_id, claimer="same-worker")

    assert again is not None and again.claim_lock is not None
    assert TOKEN.fullmatch(again.claim_lock) and again.claim_lock != first
    with pytest.raises(kb.ClaimLost):
        kb.complete_task(session, task_id, claim_lock=first)
    with pytest.raises(kb.ClaimLost):
        kb.heartbeat(session, task_id, claim_lock=first)
    assert [r.claim_lock for r in runs(engine, task_id)] == [first, again.claim_lock]
    assert kb.complete_task(session, task_id, claim_lock=again.claim_lock).status == "done"


def test_tokens_are_unique_across_many_claims(session: Session) -> None:
    tokens = {claimed(session, claimer="w")[1] for _ in range(20)}
    assert len(tokens) == 20


def test_a_task_due_in_the_future_is_not_claimable_one_due_in_the_past_is(
    session: Session,
) -> None:
    now = datetime.now(UTC)
    later = kb.create_task(session, title="later", run_at=now + timedelta(hours=1))
    earlier = kb.create_task(session, title="earlier", run_at=now - timedelta(seconds=5))

    assert kb.claim_task(session, later, claimer="w") is None
    assert kb.claim_next(session, claimer="w").id == earlier
    assert kb.claim_next(session, claimer="w") is None


def test_a_ready_task_with_an_unfinished_parent_is_not_claimable(
    session: Session, engine: Engine
) -> None:
    parent = kb.create_task(session, title="parent")
    child = kb.create_task(session, title="child")  # ready: no parent yet
    # An edge written behind the library's back (link_tasks would also move the child to
    # todo): the claim's own guard must still hold the child back.
    with engine.begin() as conn:
        conn.execute(insert(LINKS).values(parent_id=parent, child_id=child))

    assert kb.claim_task(session, child, claimer="w") is None
    assert [t.id for t in kb.claim_many(session, claimer="w", limit=5)] == [parent]
    assert kb.claim_task(session, child, claimer="w") is None
    parent_token = task_row(engine, parent).claim_lock
    kb.complete_task(session, parent, claim_lock=parent_token)
    assert kb.claim_task(session, child, claimer="w") is not None


def test_the_claim_ttl_defaults_to_the_configured_one(
    session: Session, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(config.ENV_CLAIM_TTL, "120")
    task_id, _ = claimed(session)
    left = task_row(engine, task_id).claim_expires - db_now(engine)
    assert timedelta(seconds=110) < left <= timedelta(seconds=120)


@pytest.mark.parametrize("value", ["0", "-5", "inf", "nan", "1e12", "ten"])
def test_a_configured_claim_ttl_out_of_range_is_refused_and_nothing_is_claimed(
    session: Session, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # On SQLite, a lease of infinite or 1e12 seconds would never expire (NULL expiry).
    task_id = kb.create_task(session, title="t")
    before = snapshot(session)
    monkeypatch.setenv(config.ENV_CLAIM_TTL, value)

    with pytest.raises(ValueError, match=config.ENV_CLAIM_TTL):
        kb.claim_task(session, task_id, claimer="w")
    with pytest.raises(ValueError, match=config.ENV_CLAIM_TTL):
        kb.claim_next(session, claimer="w")

    assert snapshot(session) == before


@pytest.mark.parametrize("value", ["0", "0.5", "2.0", "-1", "3000000000", "three"])
def test_a_configured_max_attempts_that_is_not_a_whole_count_is_refused(
    session: Session, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    task_id, token = claimed(session)
    before = snapshot(session)
    monkeypatch.setenv(config.ENV_MAX_ATTEMPTS, value)

    with pytest.raises(ValueError, match=config.ENV_MAX_ATTEMPTS):
        kb.fail_task(session, task_id, claim_lock=token, error="boom")

    assert snapshot(session) == before


# -- claim_next / claim_many ------------------------------------------------------------


def test_claim_next_takes_the_highest_priority_then_the_oldest(session: Session) -> None:
    low = kb.create_task(session, title="low", priority=0)
    high_a = kb.create_task(session, title="high a", priority=5)
    negative = kb.create_task(session, title="negative", priority=-3)
    high_b = kb.create_task(session, title="high b", priority=5)
    mid = kb.create_task(session, title="mid", priority=1)

    order = []
    while (task := kb.claim_next(session, claimer="w")) is not None:
        order.append(task.id)
        assert task.status == "running"
    assert order == [high_a, high_b, mid, low, negative]


def test_claim_many_claims_exactly_limit_tasks_best_first(session: Session, engine: Engine) -> None:
    ids = [kb.create_task(session, title=f"t{i}", priority=i % 2) for i in range(5)]
    # priorities 0,1,0,1,0: best first is ids[1], ids[3], then ids[0], ids[2], ids[4]

    first = kb.claim_many(session, claimer="w", limit=3)

    assert [t.id for t in first] == [ids[1], ids[3], ids[0]]
    assert [task_row(engine, i).status for i in ids] == [
        "running",
        "running",
        "ready",
        "running",
        "ready",
    ]
    tokens = {t.claim_lock for t in first}
    assert len(tokens) == 3 and all(TOKEN.fullmatch(str(t)) for t in tokens)
    for task in first:
        (run,) = runs(engine, task.id)
        assert task.current_run_id == run.id and run.claim_lock == task.claim_lock
        assert run.outcome is None and run.claimer == "w"
        assert kinds(engine, task.id) == ["created", "claimed"]
        assert events(engine, task.id)[1].run_id == run.id

    rest = kb.claim_many(session, claimer="w", limit=10)
    assert [t.id for t in rest] == [ids[2], ids[4]]
    assert kb.claim_many(session, claimer="w", limit=10) == []


@pytest.mark.parametrize("limit", [1, 3], ids=["one task", "a batch"])
def test_a_claim_of_one_task_or_of_a_batch_writes_the_same_runs_and_events(
    session: Session, engine: Engine, limit: int
) -> None:
    # SQLite writes a claim of one task with statements of its own (see service._claim).
    for i in range(limit):
        kb.create_task(session, title=f"t{i}")
    for task in kb.claim_many(session, claimer="first", limit=limit):
        kb.release_task(session, task.id, claim_lock=str(task.claim_lock))

    again = kb.claim_many(session, claimer="second", limit=limit)

    assert len(again) == limit
    for task in again:
        first_run, run = runs(engine, task.id)
        assert run.id == task.current_run_id and run.id > first_run.id
        # A released attempt does not count: this is attempt 1 again.
        assert (run.task_id, run.attempt, run.claimer, run.claim_lock) == (
            task.id,
            task.attempts,
            "second",
            task.claim_lock,
        )
        assert run.started_at is not None and run.last_heartbeat_at is not None
        assert run.ended_at is None
        claimed = [e for e in events(engine, task.id) if e.kind == "claimed"]
        assert [(e.run_id, e.payload) for e in claimed] == [
            (first_run.id, {"claimer": "first", "attempt": 1}),
            (run.id, {"claimer": "second", "attempt": task.attempts}),
        ]


def test_claim_next_and_claim_many_filter_by_assignee_and_tenant(session: Session) -> None:
    def make(assignee: str | None, tenant: str | None) -> int:
        return kb.create_task(session, title="t", assignee=assignee, tenant=tenant)

    a_x = make("alice", "x")
    b_x = make("bob", "x")
    a_y = make("alice", "y")
    none = make(None, None)

    assert kb.claim_next(session, claimer="w", assignee="alice", tenant="y").id == a_y
    assert [t.id for t in kb.claim_many(session, claimer="w", limit=9, tenant="x")] == [a_x, b_x]
    assert kb.claim_next(session, claimer="w", assignee="alice") is None
    assert kb.claim_many(session, claimer="w", limit=9, tenant="y") == []
    assert [t.id for t in kb.claim_many(session, claimer="w", limit=9)] == [none]


def test_claims_on_an_empty_board_return_nothing_and_write_nothing(session: Session) -> None:
    before = snapshot(session)
    assert kb.claim_next(session, claimer="w") is None
    assert kb.claim_many(session, claimer="w", limit=5) == []
    assert snapshot(session) == before


def test_claim_many_skips_what_is_not_claimable(session: Session) -> None:
    task_in(session, "triage")
    task_in(session, "todo")  # its parent is the one claimable task
    task_in(session, "blocked")
    task_in(session, "done")
    task_in(session, "running")
    kb.create_task(session, title="later", run_at=datetime.now(UTC) + timedelta(hours=1))

    claimed_now = kb.claim_many(session, claimer="w", limit=10)
    assert [t.title for t in claimed_now] == ["parent"]


# -- heartbeat --------------------------------------------------------------------------


def test_heartbeat_extends_the_lease_touches_the_run_and_bumps_version(
    session: Session, engine: Engine
) -> None:
    task_id, token = claimed(session, ttl_seconds=60)
    before, (run_before,) = task_row(engine, task_id), runs(engine, task_id)
    time.sleep(0.02)

    expires = kb.heartbeat(session, task_id, claim_lock=token, ttl_seconds=3600)

    after, (run_after,) = task_row(engine, task_id), runs(engine, task_id)
    assert expires == after.claim_expires  # the new lease expiry, not True
    assert after.claim_expires - before.claim_expires > timedelta(seconds=3500)
    assert timedelta(seconds=3590) < after.claim_expires - db_now(engine) <= timedelta(hours=1)
    assert after.version == before.version + 1
    assert run_after.last_heartbeat_at > run_before.last_heartbeat_at
    assert (after.status, after.claim_lock, after.current_run_id) == (
        "running",
        token,
        before.current_run_id,
    )
    assert run_after.outcome is None and run_after.ended_at is None

    expires = kb.heartbeat(session, task_id, claim_lock=token, ttl_seconds=60)
    shortened = task_row(engine, task_id)
    assert expires == shortened.claim_expires
    assert shortened.claim_expires - db_now(engine) <= timedelta(seconds=60)
    assert shortened.version == after.version + 1


def test_heartbeat_with_a_stale_token_raises_claim_lost(session: Session) -> None:
    task_id, old = claimed(session)
    kb.release_task(session, task_id, claim_lock=old)
    assert kb.claim_task(session, task_id, claimer="worker-2") is not None
    before = snapshot(session)

    with pytest.raises(kb.ClaimLost):
        kb.heartbeat(session, task_id, claim_lock=old, ttl_seconds=60)
    assert snapshot(session) == before


# -- complete_task ----------------------------------------------------------------------


def test_complete_task_with_its_claim_lock_finishes_the_task_and_closes_the_run(
    session: Session, engine: Engine
) -> None:
    task_id, token = claimed(session)
    before = task_row(engine, task_id)
    metadata = {"tokens": 1234, "model": "m-1", "nested": {"ok": True, "list": [1, "two"]}}

    task = kb.complete_task(
        session, task_id, claim_lock=token, result="the answer", summary="did it", metadata=metadata
    )

    assert (task.id, task.status, task.result) == (task_id, "done", "the answer")
    assert task.claim_lock is None and task.current_run_id is None and task.claim_expires is None
    row = task_row(engine, task_id)
    assert (row.status, row.result, row.claim_lock, row.current_run_id, row.claim_expires) == (
        "done",
        "the answer",
        None,
        None,
        None,
    )
    assert row.completed_at is not None and row.version > before.version
    (run,) = runs(engine, task_id)
    assert (run.outcome, run.summary, run.metadata, run.error) == (
        "completed",
        "did it",
        metadata,
        None,
    )
    assert run.ended_at is not None and run.ended_at >= run.started_at
    assert kinds(engine, task_id) == ["created", "claimed", "completed"]
    completed = events(engine, task_id)[-1]
    assert completed.run_id == run.id and completed.payload["forced"] is False


def test_force_completes_a_ready_task_without_a_run(session: Session, engine: Engine) -> None:
    task_id = kb.create_task(session, title="t")

    task = kb.complete_task(session, task_id, force=True, result="by hand")

    assert (task.status, task.result) == ("done", "by hand")
    assert task_row(engine, task_id).completed_at is not None
    assert runs(engine, task_id) == []
    completed = events(engine, task_id)[-1]
    assert (completed.kind, completed.run_id, completed.payload["forced"]) == (
        "completed",
        None,
        True,
    )


def test_force_completes_a_running_task_and_closes_its_run(
    session: Session, engine: Engine
) -> None:
    task_id, token = claimed(session)

    task = kb.complete_task(session, task_id, force=True, summary="overridden")

    assert task.status == "done" and task.claim_lock is None and task.current_run_id is None
    (run,) = runs(engine, task_id)
    assert (run.outcome, run.summary) == ("completed", "overridden")
    assert run.ended_at is not None
    assert events(engine, task_id)[-1].run_id == run.id
    with pytest.raises(kb.ClaimLost):
        kb.heartbeat(session, task_id, claim_lock=token)


@pytest.mark.parametrize("status", ["triage", "todo", "blocked"])
def test_force_completes_from_every_state_that_may_move_to_done(
    session: Session, engine: Engine, status: str
) -> None:
    task_id, _ = task_in(session, status)
    assert kb.complete_task(session, task_id, force=True).status == "done"
    row = task_row(engine, task_id)
    assert row.status == "done" and row.block_reason is None


def test_completing_the_last_unfinished_parent_promotes_the_child(
    session: Session, engine: Engine
) -> None:
    first = kb.create_task(session, title="first parent")
    second = kb.create_task(session, title="second parent")
    both = kb.create_task(session, title="needs both", parents=[first, second])
    only_first = kb.create_task(session, title="needs first", parents=[first])

    token = kb.claim_task(session, first, claimer="w").claim_lock
    kb.complete_task(session, first, claim_lock=token)

    assert task_row(engine, only_first).status == "ready"
    assert task_row(engine, both).status == "todo"
    assert "promoted" not in kinds(engine, both)
    promoted = events(engine, only_first)[-1]
    assert (promoted.kind, promoted.payload["parent_id"]) == ("promoted", first)

    kb.complete_task(session, second, force=True)

    assert task_row(engine, both).status == "ready"
    assert kinds(engine, both) == ["created", "promoted"]
    assert events(engine, both)[-1].payload["parent_id"] == second
    assert kb.claim_task(session, both, claimer="w") is not None


def test_completing_a_parent_leaves_a_blocked_child_blocked(
    session: Session, engine: Engine
) -> None:
    parent = kb.create_task(session, title="parent")
    child = kb.create_task(session, title="child", parents=[parent])
    kb.block_task(session, child, reason="parked by hand")

    kb.complete_task(session, parent, force=True)

    assert task_row(engine, child).status == "blocked"
    assert kinds(engine, child) == ["created", "blocked"]


# -- fail_task --------------------------------------------------------------------------


def test_fail_with_attempts_left_makes_the_task_ready_after_a_backoff(
    session: Session, engine: Engine
) -> None:
    task_id, token = claimed(session, max_attempts=3)

    task = kb.fail_task(session, task_id, claim_lock=token, error="boom: it's broken")

    assert (task.status, task.attempts, task.claim_lock, task.current_run_id) == (
        "ready",
        1,
        None,
        None,
    )
    (run,) = runs(engine, task_id)
    assert (run.outcome, run.error) == ("failed", "boom: it's broken")
    assert run.ended_at is not None
    row = task_row(engine, task_id)
    assert row.block_reason is None and row.claim_expires is None
    base = config.RETRY_BACKOFF_BASE_SECONDS
    assert timedelta(seconds=base * 0.5 - 0.1) <= row.run_at - run.ended_at
    assert row.run_at - run.ended_at <= timedelta(seconds=base + 0.1)
    assert kinds(engine, task_id) == ["created", "claimed", "failed"]
    failed = events(engine, task_id)[-1]
    assert failed.run_id == run.id
    assert failed.payload["error"] == "boom: it's broken"
    assert failed.payload["gave_up"] is False
    assert kb.claim_task(session, task_id, claimer="w") is None  # not due yet


def test_fail_on_the_last_attempt_blocks_the_task_saying_it_gave_up(
    session: Session, engine: Engine
) -> None:
    task_id, token = claimed(session, max_attempts=1)

    task = kb.fail_task(session, task_id, claim_lock=token, error="disk full")

    assert task.status == "blocked" and task.claim_lock is None
    row = task_row(engine, task_id)
    assert row.status == "blocked"
    assert "gave up" in row.block_reason and "disk full" in row.block_reason
    (run,) = runs(engine, task_id)
    assert (run.outcome, run.error) == ("failed", "disk full")
    failed = [e for e in events(engine, task_id) if e.kind == "failed"]
    assert len(failed) == 1 and failed[0].payload["gave_up"] is True


def test_fail_after_max_attempts_2_blocks_on_the_second_attempt(
    session: Session, engine: Engine
) -> None:
    task_id, _ = claimed(session, max_attempts=2, ttl_seconds=SHORT_TTL)
    outlive_short_leases()
    assert kb.release_stale_claims(session) == 1  # attempt 1 used up by the lease
    assert task_row(engine, task_id).status == "ready"
    second = kb.claim_task(session, task_id, claimer="w")
    assert second is not None and second.attempts == 2

    task = kb.fail_task(session, task_id, claim_lock=str(second.claim_lock), error="again")

    assert task.status == "blocked"
    assert "gave up after 2 attempts" in str(task_row(engine, task_id).block_reason)
    assert [r.outcome for r in runs(engine, task_id)] == ["reclaimed", "failed"]
    assert kinds(engine, task_id).count("failed") == 1


def test_fail_uses_the_configured_max_attempts_when_the_task_has_none(
    session: Session, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(config.ENV_MAX_ATTEMPTS, "1")
    task_id, token = claimed(session)
    assert kb.fail_task(session, task_id, claim_lock=token, error="x").status == "blocked"


def test_fail_without_retry_blocks_with_the_error_as_reason(
    session: Session, engine: Engine
) -> None:
    task_id, token = claimed(session, max_attempts=10)

    task = kb.fail_task(session, task_id, claim_lock=token, error="bad input", retry=False)

    assert task.status == "blocked"
    assert task_row(engine, task_id).block_reason == "bad input"
    assert [r.outcome for r in runs(engine, task_id)] == ["failed"]
    assert kinds(engine, task_id) == ["created", "claimed", "failed"]


# -- release_task -----------------------------------------------------------------------


def test_release_hands_the_task_back_without_counting_the_attempt(
    session: Session, engine: Engine
) -> None:
    task_id, token = claimed(session)
    assert task_row(engine, task_id).attempts == 1

    task = kb.release_task(session, task_id, claim_lock=token, reason="shutting down")

    assert (task.status, task.attempts, task.claim_lock, task.current_run_id) == (
        "ready",
        0,
        None,
        None,
    )
    (run,) = runs(engine, task_id)
    assert (run.outcome, run.summary, run.error) == ("released", "shutting down", None)
    assert run.ended_at is not None
    assert kinds(engine, task_id) == ["created", "claimed", "released"]
    released = events(engine, task_id)[-1]
    assert released.run_id == run.id and released.payload["reason"] == "shutting down"
    again = kb.claim_task(session, task_id, claimer="w")  # claimable at once
    assert again is not None and again.attempts == 1


# -- block_task / unblock_task ----------------------------------------------------------


def test_block_by_the_claim_holder_closes_the_run_as_blocked(
    session: Session, engine: Engine
) -> None:
    task_id, token = claimed(session)

    task = kb.block_task(session, task_id, reason="needs a human", claim_lock=token)

    assert (task.status, task.block_reason, task.claim_lock, task.current_run_id) == (
        "blocked",
        "needs a human",
        None,
        None,
    )
    (run,) = runs(engine, task_id)
    assert (run.outcome, run.error) == ("blocked", "needs a human")
    assert run.ended_at is not None
    assert kinds(engine, task_id) == ["created", "claimed", "blocked"]
    assert events(engine, task_id)[-1].run_id == run.id


def test_block_of_a_running_task_without_its_claim_lock_raises_claim_lost(
    session: Session,
) -> None:
    task_id, _ = claimed(session)
    before = snapshot(session)
    with pytest.raises(kb.ClaimLost):
        kb.block_task(session, task_id, reason="not mine")
    assert snapshot(session) == before


@pytest.mark.parametrize("status", ["ready", "todo", "triage"])
def test_block_a_task_that_is_not_running_needs_no_claim_lock(
    session: Session, engine: Engine, status: str
) -> None:
    task_id, _ = task_in(session, status)

    task = kb.block_task(session, task_id, reason="wait for legal")

    assert (task.status, task.block_reason) == ("blocked", "wait for legal")
    assert runs(engine, task_id) == []
    blocked = events(engine, task_id)[-1]
    assert (blocked.kind, blocked.run_id, blocked.payload["reason"]) == (
        "blocked",
        None,
        "wait for legal",
    )
    assert kb.claim_task(session, task_id, claimer="w") is None


def test_unblock_makes_the_task_ready_and_clears_the_reason(
    session: Session, engine: Engine
) -> None:
    task_id, _ = task_in(session, "blocked")

    task = kb.unblock_task(session, task_id)

    assert (task.status, task.block_reason) == ("ready", None)
    assert task_row(engine, task_id).status == "ready"
    unblocked = events(engine, task_id)[-1]
    assert (unblocked.kind, unblocked.payload["status"]) == ("unblocked", "ready")
    assert kb.claim_task(session, task_id, claimer="w") is not None


def test_unblock_returns_a_child_to_todo_while_a_parent_is_unfinished(
    session: Session, engine: Engine
) -> None:
    parent = kb.create_task(session, title="parent")
    child = kb.create_task(session, title="child", parents=[parent])
    kb.block_task(session, child, reason="parked")

    assert kb.unblock_task(session, child).status == "todo"
    assert events(engine, child)[-1].payload["status"] == "todo"

    kb.block_task(session, child, reason="parked again")
    kb.complete_task(session, parent, force=True)
    assert kb.unblock_task(session, child).status == "ready"


def test_a_blocked_failed_task_can_be_unblocked_and_claimed_again(
    session: Session, engine: Engine
) -> None:
    task_id, token = claimed(session, max_attempts=1)
    kb.fail_task(session, task_id, claim_lock=token, error="x")

    kb.unblock_task(session, task_id)

    assert kb.claim_task(session, task_id, claimer="w") is not None
    assert [r.attempt for r in runs(engine, task_id)] == [1, 2]


# -- release_stale_claims ---------------------------------------------------------------


def test_an_expired_lease_is_reclaimed_and_its_token_is_dead(
    session: Session, engine: Engine
) -> None:
    task_id, token = claimed(session, ttl_seconds=SHORT_TTL)
    outlive_short_leases()

    assert kb.release_stale_claims(session) == 1

    row = task_row(engine, task_id)
    assert (row.status, row.claim_lock, row.current_run_id, row.claim_expires) == (
        "ready",
        None,
        None,
        None,
    )
    assert row.attempts == 1  # a reclaimed attempt counts
    (run,) = runs(engine, task_id)
    assert run.outcome == "reclaimed" and run.ended_at is not None
    assert kinds(engine, task_id) == ["created", "claimed", "reclaimed"]
    reclaimed = events(engine, task_id)[-1]
    assert reclaimed.run_id == run.id and reclaimed.payload["gave_up"] is False
    for call in (kb.complete_task, kb.heartbeat, kb.release_task):
        with pytest.raises(kb.ClaimLost):
            call(session, task_id, claim_lock=token)
    assert kb.release_stale_claims(session) == 0


def test_an_unexpired_lease_is_left_alone(session: Session) -> None:
    claimed(session, ttl_seconds=60)
    claimed(session)  # the default TTL
    before = snapshot(session)

    assert kb.release_stale_claims(session) == 0
    assert snapshot(session) == before


def test_release_stale_claims_reclaims_only_the_expired_ones(
    session: Session, engine: Engine
) -> None:
    short_a, _ = claimed(session, ttl_seconds=SHORT_TTL)
    long_lived, token = claimed(session, ttl_seconds=60)
    short_b, _ = claimed(session, ttl_seconds=SHORT_TTL)
    outlive_short_leases()

    assert kb.release_stale_claims(session) == 2

    assert [task_row(engine, t).status for t in (short_a, long_lived, short_b)] == [
        "ready",
        "running",
        "ready",
    ]
    assert task_row(engine, long_lived).claim_lock == token


def test_a_reclaimed_task_out_of_attempts_is_blocked(session: Session, engine: Engine) -> None:
    task_id, _ = claimed(session, ttl_seconds=SHORT_TTL, max_attempts=1)
    outlive_short_leases()

    assert kb.release_stale_claims(session) == 1

    row = task_row(engine, task_id)
    assert row.status == "blocked" and row.claim_lock is None
    assert "gave up" in row.block_reason
    assert [r.outcome for r in runs(engine, task_id)] == ["reclaimed"]
    assert events(engine, task_id)[-1].payload["gave_up"] is True


def test_claim_next_takes_over_an_expired_lease(session: Session, engine: Engine) -> None:
    task_id, old = claimed(session, ttl_seconds=SHORT_TTL, claimer="slow")
    outlive_short_leases()

    task = kb.claim_next(session, claimer="fast")

    assert task is not None and task.id == task_id
    assert task.claim_lock != old and task.attempts == 2
    first, second = runs(engine, task_id)
    assert (first.outcome, first.claimer) == ("reclaimed", "slow")
    assert (second.outcome, second.claimer, second.attempt) == (None, "fast", 2)
    assert task.current_run_id == second.id
    assert kinds(engine, task_id) == ["created", "claimed", "reclaimed", "claimed"]
    with pytest.raises(kb.ClaimLost):
        kb.complete_task(session, task_id, claim_lock=old)
    assert kb.complete_task(session, task_id, claim_lock=str(task.claim_lock)).status == "done"


@pytest.mark.parametrize("field", ["tenant", "assignee"])
def test_a_filtered_claim_next_takes_over_its_own_expired_lease(
    session: Session, engine: Engine, field: str
) -> None:
    """Regression: the takeover used to reclaim the oldest expired leases of the whole
    board, ignoring the filter, so a tenant's claim wrote to another tenant's task."""
    other, _ = claimed(session, ttl_seconds=SHORT_TTL, claimer="wb", **{field: "b"})
    mine, _ = claimed(session, ttl_seconds=SHORT_TTL * 1.5, claimer="wa", **{field: "a"})
    outlive_short_leases()  # both expired; the other one first
    others_row = task_row(engine, other)

    task = kb.claim_next(session, claimer="wa2", **{field: "a"})

    assert task is not None and task.id == mine
    assert task_row(engine, other) == others_row  # the other's task was not touched


# -- reads ------------------------------------------------------------------------------


def test_get_task_refreshes_the_copy_the_session_holds(session: Session, db_url: str) -> None:
    task_id, token = claimed(session)
    held = kb.get_task(session, task_id)
    assert held.status == "running"
    session.commit()  # ends the read; the session keeps (does not expire) its copy

    with kb.connect(db_url) as other:
        kb.complete_task(other, task_id, claim_lock=token, result="elsewhere")

    fresh = kb.get_task(session, task_id)
    assert fresh is held
    assert (fresh.status, fresh.result, fresh.claim_lock) == ("done", "elsewhere", None)


def test_a_read_does_not_pin_the_session_to_an_old_snapshot(session: Session, db_url: str) -> None:
    """Regression: on SQLite a read used to leave the session's deferred transaction open,
    so later reads saw the first one's snapshot and a polling loop never saw the commit."""
    task_id, token = claimed(session)
    assert kb.get_task(session, task_id).status == "running"  # a poll, as a monitor would

    with kb.connect(db_url) as other:
        kb.complete_task(other, task_id, claim_lock=token)

    assert kb.get_task(session, task_id).status == "done"  # the next poll
    assert [t.id for t in kb.list_tasks(session, status="done")] == [task_id]


def test_claim_task_returns_fresh_state_even_when_the_session_holds_the_task(
    session: Session,
) -> None:
    task_id = kb.create_task(session, title="t")
    held = kb.get_task(session, task_id)
    assert held.status == "ready"

    task = kb.claim_task(session, task_id, claimer="w")

    assert task is held and task.status == "running" and task.claim_lock is not None


def test_latest_run_is_none_before_any_claim_then_the_newest_run(
    session: Session, db_url: str
) -> None:
    task_id = kb.create_task(session, title="t")
    assert kb.latest_run(session, task_id) is None
    assert kb.list_runs(session, task_id=task_id) == []

    first = kb.claim_task(session, task_id, claimer="a")
    kb.release_task(session, task_id, claim_lock=str(first.claim_lock))
    second = kb.claim_task(session, task_id, claimer="b")
    assert second is not None

    with kb.connect(db_url) as reader:  # a fresh session: nothing cached
        latest = kb.latest_run(reader, task_id)
        assert latest is not None
        assert (latest.id, latest.claimer, latest.outcome) == (second.current_run_id, "b", None)
        listed = kb.list_runs(reader, task_id=task_id)
        assert [(r.claimer, r.outcome) for r in listed] == [("a", "released"), ("b", None)]
        assert listed[0].id < listed[1].id


def test_list_tasks_filters_by_status_assignee_tenant_and_limit(
    session: Session, engine: Engine
) -> None:
    a = kb.create_task(session, title="a", assignee="alice", tenant="x")
    b = kb.create_task(session, title="b", assignee="bob", tenant="x")
    c = kb.create_task(session, title="c", assignee="alice", tenant="y")
    d, _ = task_in(session, "blocked")
    kb.claim_task(session, b, claimer="w")

    def ids(**filters: Any) -> list[int]:
        return [t.id for t in kb.list_tasks(session, **filters)]

    assert ids() == [a, b, c, d]
    assert ids(status="ready") == [a, c]
    assert ids(status=kb.Status.RUNNING) == [b]
    assert ids(status="blocked") == [d]
    assert ids(status="done") == []
    assert ids(assignee="alice") == [a, c]
    assert ids(tenant="x") == [a, b]
    assert ids(assignee="alice", tenant="y", status="ready") == [c]
    assert ids(limit=2) == [a, b]
    assert ids(limit=1, tenant="y") == [c]


def test_list_tasks_hides_archived_tasks_unless_asked(session: Session, engine: Engine) -> None:
    kept = kb.create_task(session, title="kept")
    gone = kb.create_task(session, title="gone")
    kb.archive_task(session, gone)

    assert [t.id for t in kb.list_tasks(session)] == [kept]
    assert [t.id for t in kb.list_tasks(session, status="archived")] == [gone]


def test_list_events_orders_and_filters(session: Session, engine: Engine) -> None:
    one, token = claimed(session)
    two = kb.create_task(session, title="two")
    kb.complete_task(session, one, claim_lock=token)

    everything = kb.list_events(session)
    assert [(e.task_id, e.kind) for e in everything] == [
        (one, "created"),
        (one, "claimed"),
        (two, "created"),
        (one, "completed"),
    ]
    ids = [e.id for e in everything]
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert [e.id for e in everything] == [e.id for e in events(engine)]

    assert [e.id for e in kb.list_events(session, after_id=ids[1])] == ids[2:]
    assert [e.id for e in kb.list_events(session, limit=2)] == ids[:2]
    assert [e.id for e in kb.list_events(session, after_id=ids[0], limit=2)] == ids[1:3]
    assert [e.kind for e in kb.list_events(session, task_id=one)] == [
        "created",
        "claimed",
        "completed",
    ]
    assert [e.kind for e in kb.list_events(session, task_id=one, after_id=ids[1])] == ["completed"]
    assert [e.id for e in kb.list_events(session, task_id=two)] == [ids[2]]
    assert kb.list_events(session, after_id=ids[-1]) == []


def test_events_of_a_full_life_tell_its_story(session: Session, engine: Engine) -> None:
    task_id, token = claimed(session)
    kb.heartbeat(session, task_id, claim_lock=token)
    kb.release_task(session, task_id, claim_lock=token)
    kb.block_task(session, task_id, reason="wait")
    kb.unblock_task(session, task_id)
    token = str(kb.claim_task(session, task_id, claimer="w").claim_lock)
    kb.fail_task(session, task_id, claim_lock=token, error="e", retry=False)
    kb.complete_task(session, task_id, force=True)

    assert kinds(engine, task_id) == [
        "created",
        "claimed",
        "released",
        "blocked",
        "unblocked",
        "claimed",
        "failed",
        "completed",
    ]
    assert [r.outcome for r in runs(engine, task_id)] == ["released", "failed"]


# -- ORM objects handed out by reads ----------------------------------------------------


def test_latest_run_after_complete_in_the_same_session_shows_the_closed_run(
    session: Session,
) -> None:
    """Regression: latest_run() used to return the session's cached TaskRun unrefreshed."""
    task_id, token = claimed(session)
    open_run = kb.latest_run(session, task_id)
    assert open_run is not None and open_run.outcome is None

    kb.complete_task(session, task_id, claim_lock=token)

    latest = kb.latest_run(session, task_id)
    assert latest is not None
    assert (latest.outcome, latest.ended_at is not None) == ("completed", True)


def test_list_runs_after_a_transition_in_the_same_session_is_fresh(session: Session) -> None:
    """Regression: list_runs() used to return cached TaskRun objects unrefreshed."""
    task_id, token = claimed(session)
    held = kb.list_runs(session, task_id=task_id)

    kb.release_task(session, task_id, claim_lock=token)

    assert [r.outcome for r in kb.list_runs(session, task_id=task_id)] == ["released"]
    assert held  # keeps the cached objects alive, as a caller's variable would


def test_list_tasks_shows_changes_committed_by_another_session(
    session: Session, db_url: str
) -> None:
    """Regression: list_tasks() used to return cached Task objects unrefreshed."""
    task_id, token = claimed(session)
    held = kb.get_task(session, task_id)
    session.commit()  # so that only the identity map could hold a stale copy

    with kb.connect(db_url) as other:
        kb.complete_task(other, task_id, claim_lock=token)

    (done,) = kb.list_tasks(session, status="done")
    assert done is held
    assert (done.status, done.claim_lock) == ("done", None)
