"""The worker: the in-process :class:`Worker` API, ``kanban-orm work`` in-process through
CliRunner, and ``kanban-orm work`` as a real process stopped by SIGTERM or killed by
SIGKILL. Every test runs on both backends."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.cli import main
from kanban_orm.db import ENV_HOME, ENV_URL
from kanban_orm.models import Task
from kanban_orm.worker import CommandHandler, TaskFailed, Worker

from .helpers import reaping


@pytest.fixture(autouse=True)
def _no_ambient_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.delenv(ENV_URL, raising=False)
    monkeypatch.setenv(ENV_HOME, str(tmp_path_factory.mktemp("kanban_home")))


def worker(db_url: str, handler: Callable[[Task], Any], **kw: Any) -> Worker:
    kw.setdefault("drain", True)
    kw.setdefault("claimer", "test-worker")
    kw.setdefault("idle_min", 0.05)
    kw.setdefault("idle_max", 0.1)
    return Worker(handler, url=db_url, **kw)


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(target()), daemon=True)
    thread.start()
    return thread, out


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def status(session: Session, task_id: int) -> str:
    return kb.get_task(session, task_id).status


def outcomes(session: Session, task_id: int) -> list[str | None]:
    return [r.outcome for r in kb.list_runs(session, task_id=task_id)]


def due_now(session: Session, task_id: int) -> None:
    """Skip fail_task's retry backoff (10 s and more) by making the task due again."""
    session.execute(
        sa.text("UPDATE kanban_tasks SET run_at = NULL WHERE id = :id"), {"id": task_id}
    )
    session.commit()


# -- the in-process Worker ------------------------------------------------------------------


def test_results_complete_tasks_and_drain_returns(db_url: str, session: Session) -> None:
    ids = [kb.create_task(session, title=f"t{i}") for i in range(3)]
    stats = worker(db_url, lambda task: f"result of {task.title}").run()
    assert (stats.claimed, stats.completed, stats.failed, stats.released) == (3, 3, 0, 0)
    for i, task_id in enumerate(ids):
        task = kb.get_task(session, task_id)
        assert (task.status, task.result) == ("done", f"result of t{i}")
        [run] = kb.list_runs(session, task_id=task_id)
        assert (run.outcome, run.claimer) == ("completed", "test-worker")


def test_none_result_and_session_factory(db_url: str, session: Session) -> None:
    task_id = kb.create_task(session, title="t")
    factory = kb.session_factory(kb.cached_engine(db_url))
    Worker(lambda task: None, sessions=factory, drain=True).run()
    task = kb.get_task(session, task_id)
    assert (task.status, task.result) == ("done", None)


def test_an_exception_fails_the_task_with_its_traceback(db_url: str, session: Session) -> None:
    task_id = kb.create_task(session, title="t", max_attempts=1)

    def handler(task: Task) -> str:
        raise ValueError(f"bad input in task {task.id}")

    stats = worker(db_url, handler).run()
    assert (stats.completed, stats.failed) == (0, 1)
    task = kb.get_task(session, task_id)
    assert task.status == "blocked"
    [run] = kb.list_runs(session, task_id=task_id)
    assert run.outcome == "failed"
    assert run.error is not None
    assert run.error.startswith("Traceback")
    assert run.error.endswith(f"ValueError: bad input in task {task_id}")


def test_a_failure_with_attempts_left_is_retried_later(db_url: str, session: Session) -> None:
    task_id = kb.create_task(session, title="t", max_attempts=2)
    calls: list[int] = []

    def handler(task: Task) -> str:
        calls.append(task.attempts)
        if len(calls) == 1:
            raise TaskFailed("flaky")
        return "second time lucky"

    worker(db_url, handler).run()
    task = kb.get_task(session, task_id)
    assert task.status == "ready" and task.run_at is not None  # backing off
    due_now(session, task_id)
    worker(db_url, handler).run()
    assert calls == [1, 2]
    assert outcomes(session, task_id) == ["failed", "completed"]
    assert kb.list_runs(session, task_id=task_id)[0].error == "flaky"


def test_task_failed_without_retry_blocks_at_once(db_url: str, session: Session) -> None:
    task_id = kb.create_task(session, title="t", max_attempts=5)

    def handler(task: Task) -> str:
        raise TaskFailed("needs a human", retry=False)

    worker(db_url, handler).run()
    task = kb.get_task(session, task_id)
    assert (task.status, task.block_reason) == ("blocked", "needs a human")


@pytest.mark.parametrize("result", [42, "nul \x00 byte"], ids=["not-a-string", "nul"])
def test_a_result_the_kernel_refuses_fails_the_task(
    db_url: str, session: Session, result: Any
) -> None:
    task_id = kb.create_task(session, title="t", max_attempts=5)
    stats = worker(db_url, lambda task: result).run()
    assert stats.failed == 1
    assert status(session, task_id) == "blocked"
    error = kb.list_runs(session, task_id=task_id)[0].error
    assert error is not None and error.startswith("result refused: result")


def _raising(error: BaseException) -> Callable[[str], Callable[[Task], str]]:
    def handler(task: Task) -> str:
        raise error

    return lambda db_url: handler


@pytest.mark.parametrize(
    ("make_handler", "recorded"),
    [
        (_raising(ValueError("nul \x00 byte")), "ValueError: nul \\x00 byte"),
        (_raising(ValueError("lone \ud800 surrogate")), "ValueError: lone \\ud800 surrogate"),
        (_raising(TaskFailed("", retry=False)), "failed with an empty error message ('')"),
        (_raising(TaskFailed("a\x00b", retry=False)), "a\\x00b"),
        (
            lambda db_url: CommandHandler(
                ["sh", "-c", "printf 'bad\\000output' >&2; exit 3"], url=db_url
            ),
            "command exited with status 3: bad\\x00output",
        ),
    ],
    ids=["nul", "surrogate", "empty", "task-failed-nul", "command-stderr-nul"],
)
def test_an_error_no_column_can_hold_is_escaped_and_still_fails_the_task(
    db_url: str, session: Session, make_handler: Callable[[str], Any], recorded: str
) -> None:
    task_id = kb.create_task(session, title="t", max_attempts=1)

    stats = worker(db_url, make_handler(db_url)).run()

    assert (stats.failed, stats.lost) == (1, 0)
    assert status(session, task_id) == "blocked"  # not left running until its lease expires
    (run,) = kb.list_runs(session, task_id=task_id)
    assert run.outcome == "failed" and run.error is not None
    assert run.error.endswith(recorded)


def test_claim_lost_while_completing_is_logged_and_skipped(
    db_url: str, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    task_id = kb.create_task(session, title="t")

    def handler(task: Task) -> str:
        # Someone else finishes the task while the handler runs.
        other = kb.connect(db_url)
        try:
            kb.complete_task(other, task.id, force=True, result="by someone else")
        finally:
            other.close()
        return "mine"

    with caplog.at_level(logging.WARNING, logger="kanban_orm.worker"):
        stats = worker(db_url, handler).run()
    assert (stats.completed, stats.lost) == (0, 1)
    assert kb.get_task(session, task_id).result == "by someone else"
    assert f"task {task_id}: claim lost" in caplog.text


def test_a_lease_reclaimed_mid_run_is_dropped_and_the_task_redone(
    db_url: str, session: Session
) -> None:
    task_id = kb.create_task(session, title="t")
    calls: list[int] = []

    def handler(task: Task) -> str:
        calls.append(task.attempts)
        if len(calls) == 1:
            # The lease (0.3 s, no heartbeat in time) runs out and a reaper takes it.
            time.sleep(0.5)
            reaper = kb.connect(db_url)
            try:
                assert kb.release_stale_claims(reaper) == 1
            finally:
                reaper.close()
        return f"attempt {task.attempts}"

    stats = worker(db_url, handler, ttl_seconds=0.3, heartbeat_seconds=60).run()
    assert (stats.claimed, stats.completed, stats.lost) == (2, 1, 1)
    assert outcomes(session, task_id) == ["reclaimed", "completed"]
    assert kb.get_task(session, task_id).result == "attempt 2"


def test_heartbeats_keep_a_long_handler_s_lease(db_url: str, session: Session) -> None:
    task_id = kb.create_task(session, title="t")
    with reaping(db_url) as reclaimed:
        stats = worker(db_url, lambda task: time.sleep(1.6) or "ok", ttl_seconds=0.6).run()
    assert stats.completed == 1 and sum(reclaimed) == 0
    [run] = kb.list_runs(session, task_id=task_id)
    assert run.outcome == "completed" and run.last_heartbeat_at is not None


def test_concurrency_runs_handlers_side_by_side(db_url: str, session: Session) -> None:
    ids = [kb.create_task(session, title=f"t{i}") for i in range(6)]
    running = 0
    peak = 0
    lock = threading.Lock()

    def handler(task: Task) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.3)
        with lock:
            running -= 1
        return "ok"

    stats = worker(db_url, handler, concurrency=3).run()
    assert stats.completed == 6
    assert peak == 3
    assert {status(session, i) for i in ids} == {"done"}


def test_assignee_and_tenant_filters(db_url: str, session: Session) -> None:
    mine = kb.create_task(session, title="mine", assignee="me", tenant="acme")
    kb.create_task(session, title="theirs", assignee="them", tenant="acme")
    kb.create_task(session, title="other tenant", assignee="me", tenant="zeta")
    stats = worker(db_url, lambda task: "ok", assignee="me", tenant="acme").run()
    assert stats.completed == 1
    assert [t.id for t in kb.list_tasks(session, status="done")] == [mine]


def test_an_idle_worker_picks_up_new_tasks_and_stops_promptly(
    db_url: str, session: Session
) -> None:
    w = worker(db_url, lambda task: "ok", drain=False)
    thread, out = in_thread(w.run)
    time.sleep(0.3)  # idle, backing off
    task_id = kb.create_task(session, title="late")
    wait_until(lambda: status(session, task_id) == "done")
    started = time.monotonic()
    w.stop()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - started < 2
    assert out[0].completed == 1


def test_stop_lets_a_running_handler_finish_within_the_grace_period(
    db_url: str, session: Session
) -> None:
    task_id = kb.create_task(session, title="t")
    other = kb.create_task(session, title="not started")
    started = threading.Event()

    def handler(task: Task) -> str:
        started.set()
        time.sleep(0.5)
        return "finished"

    w = worker(db_url, handler, drain=False, grace_seconds=10)
    thread, out = in_thread(w.run)
    assert started.wait(20)
    w.stop()
    assert w.stopping
    thread.join(10)
    assert out[0].completed == 1
    assert kb.get_task(session, task_id).result == "finished"
    assert status(session, other) == "ready"  # no claims after stop()


def test_after_the_grace_period_the_task_is_released(db_url: str, session: Session) -> None:
    task_id = kb.create_task(session, title="t")
    started = threading.Event()
    let_go = threading.Event()

    def handler(task: Task) -> str:
        started.set()
        let_go.wait(30)
        return "too late"

    w = worker(db_url, handler, drain=False, grace_seconds=0.2)
    thread, out = in_thread(w.run)
    assert started.wait(20)
    w.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert out[0].released == 1
    task = kb.get_task(session, task_id)
    assert (task.status, task.attempts) == ("ready", 0)
    [run] = kb.list_runs(session, task_id=task_id)
    assert run.outcome == "released"
    assert "grace period" in (run.summary or "")
    let_go.set()  # the abandoned handler returns: its result is ignored
    time.sleep(0.3)
    assert status(session, task_id) == "ready"


def test_bad_worker_arguments(db_url: str) -> None:
    with pytest.raises(kb.InvalidInput):
        Worker(lambda task: None, url=db_url, sessions=kb.connect)
    with pytest.raises(kb.InvalidInput):
        Worker(lambda task: None, url=db_url, concurrency=0)
    with pytest.raises(kb.InvalidInput):
        Worker(lambda task: None, url=db_url, grace_seconds=-1)
    with pytest.raises(kb.InvalidInput):
        Worker(lambda task: None, url=db_url, ttl_seconds=0)


@pytest.mark.parametrize(
    "bad",
    [
        {"grace_seconds": "x"},
        {"grace_seconds": float("nan")},
        {"idle_min": None},
        {"idle_max": float("inf")},
        {"heartbeat_seconds": "5"},
        {"heartbeat_seconds": float("nan")},
        {"concurrency": 2.0},
        {"claimer": 5},
        {"claimer": ""},
        {"tenant": 5},
        {"assignee": "a" * 201},
        {"drain": "yes"},
    ],
    ids=repr,
)
def test_a_bad_worker_argument_is_refused_when_the_worker_is_made(
    db_url: str, bad: dict[str, Any]
) -> None:
    # Not when run() first uses it, in a worker thread.
    with pytest.raises(kb.InvalidInput, match=next(iter(bad))):
        Worker(lambda task: None, url=db_url, **bad)


def test_an_infinite_grace_period_waits_for_running_handlers_for_ever(db_url: str) -> None:
    # What `kanban-orm work --grace inf` asks for.
    assert Worker(lambda task: None, url=db_url, grace_seconds=math.inf).grace_seconds == math.inf


def test_a_handler_that_is_not_callable_is_refused(db_url: str) -> None:
    with pytest.raises(kb.InvalidInput, match="handler must be callable"):
        Worker("echo", url=db_url)  # type: ignore[arg-type]


def test_a_lost_lease_cancels_a_running_command(db_url: str, session: Session) -> None:
    task_id = kb.create_task(session, title="t")
    script = 'if [ "$KANBAN_TASK_ATTEMPT" = 1 ]; then exec sleep 30; fi; echo second'
    handler = CommandHandler(["sh", "-c", script], url=db_url)
    w = worker(db_url, handler, ttl_seconds=0.3, heartbeat_seconds=0.8)
    thread, out = in_thread(w.run)
    wait_until(lambda: status(session, task_id) == "running")
    time.sleep(0.5)  # the lease has run out; no heartbeat yet
    assert kb.release_stale_claims(session) == 1
    thread.join(20)  # the heartbeat sees the loss and kills `sleep 30`
    assert not thread.is_alive()
    assert out[0].lost == 1 and out[0].completed == 1
    assert outcomes(session, task_id) == ["reclaimed", "completed"]
    assert kb.get_task(session, task_id).result == "second"


# -- kanban-orm work, in-process --------------------------------------------------------


def work(db_url: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--db", db_url, "work", "--drain", *args])


ECHO_TASK = """\
import json, os, sys
task = json.load(sys.stdin)
keys = ("KANBAN_TASK_ID", "KANBAN_CLAIM_LOCK", "KANBAN_RUN_ID", "KANBAN_TASK_ATTEMPT",
        "KANBAN_DATABASE_URL")
print(json.dumps({"stdin": task, "env": {k: os.environ[k] for k in keys}}))
"""


def test_work_runs_the_command_with_the_task_on_stdin_and_in_env(
    db_url: str, session: Session
) -> None:
    task_id = kb.create_task(session, title="echo me", body="b", assignee="bots")
    result = work(db_url, "--claimer", "cli-worker", "--", sys.executable, "-c", ECHO_TASK)
    assert result.exit_code == 0, result.output
    task = kb.get_task(session, task_id)
    assert task.status == "done"
    [run] = kb.list_runs(session, task_id=task_id)
    assert (run.outcome, run.claimer) == ("completed", "cli-worker")
    assert task.result is not None
    seen = json.loads(task.result)
    assert seen["stdin"]["id"] == task_id
    assert (seen["stdin"]["title"], seen["stdin"]["body"]) == ("echo me", "b")
    assert seen["stdin"]["status"] == "running"
    assert seen["stdin"]["claim_lock"] == run.claim_lock
    assert seen["env"] == {
        "KANBAN_TASK_ID": str(task_id),
        "KANBAN_CLAIM_LOCK": run.claim_lock,
        "KANBAN_RUN_ID": str(run.id),
        "KANBAN_TASK_ATTEMPT": "1",
        "KANBAN_DATABASE_URL": kb.cached_engine(db_url).url.render_as_string(hide_password=False),
    }
    assert f"task {task_id}: completed" in result.stderr
    assert "1 claimed, 1 completed, 0 failed" in result.stderr


def test_work_result_is_stdout_without_its_last_newline(db_url: str, session: Session) -> None:
    a = kb.create_task(session, title="a", priority=1)
    b = kb.create_task(session, title="b")
    script = 'if [ "$KANBAN_TASK_ID" = 1 ]; then printf "two\\nlines\\n\\n"; fi'
    assert work(db_url, "-q", "--", "sh", "-c", script).exit_code == 0
    assert kb.get_task(session, a).result == "two\nlines\n"
    assert kb.get_task(session, b).result is None  # empty stdout


def test_work_failure_is_retried_then_blocked_after_max_attempts(
    db_url: str, session: Session
) -> None:
    task_id = kb.create_task(session, title="doomed", max_attempts=2)
    command = (
        "--",
        "sh",
        "-c",
        'echo "noise"; echo "attempt $KANBAN_TASK_ATTEMPT broke" >&2; exit 3',
    )

    first = work(db_url, *command)
    assert first.exit_code == 0, first.output
    task = kb.get_task(session, task_id)
    assert (task.status, task.attempts) == ("ready", 1)
    assert task.run_at is not None  # fail_task's backoff: not claimable for 10 s or so
    [run] = kb.list_runs(session, task_id=task_id)
    assert (run.outcome, run.error) == ("failed", "command exited with status 3: attempt 1 broke")

    due_now(session, task_id)
    second = work(db_url, *command)
    assert second.exit_code == 0, second.output
    task = kb.get_task(session, task_id)
    assert (task.status, task.attempts) == ("blocked", 2)
    assert (
        task.block_reason
        == "gave up after 2 attempts: command exited with status 3: attempt 2 broke"
    )
    assert outcomes(session, task_id) == ["failed", "failed"]
    assert task.result is None


def test_work_usage_errors(db_url: str) -> None:
    missing = work(db_url, "--", "no-such-command-kanban")
    assert missing.exit_code == 2
    assert "command not found: no-such-command-kanban" in missing.stderr
    assert work(db_url).exit_code == 2  # no command at all
    assert work(db_url, "--concurrency", "0", "--", "true").exit_code == 2


def test_work_errors_are_one_line(db_url: str, tmp_path: Path) -> None:
    bad = work(db_url, "--assignee", "x" * 500, "--", "true")
    assert bad.exit_code == 1, bad.output
    assert bad.stderr.splitlines() == ["error: assignee is 500 characters; the maximum is 200"]
    sqlite3.connect(tmp_path / "empty.db").close()  # a database without the kanban tables
    empty = CliRunner().invoke(
        main, ["--db", f"sqlite:///{tmp_path / 'empty.db'}", "work", "--drain", "--", "true"]
    )
    assert empty.exit_code == 1, empty.output
    [line] = empty.stderr.splitlines()
    assert line.startswith("error: database: no such table") and "db upgrade" in line


def test_work_concurrency(db_url: str, session: Session, tmp_path: Path) -> None:
    ids = [kb.create_task(session, title=f"t{i}") for i in range(4)]
    started = time.monotonic()
    result = work(db_url, "--concurrency", "4", "-q", "--", "sh", "-c", "sleep 1; echo ok")
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 3.5  # four 1 s commands side by side
    assert {kb.get_task(session, i).result for i in ids} == {"ok"}


# -- kanban-orm work, as a real process -------------------------------------------------------


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def spawn_worker(
    processes: list[subprocess.Popen[str]], db_url: str, *args: str
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kanban_orm.cli", "--db", db_url, "work", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    processes.append(proc)
    return proc


def command_pid(marker: Path) -> int:
    """The pid the test command wrote once it started (after the claim)."""
    wait_until(lambda: marker.exists() and marker.read_text().strip() != "")
    return int(marker.read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_from_a_signal_handler_while_the_stop_event_is_locked_returns() -> None:
    """A handler runs between two bytecodes of the main thread, perhaps inside
    Event.set() or Event.wait(), holding the lock Event.set() takes."""
    script = textwrap.dedent(
        """
        import os, signal
        import kanban_orm as kb
        worker = kb.Worker(lambda task: None, url="sqlite:///unused.db")
        signal.signal(signal.SIGINT, lambda *_: worker.stop())
        with worker._stop._cond:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):  # the handler runs in here, in this thread
                pass
        print("stopping" if worker.stopping else "not stopping")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.stdout == "stopping\n", result.stderr


@pytest.mark.parametrize(
    ("grace", "sigterms"), [("0.5", 1), ("600", 2)], ids=["after-the-grace", "second-sigterm"]
)
def test_sigterm_terminates_a_long_command_and_releases_its_task(
    db_url: str,
    session: Session,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
    grace: str,
    sigterms: int,
) -> None:
    """Once the grace is over, or at once on a second SIGTERM (the grace is 600 s)."""
    task_id = kb.create_task(session, title="long")
    marker = tmp_path / "pid"
    proc = spawn_worker(
        processes, db_url, "--grace", grace, "--", "sh", "-c", f"echo $$ > {marker}; exec sleep 600"
    )
    pid = command_pid(marker)
    assert status(session, task_id) == "running"
    proc.send_signal(signal.SIGTERM)
    if sigterms == 2:
        assert proc.stderr is not None
        # Two signals sent back to back may arrive as one: the second goes once the
        # first has been acted on.
        while "stopping" not in (line := proc.stderr.readline()):
            assert line, "the worker exited without saying it was stopping"
        proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert not alive(pid)
    task = kb.get_task(session, task_id)
    assert (task.status, task.attempts, task.claim_lock) == ("ready", 0, None)
    assert outcomes(session, task_id) == ["released"]
    assert "released" in err and "Traceback" not in err


def test_sigterm_lets_a_short_command_finish_and_claims_nothing_more(
    db_url: str, session: Session, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    first = kb.create_task(session, title="first", priority=1)
    second = kb.create_task(session, title="second")
    marker = tmp_path / "pid"
    script = f"echo $$ > {marker}; sleep 1; echo finished"
    proc = spawn_worker(processes, db_url, "--grace", "20", "--", "sh", "-c", script)
    command_pid(marker)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert kb.get_task(session, first).result == "finished"
    assert outcomes(session, first) == ["completed"]
    assert status(session, second) == "ready"


def test_sigkilled_worker_s_task_is_reclaimed_after_its_ttl(
    db_url: str, session: Session, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    task_id = kb.create_task(session, title="orphaned")
    marker = tmp_path / "pid"
    proc = spawn_worker(
        processes, db_url, "--ttl", "1", "--", "sh", "-c", f"echo $$ > {marker}; exec sleep 30"
    )
    pid = command_pid(marker)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert status(session, task_id) == "running"  # nobody released it
        deadline = time.monotonic() + 10
        while (reaped := CliRunner().invoke(main, ["--db", db_url, "reap"])).stdout != (
            "reclaimed 1\n"
        ):
            assert reaped.exit_code == 0, reaped.output
            assert time.monotonic() < deadline, "the lease never expired"
            time.sleep(0.2)
    finally:
        if alive(pid):  # the command outlives a SIGKILLed worker (own session)
            os.kill(pid, signal.SIGKILL)
    task = kb.get_task(session, task_id)
    assert (task.status, task.attempts) == ("ready", 1)
    assert outcomes(session, task_id) == ["reclaimed"]

    again = work(db_url, "-q", "--", "sh", "-c", "echo second try")
    assert again.exit_code == 0, again.output
    task = kb.get_task(session, task_id)
    assert (task.status, task.result) == ("done", "second try")
    assert outcomes(session, task_id) == ["reclaimed", "completed"]
