"""Registered workers: a dead worker's claim is released at once, a stopped (SIGSTOP) one's
never before its lease ends; per-task and per-worker runtime limits; `kanban-orm workers`.

Every test runs on every backend with real processes: PostgreSQL proves a death by the
worker's advisory lock, MariaDB by its named lock, SQLite by its pid.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import registry
from kanban_orm.cli import main
from kanban_orm.worker import CommandHandler

from . import workers

SPAWN = mp.get_context("spawn")
#: Only a bound against a hung test: every assertion below is on the database's clock.
PATIENCE = 60.0


def start_holder(
    db_url: str,
    tmp_path: Path,
    ttl_seconds: float | None = None,
    target: Callable[[str, str, float | None], None] = workers.hold_one_task,
) -> tuple[Any, dict[str, Any]]:
    """A kb.Worker (or what ``target`` runs) in a process of its own, holding the one
    ready task in a handler that never returns; the process and what it holds."""
    marker = tmp_path / f"held-{time.monotonic_ns()}.json"
    proc = SPAWN.Process(target=target, args=(db_url, str(marker), ttl_seconds))
    proc.start()
    deadline = time.monotonic() + PATIENCE
    while True:
        assert proc.is_alive(), "the holding worker died before it claimed"
        assert time.monotonic() < deadline, "the holding worker never claimed"
        try:
            return proc, json.loads(marker.read_text())
        except (OSError, ValueError):
            time.sleep(0.05)


def take_over(session: Session, task_id: int, *, token: str) -> kb.Task:
    """Claim as another worker until the task is claimed; meanwhile it must still be
    held by ``token``."""
    deadline = time.monotonic() + PATIENCE
    while True:
        claimed = kb.claim_next(session, claimer="rescuer")
        if claimed is not None:
            assert claimed.id == task_id
            return claimed
        assert kb.get_task(session, task_id).claim_lock == token
        assert time.monotonic() < deadline, "nobody took the task over"
        time.sleep(0.1)


def first_run(session: Session, task_id: int) -> kb.TaskRun:
    return kb.list_runs(session, task_id=task_id)[0]


@pytest.mark.parametrize(
    "holder", [workers.hold_one_task, workers.hold_one_task_aio], ids=["Worker", "aio.Worker"]
)
def test_a_sigkilled_workers_claim_is_taken_over_long_before_its_lease_ends(
    db_url: str,
    session: Session,
    tmp_path: Path,
    holder: Callable[[str, str, float | None], None],
) -> None:
    task_id = kb.create_task(session, title="long job")
    proc, held = start_holder(db_url, tmp_path, target=holder)  # the default 15-minute lease
    lease_end = kb.get_task(session, task_id).claim_expires
    assert lease_end is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()

    claimed = take_over(session, task_id, token=held["token"])

    run = first_run(session, task_id)
    assert run.outcome == "reclaimed"
    assert run.error is not None and "died" in run.error
    assert run.worker_id is not None
    # Taken back by the database's clock with most of the lease still to run.
    assert run.ended_at is not None and run.ended_at < lease_end - timedelta(minutes=10)
    assert claimed.attempts == 2  # the dead run's attempt counts, as for any reclaim
    reclaimed = [e for e in kb.list_events(session, task_id=task_id) if e.kind == "reclaimed"]
    assert [e.payload for e in reclaimed] == [
        {"status": "ready", "gave_up": False, "worker": run.worker_id}
    ]
    # The dead worker's row says so, and its late write would be refused (fencing).
    (dead,) = [w for w in kb.list_workers(session, everyone=True) if w.id == run.worker_id]
    assert dead.state == "dead"
    with pytest.raises(kb.ClaimLost):
        kb.complete_task(session, task_id, claim_lock=held["token"])


def test_a_sigstopped_workers_claim_is_not_released_before_its_lease_ends(
    db_url: str, session: Session, tmp_path: Path
) -> None:
    task_id = kb.create_task(session, title="slow job")
    proc, held = start_holder(db_url, tmp_path, ttl_seconds=5.0)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        # Read after the stop: no heartbeat renews it from here on.
        lease_end = kb.get_task(session, task_id).claim_expires
        assert lease_end is not None
        states = [w.state for w in kb.list_workers(session)]
        assert states == ["alive"]
        # release_stale_claims looks for dead workers on every call; claim_next too.
        deadline = time.monotonic() + PATIENCE
        while kb.release_stale_claims(session) == 0:
            assert kb.get_task(session, task_id).claim_lock == held["token"]
            assert time.monotonic() < deadline, "the lease never expired"
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        os.kill(proc.pid, signal.SIGCONT)
        proc.join()
    run = first_run(session, task_id)
    assert (run.outcome, run.error) == ("reclaimed", "lease expired")
    assert run.ended_at is not None and run.ended_at >= lease_end


def test_a_cleanly_stopped_worker_ends_its_row(db_url: str, session: Session) -> None:
    task_id = kb.create_task(session, title="quick")
    worker = kb.Worker(lambda task: "ok", url=db_url, drain=True)
    assert worker.run().completed == 1
    (row,) = kb.list_workers(session, everyone=True)
    assert (row.state, row.claims, row.pid) == ("stopped", 0, os.getpid())
    assert row.stopped_at is not None
    assert kb.list_workers(session) == []
    assert first_run(session, task_id).worker_id == row.id


# -- runtime limits ---------------------------------------------------------------------


def sleeper(tmp_path: Path) -> tuple[list[str], Path]:
    """A command that writes its pid, then sleeps far longer than any limit here."""
    pid_file = tmp_path / f"sleeper-{time.monotonic_ns()}.pid"
    script = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    )
    return [sys.executable, "-c", script], pid_file


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("whose", ["worker", "task"])
def test_max_runtime_kills_the_command_and_fails_the_task(
    db_url: str, session: Session, tmp_path: Path, whose: str
) -> None:
    task_id = kb.create_task(
        session, title="too long", max_attempts=1, max_runtime=1.5 if whose == "task" else None
    )
    argv, pid_file = sleeper(tmp_path)
    worker = kb.Worker(
        CommandHandler(argv, url=db_url),
        url=db_url,
        drain=True,
        max_runtime=1.5 if whose == "worker" else 120,
    )
    stats = worker.run()
    assert (stats.failed, stats.completed) == (1, 0)
    task = kb.get_task(session, task_id)
    assert task.status == "blocked"
    run = first_run(session, task_id)
    assert run.outcome == "failed"
    assert run.error == f"max_runtime exceeded: the {whose}'s limit of 1.5s ran out; cancelled"
    assert run.ended_at is not None and run.ended_at - run.started_at >= timedelta(seconds=1.5)
    assert gone(int(pid_file.read_text()))


def test_a_task_within_its_limit_completes(db_url: str, session: Session) -> None:
    task_id = kb.create_task(session, title="fast", max_runtime=60)
    assert kb.get_task(session, task_id).max_runtime == 60
    stats = kb.Worker(lambda task: "done", url=db_url, drain=True, max_runtime=60).run()
    assert stats.completed == 1


def test_the_cli_sets_both_limits(db_url: str, session: Session, tmp_path: Path) -> None:
    created = CliRunner().invoke(
        main, ["--db", db_url, "create", "--title", "cli", "--max-runtime", "30"]
    )
    assert created.exit_code == 0, created.output
    task_id = int(created.output.strip())
    assert kb.get_task(session, task_id).max_runtime == 30
    argv, pid_file = sleeper(tmp_path)
    worked = CliRunner().invoke(
        main, ["--db", db_url, "work", "--drain", "--max-runtime", "1", "--", *argv]
    )
    assert worked.exit_code == 0, worked.output
    run = first_run(session, task_id)
    assert run.error == "max_runtime exceeded: the worker's limit of 1s ran out; cancelled"
    assert gone(int(pid_file.read_text()))
    refused = CliRunner().invoke(main, ["--db", db_url, "work", "--max-runtime", "0", "--", "x"])
    assert refused.exit_code == 2


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "5", True, 2_147_484, 1e300])
def test_max_runtime_is_validated(session: Session, bad: object) -> None:
    with pytest.raises(kb.InvalidInput, match="max_runtime"):
        kb.create_task(session, title="x", max_runtime=bad)  # type: ignore[arg-type]
    with pytest.raises(kb.InvalidInput, match="max_runtime"):
        kb.Worker(lambda task: None, max_runtime=bad)  # type: ignore[arg-type]
    assert kb.list_tasks(session) == []
    keep = kb.create_task(session, title="kept", max_runtime=5)
    with pytest.raises(kb.InvalidInput, match="max_runtime"):
        kb.update_task(session, keep, max_runtime=bad)  # type: ignore[arg-type]
    assert kb.get_task(session, keep).max_runtime == 5
    assert [e.kind for e in kb.list_events(session, task_id=keep)] == ["created"]


def test_max_runtime_is_edited_and_shown(db_url: str, session: Session) -> None:
    task_id = kb.create_task(session, title="x")
    assert kb.update_task(session, task_id, max_runtime=2.5).max_runtime == 2.5
    edited = CliRunner().invoke(
        main, ["--db", db_url, "edit", str(task_id), "--max-runtime", "90", "--json"]
    )
    assert edited.exit_code == 0, edited.output
    assert json.loads(edited.output)["max_runtime"] == 90
    assert kb.update_task(session, task_id, max_runtime=None).max_runtime is None
    edits = [e.payload for e in kb.list_events(session, task_id=task_id) if e.kind == "edited"]
    assert edits == [{"max_runtime": 2.5}, {"max_runtime": 90.0}, {"max_runtime": None}]


# -- kanban-orm workers -----------------------------------------------------------------


def workers_json(db_url: str, *extra: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(main, ["--db", db_url, "workers", "--json", *extra])
    assert result.exit_code == 0, result.output
    found: list[dict[str, Any]] = json.loads(result.output)
    return found


def test_the_workers_command_lists_live_and_dead_workers(
    db_url: str, session: Session, tmp_path: Path
) -> None:
    assert workers_json(db_url) == []
    kb.create_task(session, title="held")
    proc, _held = start_holder(db_url, tmp_path)
    (alive,) = workers_json(db_url)
    assert (alive["state"], alive["claims"], alive["pid"]) == ("alive", 1, proc.pid)
    assert alive["host"] and alive["claimer"] and alive["started_at"] and alive["last_seen_at"]
    assert alive["stopped_at"] is None

    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    deadline = time.monotonic() + PATIENCE
    while workers_json(db_url)[0]["state"] != "dead":  # PostgreSQL ends the session soon
        assert time.monotonic() < deadline
        time.sleep(0.1)
    plain = CliRunner().invoke(main, ["--db", db_url, "workers"])
    assert plain.exit_code == 0 and " dead " in plain.output and "claims 1" in plain.output

    assert kb.release_stale_claims(session) == 1  # the dead worker's claim
    assert workers_json(db_url) == []
    (ended,) = workers_json(db_url, "--all")
    assert (ended["state"], ended["claims"]) == ("dead", 0)
    assert ended["stopped_at"] is not None


def test_a_registration_that_cannot_reach_the_database_is_tried_again(
    db_url: str, session: Session
) -> None:
    attempts = []

    def sessions() -> Session:
        attempts.append(1)
        if len(attempts) == 1:
            raise kb.DatabaseUnavailable("not yet")
        return kb.connect(db_url)

    registration = registry.Registration(sessions, "flaky")
    assert registration.start() is None and registration.worker_id is None
    registration.seen()  # the worker's heartbeat thread calls this
    assert registration.worker_id is not None
    assert [w.claimer for w in kb.list_workers(session)] == ["flaky"]
    registration.stop()
    assert kb.list_workers(session) == []


# -- the measurement ----------------------------------------------------------------------


def test_crash_bench_measures_kills_and_stops(db_url: str) -> None:
    bench = [sys.executable, "-m", "stress.crash_bench", "--db", db_url]
    sizes = ["--kills", "2", "--stops", "1", "--rescuers", "1"]
    done = subprocess.run([*bench, *sizes], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert "2 SIGKILLs, kill -> claimed by another: p50 " in line
    assert line.endswith("1 SIGSTOPs: 0 released before the lease ended")
