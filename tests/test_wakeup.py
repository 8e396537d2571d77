"""The wake-up (kanban_orm.wakeup): idle waiters woken by the database, not their poll.

Every test sets the safety poll far beyond the test's own bound (an hour against
thirty seconds), so a pick-up within the bound can only come from the wake-up; the
bound itself is never a speed claim, only how long a test waits before it fails.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import backends, wakeup

from .conftest import REPO_ROOT

#: How long a test waits for what it expects before failing: far under the safety poll.
BOUND = 30.0
#: A safety poll no test lives to see.
NEVER = 3600.0


def wait_until_waiting(wake: wakeup.Wakeup, count: int = 1) -> None:
    """Until ``count`` threads sleep in the wake-up: a task made now cannot be found
    by a claim already under way."""
    done = threading.Event()
    for _ in range(int(BOUND / 0.01)):
        if wake.waiting >= count:
            return
        done.wait(0.01)
    raise AssertionError(f"no {count} waiter(s) within {BOUND}s")


@contextmanager
def running(worker: kb.Worker) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        worker.stop(immediately=True)
        thread.join(BOUND)
        assert not thread.is_alive()


@contextmanager
def watching(engine: Engine, topic: str = wakeup.READY) -> Iterator[wakeup.Wakeup]:
    wake = wakeup.watch(engine, topic)
    try:
        yield wake
    finally:
        wake.release()


class Deaf:
    """A change signal that never hears anything: every notification lost."""

    def wait(self, timeout: float) -> bool:
        threading.Event().wait(min(timeout, 0.05))
        return False

    def close(self) -> None:
        return None


def test_an_idle_worker_wakes_for_a_new_task_long_before_its_poll(
    db_url: str, engine: Engine, session: Session
) -> None:
    picked: queue.Queue[int] = queue.Queue()
    worker = kb.Worker(
        lambda task: picked.put(task.id) or None, url=db_url, idle_min=NEVER, idle_max=NEVER
    )
    with watching(engine) as wake, running(worker):
        wait_until_waiting(wake)  # claimed nothing, and now sleeps for an hour
        before = wake.mark()
        task_id = kb.create_task(session, title="wake up")
        assert picked.get(timeout=BOUND) == task_id
        assert wake.mark() > before  # woken by a change, not by its poll


def test_a_worker_wakes_for_a_task_made_ready_by_a_promotion(
    db_url: str, engine: Engine, session: Session
) -> None:
    """Not only a creation: a child moved todo -> ready when its parent completes."""
    parent = kb.create_task(session, title="parent")
    child = kb.create_task(session, title="child", parents=[parent])
    held = kb.claim_task(session, parent, claimer="elsewhere")
    assert held is not None and held.claim_lock is not None
    picked: queue.Queue[int] = queue.Queue()
    worker = kb.Worker(
        lambda task: picked.put(task.id) or None, url=db_url, idle_min=NEVER, idle_max=NEVER
    )
    with watching(engine) as wake, running(worker):
        wait_until_waiting(wake)
        kb.complete_task(session, parent, claim_lock=held.claim_lock)
        assert picked.get(timeout=BOUND) == child


def test_a_lost_notification_is_recovered_by_the_safety_poll(
    db_url: str, engine: Engine, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = backends.of(engine)
    monkeypatch.setattr(type(backend), "change_signal", lambda self, engine, topic: Deaf())
    picked: queue.Queue[int] = queue.Queue()
    worker = kb.Worker(
        lambda task: picked.put(task.id) or None, url=db_url, idle_min=0.2, idle_max=0.2
    )
    with watching(engine) as wake, running(worker):
        wait_until_waiting(wake)
        seen = wake.mark()
        task_id = kb.create_task(session, title="heard by nobody")
        assert picked.get(timeout=BOUND) == task_id
        assert wake.mark() == seen  # no wake-up: the poll found it


def test_wait_for_ready_answers_at_once_when_a_task_is_claimable(session: Session) -> None:
    assert kb.wait_for_ready(session, timeout=0) is False
    kb.create_task(session, title="ready")
    assert kb.wait_for_ready(session, timeout=0) is True


def test_wait_for_ready_uses_the_claim_filters(session: Session) -> None:
    kb.create_task(session, title="theirs", tenant="a", assignee="alice")
    assert kb.wait_for_ready(session, timeout=0, tenant="a") is True
    assert kb.wait_for_ready(session, timeout=0, tenant="b") is False
    assert kb.wait_for_ready(session, timeout=0, assignee="alice", tenant="a") is True
    assert kb.wait_for_ready(session, timeout=0, assignee="bob") is False


def test_wait_for_ready_ignores_tasks_not_yet_due_or_waiting_for_a_parent(
    session: Session,
) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    parent = kb.create_task(session, title="later", run_at=later)
    kb.create_task(session, title="child", parents=[parent])
    assert kb.wait_for_ready(session, timeout=0) is False


def test_wait_for_ready_counts_an_expired_lease_as_claimable(session: Session) -> None:
    held = kb.create_task(session, title="held")
    assert kb.claim_task(session, held, claimer="alive", ttl_seconds=3600) is not None
    assert kb.wait_for_ready(session, timeout=0) is False  # a live lease is not claimable
    abandoned = kb.create_task(session, title="abandoned")
    assert kb.claim_task(session, abandoned, claimer="gone", ttl_seconds=0.05) is not None
    assert kb.wait_for_ready(session, timeout=BOUND, poll_seconds=0.05) is True


def test_wait_for_ready_is_woken_by_a_new_task(db_url: str, engine: Engine) -> None:
    answers: queue.Queue[bool] = queue.Queue()
    with watching(engine) as wake:
        waiter = threading.Thread(
            target=lambda: answers.put(
                kb.wait_for_ready(db_url, timeout=NEVER, poll_seconds=NEVER)
            ),
            daemon=True,
        )
        waiter.start()
        wait_until_waiting(wake)
        writer = kb.connect(db_url)
        try:
            kb.create_task(writer, title="now")
        finally:
            writer.close()
        assert answers.get(timeout=BOUND) is True


@pytest.mark.parametrize(
    "kwargs",
    [{"timeout": -1}, {"poll_seconds": 0}, {"timeout": "soon"}, {"tenant": 5}],
    ids=["negative-timeout", "zero-poll", "text-timeout", "number-tenant"],
)
def test_wait_for_ready_refuses_bad_arguments(session: Session, kwargs: dict[str, Any]) -> None:
    with pytest.raises(kb.InvalidInput):
        kb.wait_for_ready(session, **kwargs)


def test_wait_for_ready_refuses_what_is_not_a_database() -> None:
    with pytest.raises(kb.InvalidInput):
        kb.wait_for_ready(42)  # type: ignore[arg-type]


def test_the_watching_thread_ends_with_its_last_user(engine: Engine) -> None:
    first = wakeup.watch(engine)
    second = wakeup.watch(engine)
    assert first is second
    thread = first._thread
    assert thread is not None
    first.release()
    second.release()
    thread.join(BOUND)
    assert not thread.is_alive()
    again = wakeup.watch(engine)
    try:
        assert again is not first
    finally:
        again.release()


def test_events_follow_is_pushed_new_events(db_url: str, session: Session) -> None:
    """Followed with an hour between looks: each new event arrives by the wake-up."""
    kb.create_task(session, title="before")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kanban_orm.cli",
            "--db",
            db_url,
            "events",
            "--follow",
            "--json",
            "--interval",
            str(NEVER),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        first = json.loads(lines.get(timeout=BOUND))
        assert (first["task_id"], first["kind"]) == (1, "created")
        for number in (2, 3):  # twice: the follower waits again after each batch
            kb.create_task(session, title=f"pushed {number}")
            pushed = json.loads(lines.get(timeout=BOUND))
            assert (pushed["task_id"], pushed["kind"]) == (number, "created")
        proc.terminate()
        _, err = proc.communicate(timeout=BOUND)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err


def test_the_wakeup_stress_scenario_reports_latency_percentiles_and_cpu(
    db_url: str, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "stress", "wakeup", "--db", db_url, "--workers", "2",
         "--tasks", "4", "--work-ms", "50-150", "--timeout", "120", "--no-progress",
         "--json", str(report)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    data = json.loads(report.read_text())
    numbers = data["numbers"]
    assert numbers["tasks_measured"] == 4, output
    assert 0 <= numbers["latency_ms_p50"] <= numbers["latency_ms_p90"] <= numbers["latency_ms_p99"]
    assert numbers["worker_cpu_percent_of_a_core"] >= 0, output
