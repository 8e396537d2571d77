"""The maintained counts of the finished statuses (kanban_status_tallies, kb0009).

board_cards and board_stats count a finished status as its tally plus the tasks changed
since the tally's ``through``; triggers move old rows in and out of the tally. Every
test compares with an exact count after each move, on every backend. History is made
"old" by backdating updated_at with plain SQL, as a long-lived board's would be.
"""

from __future__ import annotations

import random
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.doctor import doctor

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


def test_kb0009_installs_the_triggers_create_all_does() -> None:
    """The revision keeps a copy of the trigger SQL (a landed revision never changes):
    when the models' copy changes, a new revision must carry it."""
    import importlib.util

    from kanban_orm.models import STATUS_TALLY_DDL

    from .conftest import REPO_ROOT

    path = REPO_ROOT / "migrations" / "versions" / "kb0009_status_tallies.py"
    spec = importlib.util.spec_from_file_location("kb0009", path)
    assert spec is not None and spec.loader is not None
    revision = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(revision)
    for dialect in ("sqlite", "postgresql", "mysql", "mariadb"):
        assert list(STATUS_TALLY_DDL[dialect]) == revision._triggers(dialect), dialect
