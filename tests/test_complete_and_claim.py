"""complete_and_claim_next / complete_and_claim_many: a completion and the next claim in
one transaction, writing what complete_task + claim_next write, on every backend."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import service
from kanban_orm.models import TaskRun

from . import workers
from .helpers import board_violations, snapshot
from .test_concurrency import run_processes

SPAWN = mp.get_context("spawn")


def _chain_board(session: Session, tenant: str) -> None:
    """A parent with a waiting child (so completing it promotes), and two plain tasks."""
    parent = kb.create_task(session, title="parent", tenant=tenant, priority=2)
    kb.create_task(session, title="child", tenant=tenant, parents=[parent])
    kb.create_task(session, title="x", tenant=tenant, priority=1)
    kb.create_task(session, title="y", tenant=tenant)


def _two_calls(session: Session, tenant: str) -> list[str]:
    order = []
    task = kb.claim_next(session, claimer="w", tenant=tenant)
    while task is not None:
        order.append(task.title)
        assert task.claim_lock is not None
        kb.complete_task(session, task.id, claim_lock=task.claim_lock, result=f"r-{task.title}")
        task = kb.claim_next(session, claimer="w", tenant=tenant)
    return order


def _one_call(session: Session, tenant: str) -> list[str]:
    order = []
    task = kb.claim_next(session, claimer="w", tenant=tenant)
    while task is not None:
        order.append(task.title)
        assert task.claim_lock is not None
        task = kb.complete_and_claim_next(
            session,
            task.id,
            claim_lock=task.claim_lock,
            claimer="w",
            tenant=tenant,
            result=f"r-{task.title}",
        )
    return order


def _written(session: Session, tenant: str) -> dict[str, list[Any]]:
    """What the board holds for ``tenant``, with ids, tokens and clocks left out: task ids
    as titles, events and runs in the order they were written."""
    board = snapshot(session)
    tasks = {row[0]: row for row in board["kanban_tasks"]}
    title = {task_id: row[1] for task_id, row in tasks.items() if row[6] == tenant}
    kb_task = kb.Task.__table__.c
    keep = ("title", "status", "priority", "result", "attempts", "version", "claim_lock")
    columns = [list(kb_task.keys()).index(name) for name in keep]
    run_cols = list(TaskRun.__table__.c.keys())
    runs = [dict(zip(run_cols, row, strict=True)) for row in board["kanban_task_runs"]]
    run_of = {r["id"]: (title.get(r["task_id"]), r["attempt"]) for r in runs}
    events = [
        (title[row[1]], run_of.get(row[2]), row[3], _titled(row[4], title))
        for row in board["kanban_task_events"]
        if row[1] in title and row[3] != "created"
    ]
    return {
        "tasks": [[tasks[t][i] for i in columns] for t in sorted(title)],
        "runs": [
            (title[r["task_id"]], r["attempt"], r["claimer"], r["outcome"], r["ended_at"] is None)
            for r in runs
            if r["task_id"] in title
        ],
        "events": events,
    }


def _titled(payload: Any, title: dict[int, str]) -> Any:
    if isinstance(payload, dict) and "parent_id" in payload:
        return {**payload, "parent_id": title[payload["parent_id"]]}
    return payload


def test_writes_what_complete_task_then_claim_next_write(session: Session) -> None:
    _chain_board(session, "two")
    _chain_board(session, "one")
    assert _two_calls(session, "two") == ["parent", "x", "child", "y"]
    assert _one_call(session, "one") == ["parent", "x", "child", "y"]
    two, one = _written(session, "two"), _written(session, "one")
    assert one == two
    assert [kind for _, _, kind, _ in one["events"]].count("promoted") == 1
    assert board_violations(session) == []


def test_claim_lost_completes_nothing_and_claims_nothing(session: Session) -> None:
    first = kb.create_task(session, title="first")
    kb.create_task(session, title="second")
    mine = kb.claim_task(session, first, claimer="me")
    assert mine is not None and mine.claim_lock is not None
    kb.release_task(session, first, claim_lock=mine.claim_lock)
    theirs = kb.claim_task(session, first, claimer="them")
    assert theirs is not None
    before = snapshot(session)
    with pytest.raises(kb.ClaimLost):
        kb.complete_and_claim_next(session, first, claim_lock=mine.claim_lock, claimer="me")
    with pytest.raises(kb.ClaimLost):
        kb.complete_and_claim_many(
            session, first, claim_lock=mine.claim_lock, claimer="me", limit=5
        )
    assert snapshot(session) == before


def test_a_finished_task_raises_claim_lost_and_nothing_is_claimed(session: Session) -> None:
    task_id = kb.create_task(session, title="done already")
    kb.create_task(session, title="waiting")
    task = kb.claim_task(session, task_id, claimer="me")
    assert task is not None and task.claim_lock is not None
    kb.complete_task(session, task_id, claim_lock=task.claim_lock)
    before = snapshot(session)
    with pytest.raises(kb.ClaimLost):
        kb.complete_and_claim_next(session, task_id, claim_lock=task.claim_lock, claimer="me")
    assert snapshot(session) == before


def test_bad_arguments_write_nothing(session: Session) -> None:
    task_id = kb.create_task(session, title="one")
    task = kb.claim_task(session, task_id, claimer="me")
    assert task is not None and task.claim_lock is not None
    before = snapshot(session)
    for bad in (
        {"result": "nul\x00"},
        {"limit": 0},
        {"ttl_seconds": -1},
        {"claimer": ""},
        {"metadata": {"x": float("nan")}},
    ):
        args: dict[str, Any] = {"claimer": "me", "limit": 1, **bad}
        with pytest.raises(kb.InvalidInput):
            kb.complete_and_claim_many(session, task_id, claim_lock=task.claim_lock, **args)
    assert snapshot(session) == before


def test_claims_within_the_filters_and_up_to_the_limit(session: Session) -> None:
    first = kb.create_task(session, title="first", assignee="bob", priority=9)
    kb.create_task(session, title="not bob's", priority=5)
    bobs = [kb.create_task(session, title=f"bob {i}", assignee="bob") for i in range(3)]
    task = kb.claim_task(session, first, claimer="me")
    assert task is not None and task.claim_lock is not None
    claimed = kb.complete_and_claim_many(
        session,
        first,
        claim_lock=task.claim_lock,
        claimer="me",
        limit=2,
        assignee="bob",
        summary="went well",
        metadata={"n": 1},
    )
    assert [t.id for t in claimed] == bobs[:2]
    assert all(t.status == "running" and t.claim_lock for t in claimed)
    done = kb.latest_run(session, first)
    assert done is not None
    assert (done.outcome, done.summary, done.metadata_) == ("completed", "went well", {"n": 1})
    last = claimed[-1]
    assert last.claim_lock is not None
    claimed = kb.complete_and_claim_many(
        session, last.id, claim_lock=last.claim_lock, claimer="me", limit=5, assignee="bob"
    )
    assert [t.id for t in claimed] == bobs[2:]
    held = claimed[0]
    assert held.claim_lock is not None
    nothing = kb.complete_and_claim_next(
        session, held.id, claim_lock=held.claim_lock, claimer="me", assignee="bob"
    )
    assert nothing is None
    assert kb.get_task(session, held.id).status == "done"


def _batched_calls(session: Session, tenant: str, *, one_transaction: bool) -> list[str]:
    """Claims two at a time; completes each batch with complete_task per task and then
    claims, or with complete_many_and_claim_many."""
    order: list[str] = []
    batch = kb.claim_many(session, claimer="w", tenant=tenant, limit=2)
    while batch:
        order += [task.title for task in batch]
        done = [(task.id, str(task.claim_lock), f"r-{task.title}") for task in batch]
        if one_transaction:
            batch = service.complete_many_and_claim_many(
                session, done, claimer="w", tenant=tenant, limit=2
            )
        else:
            for task_id, token, result in done:
                kb.complete_task(session, task_id, claim_lock=token, result=result)
            batch = kb.claim_many(session, claimer="w", tenant=tenant, limit=2)
    return order


def test_a_batch_writes_what_complete_task_per_task_then_claim_many_write(
    session: Session,
) -> None:
    _chain_board(session, "two")
    _chain_board(session, "one")
    expected = ["parent", "x", "child", "y"]
    assert _batched_calls(session, "two", one_transaction=False) == expected
    assert _batched_calls(session, "one", one_transaction=True) == expected
    two, one = _written(session, "two"), _written(session, "one")
    assert one == two
    assert [kind for _, _, kind, _ in one["events"]].count("promoted") == 1
    assert board_violations(session) == []


def test_a_batch_with_a_lost_claim_completes_nothing_and_claims_nothing(
    session: Session,
) -> None:
    for i in range(4):
        kb.create_task(session, title=f"t{i}")
    first, second = kb.claim_many(session, claimer="me", limit=2)
    assert first.claim_lock is not None and second.claim_lock is not None
    kb.release_task(session, second.id, claim_lock=second.claim_lock)
    before = snapshot(session)
    done = [(first.id, first.claim_lock, "a"), (second.id, second.claim_lock, "b")]
    with pytest.raises(kb.ClaimLost):
        service.complete_many_and_claim_many(session, done, claimer="me", limit=2)
    assert snapshot(session) == before
    assert service.complete_many_and_claim_many(session, done[:1], claimer="me", limit=0) == []
    assert kb.get_task(session, first.id).result == "a"
    assert kb.get_task(session, second.id).status == "ready"
    assert board_violations(session) == []


def test_a_batch_with_bad_arguments_writes_nothing(session: Session) -> None:
    kb.create_task(session, title="spare")
    ids = [kb.create_task(session, title=f"t{i}") for i in range(2)]
    tasks = [kb.claim_task(session, task_id, claimer="me") for task_id in ids]
    (a, ta), (b, tb) = [(t.id, str(t.claim_lock)) for t in tasks if t is not None]
    before = snapshot(session)
    for done, limit in (
        ([(a, ta, "ok"), (a, ta, "again")], 1),
        ([(a, ta, "ok"), (b, tb, "nul\x00")], 1),
        ([(a, ta)], 1),
        ([(a, ta, "ok")], -1),
        ("not a list", 1),
    ):
        with pytest.raises(kb.InvalidInput):
            service.complete_many_and_claim_many(session, done, claimer="me", limit=limit)  # type: ignore[arg-type]
    assert snapshot(session) == before


def test_takes_over_an_expired_lease(session: Session) -> None:
    stale = kb.create_task(session, title="left behind", priority=5)
    mine = kb.create_task(session, title="mine")
    gone = kb.claim_task(session, stale, claimer="dead worker", ttl_seconds=0.05)
    task = kb.claim_task(session, mine, claimer="me")
    assert gone is not None and task is not None and task.claim_lock is not None
    time.sleep(0.2)
    taken = kb.complete_and_claim_next(session, mine, claim_lock=task.claim_lock, claimer="me")
    assert taken is not None and taken.id == stale and taken.attempts == 2
    kinds = [e.kind for e in kb.list_events(session, task_id=stale)]
    assert kinds == ["created", "claimed", "reclaimed", "claimed"]


@pytest.mark.slow
def test_processes_completing_and_claiming_finish_every_task_exactly_once(
    db_url: str, session: Session, tmp_path: Path
) -> None:
    task_ids = [kb.create_task(session, title=f"t{i}", priority=i % 3) for i in range(240)]
    procs = 4
    barrier = SPAWN.Barrier(procs)
    outs = [str(tmp_path / f"drainer-{n}.json") for n in range(procs)]
    run_processes(
        workers.drain_completing_and_claiming,
        [(db_url, f"drainer-{n}", barrier, outs[n]) for n in range(procs)],
    )
    completed = Counter(tid for out in outs for tid in json.loads(Path(out).read_text()))
    assert sorted(completed) == sorted(task_ids)
    assert set(completed.values()) == {1}
    runs = session.execute(select(TaskRun.task_id, func.count()).group_by(TaskRun.task_id)).all()
    assert {tid: n for tid, n in runs} == dict.fromkeys(task_ids, 1)
    kinds = Counter(e.kind for e in kb.list_events(session))
    assert kinds == {"created": 240, "claimed": 240, "completed": 240}
    assert board_violations(session) == []
