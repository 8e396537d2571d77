"""The stress suite runs, holds its invariants on both backends, and catches a broken claim."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import update
from sqlalchemy.orm import Session

import kanban_orm as kb
from stress import invariants as inv
from stress.harness import Check, Config, Outcome
from stress.scenarios import chaos, mixed, reclaim

from .conftest import REPO_ROOT, fresh_postgres_database, postgres_url_or_skip

pytestmark = pytest.mark.slow


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
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "stress", *args, "--json", str(report)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    data = json.loads(report.read_text()) if report.exists() else {}
    return done.returncode, data, done.stdout + done.stderr


def test_claims_holds_every_invariant(stress_db: list[str], tmp_path: Path) -> None:
    code, report, output = run_stress(
        "claims",
        *stress_db,
        "--workers",
        "3",
        "--tasks",
        "40",
        "--work-ms",
        "0-3",
        "--seed",
        "7",
        tmp_path=tmp_path,
    )
    assert code == 0, output
    assert report["ok"] and all(check["ok"] for check in report["invariants"])
    assert len(report["invariants"]) == 6
    assert report["claims"] == report["completes"] == 40
    assert sum(report["per_worker_completions"].values()) == 40
    assert report["backend"] == ("sqlite" if not stress_db else "postgresql")
    assert "✔ 1. no task claimed by two workers" in output
    assert "ALL INVARIANTS HELD" in output


def test_the_checker_catches_a_claim_without_a_guard(stress_db: list[str], tmp_path: Path) -> None:
    code, report, output = run_stress(
        "claims",
        *stress_db,
        "--workers",
        "5",
        "--tasks",
        "60",
        "--work-ms",
        "0-2",
        "--seed",
        "3",
        "--claim-impl",
        "tests.racy_claim:claim_task",
        tmp_path=tmp_path,
    )
    assert code == 1, output
    failed = {check["name"]: check["detail"] for check in report["invariants"] if not check["ok"]}
    assert "1. no task claimed by two workers" in failed, output
    assert "by ['worker-" in failed["1. no task claimed by two workers"]
    assert "✘ 1. no task claimed by two workers" in output
    assert "INVARIANTS VIOLATED" in output


def test_a_dead_worker_is_named_and_fails_the_run(tmp_path: Path) -> None:
    code, report, output = run_stress(
        "claims",
        "--workers",
        "2",
        "--tasks",
        "10",
        "--work-ms",
        "0-1",
        "--claim-impl",
        "tests.racy_claim:die_on_first_claim",
        tmp_path=tmp_path,
    )
    assert code == 1, output
    dead = [c for c in report["casualties"] if c.endswith("died with exit code 9")]
    assert dead and all(c.startswith("worker-") for c in dead), output
    assert dead[0] in output
    assert "✘ 6." in output


def test_a_hung_worker_is_killed_at_the_timeout(tmp_path: Path) -> None:
    code, report, output = run_stress(
        "claims",
        "--workers",
        "1",
        "--tasks",
        "3",
        "--timeout",
        "1",
        "--claim-impl",
        "tests.racy_claim:hang_on_claim",
        tmp_path=tmp_path,
    )
    assert code == 1, output
    assert report["casualties"] == ["worker-0 hung past the timeout and was killed"], output


def test_a_run_past_its_timeout_stops_and_says_so(tmp_path: Path) -> None:
    # One worker, 200 tasks of 20 ms: about 4 s of work against a 1 s limit.
    code, report, output = run_stress(
        "--workers", "1", "--tasks", "200", "--work-ms", "20-20", "--timeout", "1",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert code == 1, output
    expected = "run timed out after 1 s; stopped by the timeout: worker-0"
    assert report["casualties"] == [expected], output
    assert 0 < report["completes"] < 200
    assert report["elapsed_seconds"] < 30


@pytest.mark.parametrize(
    "args",
    [
        ["--work-ms", "5-1"],
        ["--workers", "0"],
        ["--timeout", "0"],
        ["nonsense"],
        ["--claim-impl", "tests.no_such_module:claim_task"],
        ["--claim-impl", "tests.racy_claim:no_such_function"],
    ],
)
def test_bad_options_are_usage_errors(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from stress.__main__ import main

    monkeypatch.syspath_prepend(str(REPO_ROOT))  # where --claim-impl modules are imported
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2, args
    assert "error:" in capsys.readouterr().err


def test_keep_db_prints_the_path_of_a_database_that_holds_the_run(tmp_path: Path) -> None:
    code, _report, output = run_stress(
        "--tasks", "5", "--workers", "2", "--work-ms", "0-1", "--keep-db", tmp_path=tmp_path
    )
    assert code == 0, output
    path = next(line.split(" at ", 1)[1] for line in output.splitlines() if "kept at" in line)
    with sa.create_engine(f"sqlite:///{path}").connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM kanban_tasks").scalar() == 5


# -- mixed, reclaim, chaos: leases, reclaims and dead workers -------------------------------


def test_mixed_holds_with_leases_expiring_under_the_workers(
    stress_db: list[str], tmp_path: Path
) -> None:
    code, report, output = run_stress(
        "mixed", *stress_db, "--workers", "4", "--tasks", "24", "--work-ms", "0-5",
        "--seed", "4", "--timeout", "90", tmp_path=tmp_path,
    )  # fmt: skip
    assert code == 0, output
    assert report["ok"] and len(report["invariants"]) == 7, output
    numbers = report["numbers"]
    events = numbers["events"]
    assert events["created"] == events["completed"] == 24, output
    # Every transition was exercised, and some leases were reclaimed from under their
    # holders, who were then refused (ClaimLost: check 4 says each one was a reclaim).
    for kind in ("claimed", "failed", "released", "blocked", "unblocked", "reclaimed"):
        assert events.get(kind, 0) > 0, (kind, output)
    assert numbers["reclaims"] == events["reclaimed"] > 0
    assert numbers["claim_lost"] > 0, output
    assert "✔ 5. event counts per kind match the workers' logs" in output


def test_reclaim_refuses_every_late_call_of_a_reclaimed_holder(
    stress_db: list[str], tmp_path: Path
) -> None:
    code, report, output = run_stress(
        "reclaim", *stress_db, "--workers", "4", "--tasks", "12", "--work-ms", "0-5",
        "--seed", "2", "--timeout", "90", tmp_path=tmp_path,
    )  # fmt: skip
    assert code == 0, output
    numbers = report["numbers"]
    # Every task's first claim overstayed, was reclaimed, and both of its late calls
    # were refused; then someone else completed it, once.
    assert numbers["reclaims"] >= 12, output
    assert numbers["reclaims"] == numbers["reclaimed_by_reaper"] + numbers["reclaimed_by_claimers"]
    assert numbers["late_heartbeats_refused"] == numbers["late_completions_refused"] == 12
    assert numbers["late_calls_accepted"] == 0
    assert report["completes"] == 12
    assert "✔ 1. leases expired and were reclaimed" in output


def test_chaos_loses_nothing_when_workers_are_killed(stress_db: list[str], tmp_path: Path) -> None:
    code, report, output = run_stress(
        "chaos", *stress_db, "--workers", "5", "--tasks", "60", "--work-ms", "20-60",
        "--seed", "6", "--timeout", "90", tmp_path=tmp_path,
    )  # fmt: skip
    assert code == 0, output
    numbers = report["numbers"]
    assert report["kills"] == numbers["kills"] == 1, output  # 20% of 5 workers
    kill = report["kill_log"][0]
    assert kill["stage"] == "transaction" and kill["worker"].startswith("worker-")
    # The victim was replaced: one more worker logged than were started.
    assert len(report["per_worker_completions"]) == 6
    assert sum(report["per_worker_completions"].values()) <= 60 == report["tasks"]
    for heal in numbers["heals"]:
        assert 0 < heal["to_claim"] <= 4.5, output
    if stress_db:  # PostgreSQL: backends were terminated and the workers lived on
        assert report["terminations"] == numbers["backend_terminations"] > 0, output
    else:
        assert report["terminations"] == 0
    assert "chaos:       1 workers SIGKILLed" in output


# -- the new checks catch what they claim to -------------------------------------------------


def _outcome(
    scenario: str, db_url: str, tmp_path: Path, entries: list[dict[str, Any]], **chaos: Any
) -> Outcome:
    config = Config(
        scenario=scenario, db_url=db_url, workers=2, tasks=1, work_ms=(0.0, 0.0), seed=1,
        timeout=10.0, log_dir=str(tmp_path),
    )  # fmt: skip
    logs: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        logs.setdefault(entry["worker"], []).append(entry)
    return Outcome(config, logs, 1.0, **chaos)


def _claim(session: Session, task_id: int, worker: str) -> tuple[kb.Task, dict[str, Any]]:
    task = kb.claim_task(session, task_id, claimer=worker, ttl_seconds=60)
    assert task is not None
    entry = {"kind": "claimed", "worker": worker, "task": task_id,
             "run_id": task.current_run_id, "claim_lock": task.claim_lock}  # fmt: skip
    return task, entry


def _expire_and_reclaim(session: Session, task_id: int) -> dict[str, Any]:
    session.execute(
        update(kb.Task).where(kb.Task.id == task_id).values(claim_expires=kb.Task.created_at)
    )
    session.commit()
    assert kb.release_stale_claims(session) == 1
    return {"kind": "reclaimed", "worker": "worker-0", "count": 1}


def _failed(checks: list[Check]) -> dict[str, str]:
    return {check.name.split(".")[0]: check.detail for check in checks if not check.ok}


def test_mixed_catches_a_late_completion_that_landed_after_a_reclaim(
    session: Session, db_url: str, tmp_path: Path
) -> None:
    task_id = kb.create_task(session, title="t")
    first, claimed_first = _claim(session, task_id, "worker-1")
    token_a, run_a = first.claim_lock, first.current_run_id
    reaped = _expire_and_reclaim(session, task_id)
    second, claimed_second = _claim(session, task_id, "worker-2")
    kb.complete_task(session, task_id, claim_lock=second.claim_lock)
    # A kernel without fencing: the completion that landed is the expired holder's.
    session.execute(
        update(kb.TaskEvent)
        .where(kb.TaskEvent.task_id == task_id, kb.TaskEvent.kind == "completed")
        .values(run_id=run_a)
    )
    session.commit()
    late = {"kind": "completed", "worker": "worker-1", "task": task_id, "run_id": run_a,
            "claim_lock": token_a}  # fmt: skip
    log = [claimed_first, reaped, claimed_second, late]

    failed = _failed(mixed.checks(_outcome("mixed", db_url, tmp_path, log), session))

    # The replay points at it; the logs and counts alone are consistent with it.
    assert set(failed) == {"2"}, failed
    assert (
        f"(completed) of task {task_id}: names run {run_a}, but the task is running"
        in (failed["2"])
    )


def test_mixed_catches_a_refused_holder_and_counts_that_do_not_match(
    session: Session, db_url: str, tmp_path: Path
) -> None:
    task_id = kb.create_task(session, title="t")
    _held, claimed = _claim(session, task_id, "worker-1")
    kb.complete_task(session, task_id, claim_lock=claimed["claim_lock"])
    # The worker logged a ClaimLost for a claim nobody reclaimed, and no completion.
    refused = {"kind": "claim_lost", "worker": "worker-1", "task": task_id, "op": "completed",
               "run_id": claimed["run_id"], "claim_lock": claimed["claim_lock"]}  # fmt: skip

    failed = _failed(mixed.checks(_outcome("mixed", db_url, tmp_path, [claimed, refused]), session))

    assert set(failed) == {"3", "4", "5"}, failed
    assert "logged no completion with its token" in failed["3"]
    assert "refused (ClaimLost) though its run ended completed" in failed["4"]
    assert failed["5"] == "completed: 1 events, 0 logged"


def test_reclaim_fails_without_a_reclaim_and_on_a_late_call_accepted(
    session: Session, db_url: str, tmp_path: Path
) -> None:
    task_id = kb.create_task(session, title="t")
    _held, claimed = _claim(session, task_id, "worker-1")
    token, run_id = claimed["claim_lock"], claimed["run_id"]
    session.execute(
        update(kb.Task).where(kb.Task.id == task_id).values(claim_expires=kb.Task.created_at)
    )
    session.commit()
    # Expired but never reclaimed: the kernel still honours the token (see the README).
    kb.complete_task(session, task_id, claim_lock=token)
    fields = {"worker": "worker-1", "task": task_id, "run_id": run_id}
    log = [claimed, {"kind": "completed", "claim_lock": token, **fields},
           {"kind": "late_accepted", "op": "completed", **fields}]  # fmt: skip

    failed = _failed(reclaim.checks(_outcome("reclaim", db_url, tmp_path, log), session))

    assert set(failed) == {"1", "2"}, failed
    assert failed["1"] == "no reclaim happened"
    assert f"task {task_id}: late completed of run {run_id} by worker-1 accepted" in (failed["2"])


def test_chaos_catches_a_dead_workers_lease_never_healed_and_a_false_claim_lost(
    session: Session, db_url: str, tmp_path: Path
) -> None:
    task_id = kb.create_task(session, title="t")
    held, claimed = _claim(session, task_id, "worker-1")
    kill = {"worker": "worker-1", "stage": "work", "task": task_id, "at": 0.0, "t": 0.5}
    false_lost = {"kind": "false_claim_lost", "worker": "worker-2", "task": task_id,
                  "run_id": held.current_run_id}  # fmt: skip
    outcome = _outcome("chaos", db_url, tmp_path, [claimed, false_lost], kills=[kill])

    failed = _failed(chaos.checks(outcome, session))

    assert set(failed) == {"1", "2", "3", "7", "8"}, failed
    assert f"task {task_id} is running" in failed["1"]
    assert f"run {held.current_run_id} of task {task_id} is open" in failed["3"]
    assert f"worker-1 (killed at 0.50 s) still holds run {held.current_run_id}" in failed["7"]
    assert "got ClaimLost though run" in failed["8"]

    nobody = _failed(chaos.checks(_outcome("chaos", db_url, tmp_path, [claimed]), session))
    assert nobody["7"] == "nobody was killed"


def test_the_replay_catches_a_claim_of_a_held_task_and_an_unblock_of_a_ready_one() -> None:
    events = [
        inv.Event(1, 7, None, "created", {"status": "ready"}),
        inv.Event(2, 7, 10, "claimed", None),
        inv.Event(3, 7, 11, "claimed", None),  # two claims at once
        inv.Event(4, 7, 11, "completed", {"forced": False}),
        inv.Event(5, 7, None, "unblocked", {"status": "ready"}),  # it was done
        inv.Event(6, 7, 10, "reclaimed", {"status": "ready"}),  # a closed run
    ]
    problems = inv.replay_violations(events)
    assert problems == [
        "event 3 (claimed) of task 7: claimed run 11 while running, open run 10",
        "event 5 (unblocked) of task 7: unblocked while done",
        "event 6 (reclaimed) of task 7: names run 10, but the task is ready on run None",
    ]
    assert inv.replay_violations(events[:2] + events[3:4]) == [
        "event 4 (completed) of task 7: names run 11, but the task is running on run 10"
    ]


def test_chaos_times_a_victims_lease_from_the_kill_and_excuses_only_its_unlogged_lines(
    session: Session, db_url: str, tmp_path: Path
) -> None:
    task_id = kb.create_task(session, title="t")
    _victim, claimed_by_victim = _claim(session, task_id, "worker-1")
    reaped = _expire_and_reclaim(session, task_id)
    _heir, claimed = _claim(session, task_id, "worker-2")
    kb.complete_task(session, task_id, claim_lock=claimed["claim_lock"])
    # worker-2 died between its completion's commit and the log line.
    log = [claimed_by_victim, reaped, claimed]

    def judge(*killed: tuple[str, float]) -> tuple[dict[str, str], dict[str, Any]]:
        kills = [{"worker": w, "stage": "work", "task": task_id, "at": time.time() - ago, "t": 1.0}
                 for w, ago in killed]  # fmt: skip
        outcome = _outcome("chaos", db_url, tmp_path, log, kills=kills)
        return _failed(chaos.checks(outcome, session)), outcome.numbers

    failed, numbers = judge(("worker-1", 2.0), ("worker-2", 0.5))
    assert failed == {}, failed
    (heal,) = numbers["heals"]
    assert heal["worker"] == "worker-1" and heal["task"] == task_id
    assert 1.0 < heal["to_reclaim"] <= heal["to_claim"] < 5.0, heal
    assert numbers["kills_holding_no_lease"] == 1  # worker-2's completion had landed

    failed, _ = judge(("worker-1", 2.0))  # worker-2 was not killed: its log must be whole
    assert set(failed) == {"6"} and "worker-2 logged no completion" in failed["6"], failed

    failed, _ = judge(("worker-1", 60.0), ("worker-2", 0.5))  # healed, but far too late
    assert set(failed) == {"7"}, failed
    late = re.search(rf"task {task_id} of worker-1 claimed again ([\d.]+) s after", failed["7"])
    assert late and 55 < float(late.group(1)) < 65, failed
