"""The Worker rides out its database going away: a real PostgreSQL server of the test's
own (never the shared one) is restarted, and stopped for longer than the retry layer's
budget, under a running Worker and under ``kanban-orm work``."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import service
from kanban_orm.models import Task
from stress.pgserver import PrivateServer, Unavailable

pytestmark = pytest.mark.slow

#: The library gives up on an unreachable server after a second, so the Worker's own
#: backing off is what carries it through the outages below.
SHORT = kb.RetryPolicy(unavailable_seconds=1.0, unavailable_base_delay=0.02)


@pytest.fixture
def server() -> Iterator[PrivateServer]:
    try:
        private = PrivateServer()
        private.start()
    except (Unavailable, subprocess.CalledProcessError, OSError) as error:
        pytest.skip(f"no private PostgreSQL server: {error}")
    try:
        kb.upgrade(kb.create_engine(private.url, poolclass=sa.pool.NullPool))
        yield private
    finally:
        kb.dispose_engines()
        private.close()


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def events(url: str, kind: str) -> dict[int, int]:
    engine = kb.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with Session(engine) as session:
            rows = session.execute(
                sa.select(kb.TaskEvent.task_id, sa.func.count())
                .where(kb.TaskEvent.kind == kind)
                .group_by(kb.TaskEvent.task_id)
            ).all()
    finally:
        engine.dispose()
    return {task_id: n for task_id, n in rows}


def test_worker_rides_out_a_restart_and_an_outage_and_records_every_outcome(
    server: PrivateServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = kb.create_engine(server.url, retry=SHORT)
    with Session(engine) as session:
        ids = [kb.create_task(session, title=f"t{i}") for i in range(12)]
    # One handler is held across the restart, another across the outage: each picked by
    # its task, and released by a gate of its own. (Picked by how many were handled,
    # with one gate cleared after the first release, the second handler could run
    # through the still-open gate before it closed: every task was then done before
    # the outage, and no outcome, claim or log line was left to show the database back.)
    across_restart, across_outage = ids[3], ids[8]
    gates = {across_restart: threading.Event(), across_outage: threading.Event()}
    holding = {task_id: threading.Event() for task_id in gates}
    handled: list[int] = []

    def handler(task: Task) -> str:
        if task.id in gates:
            holding[task.id].set()
            gates[task.id].wait(30)
        handled.append(task.id)
        return f"done {task.id}"

    claims: list[float] = []
    real_claim = service.claim_many  # a slot's claim when it holds no task

    def counted_claim(*args: Any, **kw: Any) -> list[Task]:
        claims.append(time.monotonic())
        return real_claim(*args, **kw)

    monkeypatch.setattr(service, "claim_many", counted_claim)
    worker = kb.Worker(
        handler,
        sessions=kb.session_factory(engine),
        claimer="outage-worker",
        concurrency=2,
        ttl_seconds=60,
        heartbeat_seconds=0.5,
        idle_min=0.05,
        idle_max=0.5,
    )
    out: list[kb.WorkerStats] = []
    runner = threading.Thread(target=lambda: out.append(worker.run()), daemon=True)
    caplog.set_level(logging.INFO, logger="kanban_orm.worker")
    runner.start()

    wait_until(holding[across_restart].is_set)
    server.restart()  # a fast restart, as an operator's
    gates[across_restart].set()  # its handler finishes after the restart
    wait_until(holding[across_outage].is_set)
    # All else recorded: through the outage one slot holds a running handler (its
    # heartbeats and then its outcome meet the outage), the other one claims.
    wait_until(lambda: len(events(server.url, "completed")) == len(ids) - 1)
    server.stop()
    down = time.monotonic()
    time.sleep(4.0)  # longer than the library's budget: the Worker's own backing off
    outage_claims = [t for t in claims if t >= down]
    assert across_outage not in handled
    gates[across_outage].set()  # a handler finishes while the server is still down
    time.sleep(1.0)
    server.start_again()
    wait_until(lambda: len(events(server.url, "completed")) == len(ids))
    worker.stop()
    runner.join(30)

    assert not runner.is_alive() and out, "the Worker stopped"
    stats = out[0]
    assert stats.completed == len(ids) and stats.lost == 0 and stats.failed == 0, stats
    assert events(server.url, "completed") == dict.fromkeys(ids, 1)
    # No busy loop: while the server was down the idle slot claimed, backing off.
    assert 1 <= len(outage_claims) < 2 * (4.0 / 0.5 + 6)
    # The outage logged once when it started and once when it ended (a failure caught
    # just after another thread saw the database back may begin a second pair).
    backing_off = [r for r in caplog.records if "backing off" in r.getMessage()]
    back = [r for r in caplog.records if "is back after" in r.getMessage()]
    assert 1 <= len(backing_off) <= 4, [r.getMessage() for r in backing_off]
    assert 1 <= len(back) <= len(backing_off), [r.getMessage() for r in back]
    engine.dispose()


def test_kanban_orm_work_rides_out_a_restart(server: PrivateServer) -> None:
    engine = kb.create_engine(server.url)
    with Session(engine) as session:
        ids = [kb.create_task(session, title=f"c{i}") for i in range(6)]
    engine.dispose()
    env = {**os.environ, "KANBAN_DATABASE_URL": server.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kanban_orm", "work", "--", "sh", "-c", "sleep 0.5; echo ok"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: len(events(server.url, "completed")) >= 2)
        server.restart()
        wait_until(lambda: len(events(server.url, "completed")) >= 4)
        server.stop()
        time.sleep(2.0)
        assert proc.poll() is None, "the worker exited during the outage"
        server.start_again()
        wait_until(lambda: len(events(server.url, "completed")) == len(ids))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert events(server.url, "completed") == dict.fromkeys(ids, 1)
    assert "Traceback" not in err, err
