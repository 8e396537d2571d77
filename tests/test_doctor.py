"""kanban-orm doctor: each finding with its fix, the safe repairs, each logged.

Broken states are made with plain SQL (what a host's own code or a crash could leave);
every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.cli import main
from kanban_orm.doctor import Finding, board_file_mode, doctor


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {finding.check: finding for finding in findings}


def sql(engine: Engine, statement: str, **params: object) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def test_a_healthy_board_has_no_warnings(session: Session, backend: str) -> None:
    kb.create_task(session, title="fine")
    found = by_check(doctor(session))
    assert found["schema"].severity == "ok"
    assert found["table_sizes"].severity == "info"
    assert "kanban_tasks 1" in found["table_sizes"].message
    problems = [f for f in found.values() if f.needs_attention and f.check != "file_mode"]
    assert problems == []
    if backend == "sqlite":
        assert found["sqlite_integrity"].message == "PRAGMA quick_check: ok"
        assert "sqlite_wal" in found


def test_an_open_run_on_a_finished_task_is_found_and_closed(
    session: Session, engine: Engine
) -> None:
    task_id = kb.create_task(session, title="t")
    claimed = kb.claim_task(session, task_id, claimer="w")
    assert claimed is not None
    sql(
        engine,
        "UPDATE kanban_tasks SET status = 'done', claim_lock = NULL, current_run_id = NULL"
        " WHERE id = :id",
        id=task_id,
    )

    finding = by_check(doctor(session))["open_runs"]
    assert (finding.severity, finding.task_ids, finding.repairable) == ("warning", [task_id], True)
    assert "--repair" in (finding.fix or "")

    repaired = by_check(doctor(session, repair=True))["open_runs"]
    assert repaired.repaired and not repaired.needs_attention
    run = kb.latest_run(session, task_id)
    assert run is not None and run.outcome == "abandoned"
    assert kb.list_events(session, task_id=task_id)[-1].kind == "run_closed"
    [entry] = kb.list_board_events(session)
    assert entry.kind == "repaired" and entry.payload["check"] == "open_runs"
    assert by_check(doctor(session))["open_runs"].severity == "ok"


def test_a_long_expired_lease_is_found_and_reclaimed(session: Session, engine: Engine) -> None:
    task_id = kb.create_task(session, title="t")
    assert kb.claim_task(session, task_id, claimer="gone") is not None
    sql(engine, "UPDATE kanban_tasks SET claim_expires = :at WHERE id = :id",
        at=kb.get_task(session, task_id).created_at.replace(year=2000), id=task_id)  # fmt: skip

    finding = by_check(doctor(session))["stale_leases"]
    assert (finding.severity, finding.task_ids) == ("warning", [task_id])

    assert by_check(doctor(session, repair=True))["stale_leases"].repaired
    assert kb.get_task(session, task_id).status == "ready"
    assert kb.list_events(session, task_id=task_id)[-1].kind == "reclaimed"
    assert [e.payload["check"] for e in kb.list_board_events(session)] == ["stale_leases"]


def test_a_todo_task_whose_parents_are_all_finished_is_promoted(
    session: Session, engine: Engine
) -> None:
    parent = kb.create_task(session, title="parent")
    child = kb.create_task(session, title="child", parents=[parent])
    parked = kb.create_task(session, title="parked by hand, no parents")
    sql(engine, "UPDATE kanban_tasks SET status = 'todo' WHERE id = :id", id=parked)
    sql(engine, "UPDATE kanban_tasks SET status = 'done' WHERE id = :id", id=parent)

    finding = by_check(doctor(session))["stranded_todo"]
    assert (finding.severity, finding.task_ids) == ("warning", [child])

    assert by_check(doctor(session, repair=True))["stranded_todo"].repaired
    assert kb.get_task(session, child).status == "ready"
    assert kb.get_task(session, parked).status == "todo"
    event = kb.list_events(session, task_id=child)[-1]
    assert (event.kind, event.payload) == ("promoted", {"by": "doctor"})


def test_events_deleted_by_hand_are_reported(session: Session, engine: Engine) -> None:
    task_id = kb.create_task(session, title="t")
    kb.create_task(session, title="after")
    sql(engine, "DELETE FROM kanban_task_events WHERE task_id = :id", id=task_id)

    finding = by_check(doctor(session, repair=True))["event_gaps"]

    assert finding.severity == "warning" and not finding.repaired
    assert finding.task_ids == [task_id]
    assert "outside prune" in (finding.fix or "")


def test_pruned_history_is_not_a_gap(session: Session) -> None:
    for i in range(3):
        kb.complete_task(session, kb.create_task(session, title=f"t{i}"), force=True)
    kb.create_task(session, title="live")
    kb.prune(session, done_before=kb.get_task(session, 1).created_at.replace(year=2999))
    assert by_check(doctor(session))["event_gaps"].severity == "ok"


def test_finished_tasks_whose_events_were_pruned_are_not_a_gap(session: Session) -> None:
    kept = kb.create_task(session, title="kept, its events pruned")
    kb.complete_task(session, kept, force=True)
    live = kb.create_task(session, title="live")
    result = kb.prune(session, events_before=timedelta(0))
    assert result.events >= 2 and kb.list_events(session, task_id=kept) == []
    assert [t.id for t in kb.list_tasks(session, status="done")] == [kept]
    assert kb.list_events(session, task_id=live) != []  # a live task's events stay

    assert by_check(doctor(session))["event_gaps"].severity == "ok"


def test_schema_drift_is_an_error_with_its_fix(session: Session, engine: Engine) -> None:
    index = next(ix for ix in kb.Task.__table__.indexes if ix.name == "ix_kanban_tasks_assignee")
    index.drop(engine)
    try:
        finding = by_check(doctor(session))["schema"]
    finally:
        index.create(engine)  # PostgreSQL's test database is shared by the session's tests
    assert finding.severity == "error"
    assert "ix_kanban_tasks_assignee" in finding.message
    assert "db upgrade" in (finding.fix or "")


def test_a_board_file_readable_by_others_is_reported(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'board.db'}"
    engine = kb.cached_engine(url)
    kb.upgrade(engine)
    os.chmod(tmp_path / "board.db", 0o644)
    finding = board_file_mode(engine)
    assert finding is not None and finding.severity == "warning"
    assert "chmod 600" in (finding.fix or "")
    os.chmod(tmp_path / "board.db", 0o600)
    finding = board_file_mode(engine)
    assert finding is not None and finding.severity == "ok"


def damage(path: Path, how: str) -> None:
    """Garble a SQLite file: its pages past the header, or the whole of it."""
    if how == "pages":
        with path.open("r+b") as file:
            file.seek(4096 * 3)
            file.write(b"\xff" * 4096 * 3)
    else:
        path.write_bytes(b"not a database " * 1000)


@pytest.mark.parametrize("how", ["pages", "whole file"])
@pytest.mark.parametrize("full", [False, True])
def test_a_damaged_sqlite_file_is_a_finding_and_nothing_is_repaired(
    tmp_path: Path, how: str, full: bool
) -> None:
    path = tmp_path / "board.db"
    url = f"sqlite:///{path}"
    kb.upgrade(kb.cached_engine(url))
    session = kb.connect(url)
    parent = kb.create_task(session, title="parent " * 50)
    for i in range(200):  # pages enough that the damage lands inside the tables
        kb.create_task(session, title=f"child {i} " * 40, parents=[parent])
    session.close()
    kb.dispose_engines()
    damage(path, how)
    before = path.read_bytes()

    code, out = cli(url, "doctor", "--repair", *(["--full"] if full else []))

    assert code == 1 and "Traceback" not in out
    pragma = "integrity_check" if full else "quick_check"
    assert f"error  sqlite_integrity: PRAGMA {pragma}" in out
    assert "fix: stop the workers, copy the file" in out
    assert "open_runs" not in out and "repaired" not in out  # nothing else ran on it
    assert path.read_bytes() == before
    kb.dispose_engines()


def test_a_check_the_database_cannot_answer_is_an_error_finding_with_its_fix(
    session: Session, engine: Engine
) -> None:
    kb.create_task(session, title="t")
    sql(engine, "DROP TABLE kanban_task_comments")  # what a host's own cleanup could do
    try:
        found = by_check(doctor(session, repair=True))
    finally:
        kb.TaskComment.__table__.create(engine)  # the test database is shared on servers
    assert found["schema"].severity == "error" and "kanban_task_comments" in found["schema"].message
    sizes = found["table_sizes"]
    assert (sizes.severity, sizes.message.split(":")[0]) == ("error", "could not be checked")
    assert "kanban-orm doctor" in (sizes.fix or "")
    assert found["open_runs"].severity == "ok"  # the checks that could run, ran


def test_every_problem_has_its_fix_and_every_repair_is_logged_once(
    session: Session, engine: Engine
) -> None:
    stale = kb.create_task(session, title="stale lease")
    assert kb.claim_task(session, stale, claimer="gone") is not None
    sql(engine, "UPDATE kanban_tasks SET claim_expires = :at WHERE id = :id",
        at=kb.get_task(session, stale).created_at.replace(year=2000), id=stale)  # fmt: skip
    left_open = kb.create_task(session, title="left open")
    assert kb.claim_task(session, left_open, claimer="w") is not None
    sql(engine, "UPDATE kanban_tasks SET status = 'done', claim_lock = NULL,"
        " current_run_id = NULL WHERE id = :id", id=left_open)  # fmt: skip
    parent = kb.create_task(session, title="parent")
    child = kb.create_task(session, title="child", parents=[parent])
    sql(engine, "UPDATE kanban_tasks SET status = 'done' WHERE id = :id", id=parent)

    findings = doctor(session)
    problems = [f for f in findings if f.severity != "ok"]
    assert {f.check for f in problems} >= {"open_runs", "stale_leases", "stranded_todo"}
    assert all(f.fix for f in problems), [f.check for f in problems if not f.fix]

    repaired = [f.check for f in doctor(session, repair=True) if f.repaired]
    assert sorted(repaired) == ["open_runs", "stale_leases", "stranded_todo"]
    logged = [e.payload["check"] for e in kb.list_board_events(session) if e.kind == "repaired"]
    assert sorted(logged) == sorted(repaired)
    assert kb.list_events(session, task_id=left_open)[-1].kind == "run_closed"
    assert kb.list_events(session, task_id=stale)[-1].kind == "reclaimed"
    assert kb.list_events(session, task_id=child)[-1].kind == "promoted"
    assert not [f for f in doctor(session, repair=True) if f.repaired]  # nothing left to do
    assert len(kb.list_board_events(session)) == len(logged)


# -- the commands -------------------------------------------------------------------------


def cli(db_url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--db", db_url, *args])
    return result.exit_code, result.output


def test_doctor_command_exits_1_until_repaired(db_url: str, engine: Engine) -> None:
    session = kb.connect(db_url)
    parent = kb.create_task(session, title="parent")
    child = kb.create_task(session, title="child", parents=[parent])
    sql(engine, "UPDATE kanban_tasks SET status = 'done' WHERE id = :id", id=parent)
    if engine.dialect.name == "sqlite":
        os.chmod(str(engine.url.database), 0o600)

    code, out = cli(db_url, "doctor")
    assert code == 1
    assert "warning  stranded_todo" in out and "fix: `kanban-orm doctor --repair`" in out
    assert f"tasks: {child}" in out

    code, out = cli(db_url, "doctor", "--repair")
    assert code == 0, out
    assert "repaired  stranded_todo" in out

    code, out = cli(db_url, "doctor", "--json")
    assert code == 0
    assert {f["check"]: f["severity"] for f in json.loads(out)}["stranded_todo"] == "ok"
    session.close()


def test_prune_command_dry_run_then_real(db_url: str) -> None:
    session = kb.connect(db_url)
    for i in range(3):
        kb.complete_task(session, kb.create_task(session, title=f"t{i}"), force=True)
    session.close()

    code, out = cli(db_url, "prune", "--done-before", "0s", "--dry-run")
    would = "would remove: 3 tasks, 0 runs, 6 events, 0 comments, 0 links, 0 board_events\n"
    assert (code, out) == (0, would)
    code, out = cli(db_url, "prune", "--done-before", "0s", "--batch", "2", "--json")
    assert code == 0
    assert json.loads(out) == {"tasks": 3, "runs": 0, "events": 6, "comments": 0, "links": 0,
                               "board_events": 0, "batches": 2, "dry_run": False}  # fmt: skip
    code, out = cli(db_url, "prune", "--done-before", "2999-01-01T00:00:00Z")
    assert (code, out) == (
        0,
        "removed: 0 tasks, 0 runs, 0 events, 0 comments, 0 links, 0 board_events in 0 batch(es)\n",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "needs done_before"),
        (("--done-before", "soon"), "neither an age"),
    ],
)
def test_prune_command_rejects_bad_options(
    db_url: str, args: tuple[str, ...], message: str
) -> None:
    code, out = cli(db_url, "prune", *args)
    assert code == 1 and message in out


def test_delete_and_reassign_commands(db_url: str) -> None:
    session = kb.connect(db_url)
    task_id = kb.create_task(session, title="t")
    session.close()

    assert cli(db_url, "reassign", str(task_id), "--assignee", "bob") == (
        0,
        f"task {task_id}: ready\n",
    )
    code, out = cli(db_url, "reassign", str(task_id), "--unassign", "--json")
    assert code == 0 and json.loads(out)["assignee"] is None
    assert cli(db_url, "reassign", str(task_id))[0] == 2

    code, out = cli(db_url, "delete", str(task_id), "--reason", "dup")
    assert code == 0 and out.startswith(f"task {task_id}: deleted (board event ")
    code, out = cli(db_url, "delete", str(task_id))
    assert code == 1 and "does not exist" in out
