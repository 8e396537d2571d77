"""The ``deps`` stress scenario holds on both backends, and its checker catches a claim
made before a parent finished and a child the kernel left waiting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

import kanban_orm as kb
from stress.harness import Check, Config, Outcome
from stress.scenarios import deps

from .conftest import REPO_ROOT, fresh_postgres_database, postgres_url_or_skip


@pytest.fixture(params=["sqlite", "postgres"])
def stress_db(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """``--db`` arguments: none for the default temporary SQLite, else a fresh PostgreSQL."""
    if request.param == "sqlite":
        yield []
    else:
        for url in fresh_postgres_database(postgres_url_or_skip()):
            yield ["--db", url]


def run_stress(*args: str, tmp_path: Path) -> tuple[int, dict[str, Any], str]:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "stress", *args, "--json", str(report)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    data = json.loads(report.read_text()) if report.exists() else {}
    return done.returncode, data, done.stdout + done.stderr


@pytest.mark.slow
def test_deps_builds_the_dag_while_workers_run_and_holds(
    stress_db: list[str], tmp_path: Path
) -> None:
    code, report, output = run_stress(
        "deps", *stress_db, "--workers", "4", "--tasks", "40", "--work-ms", "0-3", "--seed", "5",
        "--timeout", "60", tmp_path=tmp_path,
    )  # fmt: skip
    assert code == 0, output
    assert report["ok"] and all(check["ok"] for check in report["invariants"]), output
    assert len(report["invariants"]) == 7
    assert report["backend"] == ("sqlite" if not stress_db else "postgresql")
    # --tasks 40: a fan-out/fan-in of 14, two chains of 8, two diamonds, 40 tasks in all.
    assert deps.plan(40) == deps.Plan(width=14, chain_length=8, diamonds=2)
    assert report["claims"] == report["completes"] == 40
    graph = report["invariants"][0]["detail"]
    assert "fan-out 1→14 (14 promoted by one completion), fan-in 14→1" in graph, output
    assert "2 diamonds, 2 chains of 8; 40 tasks, 50 links" in graph, output
    assert "onto running parents" in graph, output  # the root is held while it fans out
    assert "(sink created with " in graph, output
    claims = report["invariants"][3]["detail"]
    assert "by claim_next" in claims and "by claim_many" in claims, output
    assert "✔ 2. no task claimed while a parent was unfinished" in output
    assert "ALL INVARIANTS HELD" in output


def test_plan_gives_the_issue_shapes_at_the_default_size() -> None:
    p = deps.plan(100)
    assert (p.width, p.chain_length, p.diamonds) == (50, 20, 2)
    assert p.total == 100
    assert all(deps.plan(n).total == n for n in range(18, 400))


# -- the checker catches what it claims to ------------------------------------------------


def _outcome(db_url: str, tmp_path: Path, entries: list[dict[str, Any]]) -> Outcome:
    config = Config(
        scenario="deps", db_url=db_url, workers=1, tasks=2, work_ms=(0.0, 0.0), seed=1,
        timeout=10.0, log_dir=str(tmp_path),
    )  # fmt: skip
    return Outcome(config, {"worker-1": [{"worker": "worker-1", **e} for e in entries]}, 1.0)


def _claimed(task: kb.Task) -> dict[str, Any]:
    return {"kind": "claimed", "task": task.id, "run_id": task.current_run_id,
            "claim_lock": task.claim_lock, "via": "claim_task"}  # fmt: skip


def _complete(session: Session, task: kb.Task) -> dict[str, Any]:
    token, run_id = task.claim_lock, task.current_run_id
    kb.complete_task(session, task.id, claim_lock=token)
    return {"kind": "completed", "task": task.id, "run_id": run_id, "claim_lock": token}


def _set_status(session: Session, task_id: int, status: str) -> None:
    """A direct SQL update: no guard, no event, what no kernel call may do."""
    session.execute(update(kb.Task).where(kb.Task.id == task_id).values(status=status))
    session.commit()


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name.split(".")[0]: check for check in checks}


def test_the_checker_catches_a_child_claimed_before_its_parent_finished(
    session: Session, db_url: str, tmp_path: Path
) -> None:
    parent = kb.create_task(session, title="parent", assignee=deps.ASSIGNEE, tenant=deps.TENANT)
    child = kb.create_task(
        session, title="child", parents=[parent], assignee=deps.ASSIGNEE, tenant=deps.TENANT
    )
    assert kb.get_task(session, child).status == "todo"
    # The kernel's claim re-checks the parents, even of a child marked ready by hand.
    _set_status(session, child, "ready")
    assert kb.claim_task(session, child, claimer="worker-1") is None
    # Behind the kernel's back, the parent looks done just long enough for the claim.
    _set_status(session, parent, "done")
    early = kb.claim_task(session, child, claimer="worker-1")
    assert early is not None
    _set_status(session, parent, "ready")
    log = [_claimed(early), _complete(session, early)]
    late = kb.claim_task(session, parent, claimer="worker-1")
    assert late is not None
    log += [_claimed(late), _complete(session, late)]
    events = {(e.task_id, e.kind): e.id for e in kb.list_events(session)}

    checks = _by_name(deps.checks(_outcome(db_url, tmp_path, log), session))

    claim, finish = events[(child, "claimed")], events[(parent, "completed")]
    assert claim < finish
    assert not checks["2"].ok
    assert checks["2"].detail == (
        f"task {child} claimed (event {claim}) before parent {parent} finished (event {finish})"
    )
    assert not checks["3"].ok
    assert f"task {child} claimed (event {claim}) while todo" in checks["3"].detail
    # The rest of the board is sound, and the checker says so: it points at the fault.
    assert all(checks[n].ok for n in ("4", "5", "6", "7")), checks


def test_the_checker_catches_a_child_left_waiting_after_its_parents_finished(
    session: Session, db_url: str, tmp_path: Path
) -> None:
    parent = kb.create_task(session, title="parent", assignee=deps.ASSIGNEE, tenant=deps.TENANT)
    held = kb.claim_task(session, parent, claimer="worker-1")
    assert held is not None
    log = [_claimed(held), _complete(session, held)]
    child = kb.create_task(
        session, title="child", parents=[parent], assignee=deps.ASSIGNEE, tenant=deps.TENANT
    )
    # The kernel gets this right: a child whose parents are all done is ready at once.
    assert kb.get_task(session, child).status == "ready"
    # A kernel that got it wrong would have logged and left it waiting.
    session.execute(
        update(kb.TaskEvent)
        .where(kb.TaskEvent.task_id == child, kb.TaskEvent.kind == "created")
        .values(payload={"status": "todo", "parents": [parent]})
    )
    _set_status(session, child, "todo")

    checks = _by_name(deps.checks(_outcome(db_url, tmp_path, log), session))

    assert not checks["3"].ok
    assert f"task {child} created todo" in checks["3"].detail
    assert "though every parent was done" in checks["3"].detail
    assert f"task {child} still waits in todo (since created event" in checks["3"].detail
    assert "a promotion was missed" in checks["3"].detail
    assert not checks["4"].ok
    assert f"task {child} status=todo" in checks["4"].detail


def test_workers_call_a_board_stuck_only_when_a_promotion_was_missed() -> None:
    # Everything created, nothing ready, running or in triage, yet a task waits.
    assert deps._stuck(Counter(done=5, todo=1), expected=6)
    assert not deps._stuck(Counter(done=4, todo=1, running=1), expected=6)  # a parent runs
    assert not deps._stuck(Counter(done=4, todo=1, triage=1), expected=6)  # being built
    assert not deps._stuck(Counter(done=4, todo=1), expected=6)  # still being created
    assert not deps._stuck(Counter(done=6), expected=6)
