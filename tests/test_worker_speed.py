"""The Worker's fast path: a completion claims the next task in the same transaction, the
slots keep their connections, and ``prefetch`` holds a few claimed tasks per slot, whose
leases are heartbeated and which are handed back on stop. Every test runs on every
backend."""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import service
from kanban_orm.db import KeepingSession
from kanban_orm.models import Task, TaskRun
from kanban_orm.worker import ACK_DELAY_SECONDS, TaskFailed, Worker

from . import workers
from .helpers import board_violations, reaping
from .test_concurrency import run_processes

SPAWN = mp.get_context("spawn")


def worker(db_url: str, handler: Callable[[Task], Any], **kw: Any) -> Worker:
    kw.setdefault("drain", True)
    kw.setdefault("claimer", "speedy")
    kw.setdefault("idle_min", 0.05)
    kw.setdefault("idle_max", 0.1)
    return Worker(handler, url=db_url, **kw)


def runs_of(session: Session, task_id: int) -> list[TaskRun]:
    return kb.list_runs(session, task_id=task_id)


def test_a_completion_claims_the_next_task_in_the_same_call(
    db_url: str, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [kb.create_task(session, title=f"t{i}") for i in range(5)]
    calls: Counter[str] = Counter()
    for name in ("complete_task", "complete_and_claim_many", "claim_many"):
        real = getattr(service, name)

        def counted(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls[_name] += 1
            return _real(*args, **kw)

        monkeypatch.setattr(service, name, counted)
    stats = worker(db_url, lambda task: f"r{task.id}").run()
    assert (stats.claimed, stats.completed) == (5, 5)
    # One claim to start, one to find the board empty; every completion claimed the next.
    assert calls == {"claim_many": 2, "complete_and_claim_many": 5}
    assert [kb.get_task(session, i).result for i in ids] == [f"r{i}" for i in ids]
    assert board_violations(session) == []


def test_slots_keep_their_connection_unless_the_pool_is_too_small(db_url: str) -> None:
    small = worker(db_url, lambda task: None, concurrency=2)._slot_session()
    crowded = worker(db_url, lambda task: None, concurrency=40)._slot_session()
    try:
        assert isinstance(small, KeepingSession)
        assert not isinstance(crowded, KeepingSession)
    finally:
        small.close()
        crowded.close()


def test_prefetch_is_refused_out_of_range(db_url: str) -> None:
    for bad in (-1, 101, 1.5, "2"):
        with pytest.raises(kb.InvalidInput):
            worker(db_url, lambda task: None, prefetch=bad)


def test_prefetch_never_holds_more_than_its_bound(db_url: str, session: Session) -> None:
    ids = [kb.create_task(session, title=f"t{i}") for i in range(60)]
    concurrency, prefetch = 2, 3
    held: list[int] = []
    counter = kb.connect(db_url)
    lock = threading.Lock()

    def handler(task: Task) -> str:
        with lock:
            held.append(counter.scalar(select(func.count()).where(Task.status == "running")))
            counter.commit()
        return "ok"

    try:
        stats = worker(db_url, handler, concurrency=concurrency, prefetch=prefetch).run()
    finally:
        counter.close()
    assert stats.completed == len(ids) and stats.released == 0
    assert max(held) <= concurrency * (1 + prefetch)
    assert max(held) > concurrency  # it did prefetch
    assert board_violations(session) == []


def test_without_prefetch_a_slot_holds_one_task(db_url: str, session: Session) -> None:
    for i in range(12):
        kb.create_task(session, title=f"t{i}")
    held: list[int] = []
    counter = kb.connect(db_url)

    def handler(task: Task) -> str:
        held.append(counter.scalar(select(func.count()).where(Task.status == "running")))
        counter.commit()
        return "ok"

    try:
        worker(db_url, handler).run()
    finally:
        counter.close()
    assert set(held) == {1}


def _prefetching_board(session: Session) -> tuple[int, int, list[int]]:
    """A first task (quick: the slot learns its handlers are short), then one the test
    holds, then three claimed beside it."""
    first = kb.create_task(session, title="first", priority=9)
    held = kb.create_task(session, title="held", priority=5)
    waiting = [kb.create_task(session, title=f"waiting {i}", priority=1) for i in range(3)]
    return first, held, waiting


def test_prefetched_leases_are_heartbeated_while_a_handler_runs_long(
    db_url: str, session: Session
) -> None:
    _first, held, waiting = _prefetching_board(session)

    def handler(task: Task) -> str:
        if task.title == "held":
            time.sleep(2.0)  # over three leases of 0.6 s
        return "ok"

    with reaping(db_url) as reclaimed:
        stats = worker(db_url, handler, ttl_seconds=0.6, prefetch=3).run()
    assert sum(reclaimed) == 0
    assert stats.completed == 5 and stats.lost == 0
    [held_run] = runs_of(session, held)
    for task_id in waiting:
        [run] = runs_of(session, task_id)
        assert run.outcome == "completed"
        # Claimed with the first task's completion, before the held one had finished:
        # its lease lived through the held handler's two seconds.
        assert held_run.ended_at is not None and run.started_at < held_run.ended_at
        assert run.last_heartbeat_at is not None
    assert board_violations(session) == []


def _counting(monkeypatch: pytest.MonkeyPatch, *names: str) -> Counter[str]:
    calls: Counter[str] = Counter()
    for name in names:
        real = getattr(service, name)

        def counted(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls[_name] += 1
            return _real(*args, **kw)

        monkeypatch.setattr(service, name, counted)
    return calls


def test_a_batch_is_completed_in_one_call_with_the_next_claim(
    db_url: str, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [kb.create_task(session, title=f"t{i}") for i in range(9)]
    calls = _counting(monkeypatch, "complete_and_claim_many", "complete_many_and_claim_many")
    stats = worker(db_url, lambda task: f"r{task.id}", prefetch=3).run()
    assert (stats.claimed, stats.completed, stats.lost) == (9, 9, 0)
    # The first task alone (no handler time known yet), claiming four with it; then two
    # batches of four, each completed in one call that claims the next batch.
    assert calls == {"complete_and_claim_many": 1, "complete_many_and_claim_many": 2}
    assert [kb.get_task(session, i).result for i in ids] == [f"r{i}" for i in ids]
    assert all([r.outcome for r in runs_of(session, i)] == ["completed"] for i in ids)
    assert board_violations(session) == []


def test_a_buffered_completion_is_never_counted_before_it_commits(
    db_url: str, session: Session
) -> None:
    for i in range(12):
        kb.create_task(session, title=f"t{i}")
    counter = kb.connect(db_url)
    seen: list[tuple[int, int]] = []
    w: Worker

    def handler(task: Task) -> None:
        done = counter.scalar(select(func.count()).where(Task.status == "done"))
        counter.commit()
        seen.append((w.stats.completed, done or 0))

    w = worker(db_url, handler, prefetch=3)
    try:
        assert w.run().completed == 12
    finally:
        counter.close()
    assert all(counted <= done for counted, done in seen)
    assert any(done < i for i, (_, done) in enumerate(seen))  # some completions waited
    assert board_violations(session) == []


def test_a_buffered_completion_waits_no_longer_than_the_ack_delay(
    db_url: str, session: Session
) -> None:
    first = kb.create_task(session, title="first", priority=9)
    quick = kb.create_task(session, title="quick", priority=5)
    slow = kb.create_task(session, title="slow", priority=4)
    last = kb.create_task(session, title="last", priority=3)
    status_then: dict[str, str] = {}
    looker = kb.connect(db_url)

    def handler(task: Task) -> None:
        if task.title == "slow":
            time.sleep(ACK_DELAY_SECONDS * 2)
        if task.title == "last":  # its batch (quick, slow, last) is not over yet
            status_then.update(
                {t.title: t.status for t in (kb.get_task(looker, i) for i in (quick, slow))}
            )

    try:
        stats = worker(db_url, handler, prefetch=3).run()
    finally:
        looker.close()
    assert stats.completed == 4
    assert status_then == {"quick": "done", "slow": "done"}
    assert kb.get_task(session, first).status == kb.get_task(session, last).status == "done"
    assert board_violations(session) == []


def test_a_buffered_completion_whose_claim_was_lost_is_counted_lost(
    db_url: str, session: Session
) -> None:
    kb.create_task(session, title="first", priority=9)
    victim = kb.create_task(session, title="victim", priority=5)
    kb.create_task(session, title="thief", priority=4)
    kb.create_task(session, title="after", priority=3)
    tokens: dict[str, str] = {}
    other = kb.connect(db_url)

    def handler(task: Task) -> str:
        tokens[task.title] = str(task.claim_lock)
        if task.title == "thief":  # the victim's completion waits in the buffer
            kb.release_task(other, victim, claim_lock=tokens["victim"])
        return task.title

    try:
        stats = worker(db_url, handler, prefetch=3).run()
    finally:
        other.close()
    # The victim was released and claimed again: lost once, then completed.
    assert (stats.lost, stats.completed) == (1, 4)
    assert [r.outcome for r in runs_of(session, victim)] == ["released", "completed"]
    assert all(t.status == "done" for t in kb.list_tasks(session))
    assert board_violations(session) == []


def test_buffered_completions_commit_when_the_batch_ends_in_a_failure(
    db_url: str, session: Session
) -> None:
    kb.create_task(session, title="first", priority=9)
    quick = [kb.create_task(session, title=f"quick {i}", priority=5) for i in range(2)]
    kb.create_task(session, title="fails", priority=4)

    def handler(task: Task) -> None:
        if task.title == "fails":
            raise TaskFailed("no", retry=False)

    # An idle worker that would sleep 5 s with nothing to claim.
    w = worker(db_url, handler, prefetch=3, drain=False, idle_min=5.0, idle_max=5.0)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            statuses = {kb.get_task(session, i).status for i in quick}
            session.commit()
            if statuses == {"done"}:
                break
            time.sleep(0.05)
        assert statuses == {"done"}
        assert (w.stats.completed, w.stats.failed) == (3, 1)
    finally:
        w.stop()
        thread.join(10)
    assert board_violations(session) == []


def test_buffered_completions_are_heartbeated_while_a_later_handler_runs_long(
    db_url: str, session: Session
) -> None:
    kb.create_task(session, title="first", priority=9)
    quick = kb.create_task(session, title="quick", priority=5)
    kb.create_task(session, title="held", priority=4)

    def handler(task: Task) -> str:
        if task.title == "held":
            time.sleep(2.0)  # over three leases of 0.6 s, with quick's completion buffered
        return "ok"

    with reaping(db_url) as reclaimed:
        stats = worker(db_url, handler, ttl_seconds=0.6, prefetch=3).run()
    assert sum(reclaimed) == 0
    assert (stats.completed, stats.lost) == (3, 0)
    [run] = runs_of(session, quick)
    assert run.outcome == "completed" and run.last_heartbeat_at is not None
    assert board_violations(session) == []


def _run_until_held(
    db_url: str, session: Session, grace: float
) -> tuple[Worker, threading.Thread, list[Any], threading.Event, int, int, list[int]]:
    first, held, waiting = _prefetching_board(session)
    started, let_go = threading.Event(), threading.Event()

    def handler(task: Task) -> str:
        if task.title == "held":
            started.set()
            let_go.wait(30)
        return "ok"

    w = worker(db_url, handler, drain=False, prefetch=3, grace_seconds=grace)
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(w.run()), daemon=True)
    thread.start()
    assert started.wait(20)
    assert all(kb.get_task(session, t).status == "running" for t in waiting)  # prefetched
    return w, thread, out, let_go, first, held, waiting


def test_prefetched_tasks_are_released_when_the_worker_stops(db_url: str, session: Session) -> None:
    w, thread, out, let_go, first, held, waiting = _run_until_held(db_url, session, 10.0)
    w.stop()
    let_go.set()  # within the grace period: the held task completes
    thread.join(10)
    assert not thread.is_alive()
    stats = out[0]
    assert (stats.claimed, stats.completed, stats.released) == (5, 2, 3)
    assert kb.get_task(session, first).status == kb.get_task(session, held).status == "done"
    for task_id in waiting:
        task = kb.get_task(session, task_id)
        assert (task.status, task.attempts, task.claim_lock) == ("ready", 0, None)
        assert [r.outcome for r in runs_of(session, task_id)] == ["released"]
    assert board_violations(session) == []


def test_prefetched_tasks_are_released_with_the_abandoned_one_after_the_grace_period(
    db_url: str, session: Session
) -> None:
    w, thread, out, let_go, _first, held, waiting = _run_until_held(db_url, session, 0.2)
    w.stop()
    thread.join(10)
    assert not thread.is_alive()
    try:
        assert out[0].released == 4
        for task_id in [held, *waiting]:
            task = kb.get_task(session, task_id)
            assert (task.status, task.attempts) == ("ready", 0)
            assert [r.outcome for r in runs_of(session, task_id)] == ["released"]
    finally:
        let_go.set()  # the abandoned handler returns: its result is ignored
    time.sleep(0.3)
    assert kb.get_task(session, held).status == "ready"
    assert board_violations(session) == []


@pytest.mark.slow
@pytest.mark.parametrize("prefetch", [0, 4])
def test_worker_processes_finish_every_task_exactly_once(
    db_url: str, session: Session, tmp_path: Path, prefetch: int
) -> None:
    task_ids = [kb.create_task(session, title=f"t{i}", priority=i % 3) for i in range(300)]
    procs = 3
    barrier = SPAWN.Barrier(procs)
    outs = [str(tmp_path / f"worker-{n}.json") for n in range(procs)]
    run_processes(
        workers.run_a_worker,
        [(db_url, f"worker-{n}", prefetch, barrier, outs[n]) for n in range(procs)],
    )
    handled = Counter(tid for out in outs for tid in json.loads(Path(out).read_text()))
    assert sorted(handled) == sorted(task_ids)
    assert set(handled.values()) == {1}
    runs = session.execute(select(TaskRun.task_id, func.count()).group_by(TaskRun.task_id)).all()
    assert {tid: n for tid, n in runs} == dict.fromkeys(task_ids, 1)
    kinds = Counter(e.kind for e in kb.list_events(session))
    assert kinds == {"created": 300, "claimed": 300, "completed": 300}
    assert board_violations(session) == []


def test_work_prefetch_runs_every_command_once(db_url: str, session: Session) -> None:
    from click.testing import CliRunner

    from kanban_orm.cli import main

    ids = [kb.create_task(session, title=f"t{i}") for i in range(6)]
    runner = CliRunner()
    args = ["--db", db_url, "work", "--prefetch", "2", "--drain", "-q", "--", "echo", "ok"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert {kb.get_task(session, i).result for i in ids} == {"ok"}
    assert all(len(runs_of(session, i)) == 1 for i in ids)
    refused = runner.invoke(main, ["--db", db_url, "work", "--prefetch", "101", "--", "true"])
    assert refused.exit_code == 2
