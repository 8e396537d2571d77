"""The maintained counts of the finished statuses (kanban_status_tallies, kb0009).

board_cards and board_stats count a finished status as its tally plus the tasks changed
since the tally's ``through``; triggers move old rows in and out of the tally. Every
test compares with an exact count after each move, on every backend. History is made
"old" by backdating updated_at with plain SQL, as a long-lived board's would be.
"""

from __future__ import annotations

import random
import threading
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import backends
from kanban_orm import queries as q
from kanban_orm.doctor import doctor

from .test_claim_plan import analyze, explain

LONG_AGO = datetime(2020, 1, 1)


def exact_counts(engine: Engine) -> dict[str, int]:
    counts = dict.fromkeys((s.value for s in kb.Status), 0)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(kb.Task.status, sa.func.count()).group_by(kb.Task.status))
        counts.update({status: n for status, n in rows})
    return counts


def sql(engine: Engine, statement: str, **params: object) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def backdate(engine: Engine) -> None:
    sql(engine, "UPDATE kanban_tasks SET updated_at = :at", at=LONG_AGO)


def tallies(engine: Engine) -> dict[str, tuple[int, datetime | None]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(kb.StatusTally.status, kb.StatusTally.tasks,
                                      kb.StatusTally.through))  # fmt: skip
        return {status: (tasks, through) for status, tasks, through in rows}


def assert_counts_exact(session: Session, engine: Engine) -> None:
    expected = exact_counts(engine)
    assert kb.board_cards(session, per_column=1)[1] == expected
    assert kb.board_stats(session)["by_status"] == expected


def finished_history(session: Session, engine: Engine, n: int = 6) -> list[int]:
    """``n`` done and two archived tasks, last changed long ago, tallied."""
    done = [kb.create_task(session, title=f"old {i}") for i in range(n)]
    for task_id in done:
        kb.complete_task(session, task_id, force=True)
    for i in range(2):
        kb.archive_task(session, kb.create_task(session, title=f"archived {i}"), force=True)
    backdate(engine)
    return done


def test_a_never_refreshed_tally_counts_exactly_the_slow_way(
    session: Session, engine: Engine
) -> None:
    finished_history(session, engine)
    assert {s: t for s, (t, through) in tallies(engine).items() if through is None} == {
        "done": 0,
        "archived": 0,
    }
    assert_counts_exact(session, engine)


def test_refresh_counts_the_old_history_and_the_board_adds_what_changed_since(
    session: Session, engine: Engine
) -> None:
    finished_history(session, engine)
    live = kb.create_task(session, title="live")

    assert kb.refresh_counts(session) == {"done": 6, "archived": 2}

    kept = tallies(engine)
    assert kept["done"][0] == 6 and kept["done"][1] is not None
    kb.complete_task(session, live, force=True)  # after `through`: counted, not tallied
    assert tallies(engine)["done"][0] == 6
    assert_counts_exact(session, engine)


def test_moving_old_history_keeps_the_counts_exact(session: Session, engine: Engine) -> None:
    done = finished_history(session, engine)
    kb.refresh_counts(session)

    kb.reopen_task(session, done[0])  # leaves done
    assert_counts_exact(session, engine)
    kb.archive_task(session, done[1], force=True)  # done -> archived
    assert_counts_exact(session, engine)
    kb.reassign_task(session, done[2], assignee="someone")  # stays done, changes now
    assert_counts_exact(session, engine)
    kb.delete_task(session, done[3])
    assert_counts_exact(session, engine)
    kb.prune(session, archived_before=LONG_AGO.replace(year=2021))
    assert_counts_exact(session, engine)
    assert tallies(engine)["done"][0] == 2  # done[4], done[5]: still old, still tallied


def test_host_sql_that_skips_updated_at_is_counted_too(session: Session, engine: Engine) -> None:
    done = finished_history(session, engine)
    ready = kb.create_task(session, title="moved by hand")
    sql(engine, "UPDATE kanban_tasks SET updated_at = :at WHERE id = :id", at=LONG_AGO, id=ready)
    kb.refresh_counts(session)

    sql(engine, "UPDATE kanban_tasks SET status = 'done' WHERE id = :id", id=ready)
    assert_counts_exact(session, engine)
    sql(engine, "UPDATE kanban_tasks SET status = 'ready' WHERE id = :id", id=done[0])
    assert_counts_exact(session, engine)
    sql(engine, "DELETE FROM kanban_task_events WHERE task_id = :id", id=done[1])
    sql(engine, "DELETE FROM kanban_tasks WHERE id = :id", id=done[1])
    assert_counts_exact(session, engine)


def test_a_random_walk_of_moves_and_refreshes_never_miscounts(
    session: Session, engine: Engine
) -> None:
    rng = random.Random(22)
    ids = finished_history(session, engine, n=10)
    for step in range(60):
        move = rng.choice(["create", "finish", "reopen", "archive", "refresh", "age"])
        task_id = rng.choice(ids)
        status = kb.get_task(session, task_id).status
        if move == "create":
            ids.append(kb.create_task(session, title=f"new {step}"))
        elif move == "finish" and status not in ("done", "archived"):
            kb.complete_task(session, task_id, force=True)
        elif move == "reopen" and status == "done":
            kb.reopen_task(session, task_id)
        elif move == "archive" and status != "archived":
            kb.archive_task(session, task_id, force=True)
        elif move == "refresh":
            kb.refresh_counts(session)
        elif move == "age":
            backdate(engine)
        assert_counts_exact(session, engine)


def test_a_tenant_is_counted_exactly_without_the_tally(session: Session, engine: Engine) -> None:
    mine = kb.create_task(session, title="mine", tenant="a")
    kb.complete_task(session, mine, force=True)
    finished_history(session, engine)
    kb.refresh_counts(session)
    assert kb.board_cards(session, tenant="a")[1]["done"] == 1
    assert kb.board_stats(session, tenant="a")["by_status"]["done"] == 1


def test_doctor_finds_a_drifted_tally_and_counts_again(session: Session, engine: Engine) -> None:
    finished_history(session, engine)
    kb.refresh_counts(session)
    sql(engine, "UPDATE kanban_status_tallies SET tasks = tasks + 5 WHERE status = 'done'")

    found = {f.check: f for f in doctor(session)}["status_counts"]
    assert (found.severity, found.message) == ("warning", "the board counts done 11 (is 6)")
    assert found.fix and "--repair" in found.fix

    assert {f.check: f for f in doctor(session, repair=True)}["status_counts"].repaired
    assert_counts_exact(session, engine)
    [entry] = kb.list_board_events(session)
    assert entry.payload == {"check": "status_counts", "counted": {"done": 6, "archived": 2}}
    assert {f.check: f for f in doctor(session)}["status_counts"].severity == "ok"


def test_the_count_since_through_reads_the_tally_index(engine: Engine) -> None:
    """The board's count of finished tasks changed since ``through`` is a range of
    ix_kanban_tasks_status_updated_at however long the history. The index is partial on
    SQLite and PostgreSQL, which use it only when the query repeats its condition."""
    rows = [
        {"title": f"t{i}", "status": "done" if i % 4 else "ready", "updated_at": LONG_AGO}
        for i in range(6000)
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(q.tasks), rows)
        analyze(conn)
    by_status = q.stats_statements(False)[0]
    params = q.tally_params([("done", 4500, LONG_AGO), ("archived", 0, LONG_AGO)])
    with engine.connect() as conn:
        plan = explain(conn, by_status, params)
        conn.rollback()

    assert "ix_kanban_tasks_status_updated_at" in plan, plan
    if engine.dialect.name == "sqlite":
        assert (
            "COVERING INDEX ix_kanban_tasks_status_updated_at (status=? AND updated_at>?)" in plan
        )


# SQLite runs one writer at a time: there a refresh holds off every write anyway.
@pytest.mark.backends("postgres", "mysql")
def test_a_completion_does_not_wait_for_a_refresh(session: Session, engine: Engine) -> None:
    """A completion stamps its row now, after every ``through``: the tally trigger does
    not run for it, so it neither takes the tallies' lock nor waits for a refresh that
    holds it (refresh_counts then counts undisturbed by the hot path)."""
    finished_history(session, engine)
    kb.refresh_counts(session)
    live = kb.create_task(session, title="live")
    claimed = kb.claim_next(session, claimer="w")
    assert claimed is not None and claimed.id == live
    outcome: list[object] = []

    def complete() -> None:
        try:
            outcome.append(kb.complete_task(session, live, claim_lock=claimed.claim_lock).status)
        except Exception as error:  # reported below, from the test's own thread
            outcome.append(error)

    with Session(engine) as refresher:
        backends.of(refresher).lock_status_tallies(refresher)  # as refresh_counts does
        completing = threading.Thread(target=complete)
        completing.start()
        completing.join(timeout=60)  # a wait on the lock ends only when it is released
        done_while_held = list(outcome)
        refresher.rollback()
    completing.join()
    assert done_while_held == ["done"], outcome
    assert_counts_exact(session, engine)


def test_the_revisions_install_the_triggers_create_all_does() -> None:
    """The revisions keep a copy of the trigger SQL (a landed revision never changes):
    kb0009's, with kb0012's update trigger. When the models' copy changes, a new
    revision must carry it."""
    import importlib.util

    from kanban_orm.models import STATUS_TALLY_DDL

    from .conftest import REPO_ROOT

    def load(name: str) -> Any:
        path = REPO_ROOT / "migrations" / "versions" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        revision = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(revision)
        return revision

    kb0009, kb0012 = load("kb0009_status_tallies"), load("kb0012_tally_hot_path")
    for dialect in ("sqlite", "postgresql", "mysql", "mariadb"):
        installed = [
            kb0012._update_trigger(dialect, skip_stamped_now=True)
            if statement.startswith(f"CREATE TRIGGER {kb0012.TRIGGER} ")
            else statement
            for statement in kb0009._triggers(dialect)
        ]
        assert installed != kb0009._triggers(dialect), dialect
        assert list(STATUS_TALLY_DDL[dialect]) == installed, dialect
        # kb0012's downgrade puts kb0009's update trigger back.
        assert kb0012._update_trigger(dialect, skip_stamped_now=False) in kb0009._triggers(
            dialect
        ), dialect
