"""Comments, and idempotent creates that hold under concurrent creators."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import kanban_orm as kb

from . import workers
from .helpers import snapshot

SPAWN = mp.get_context("spawn")


def test_comments_are_listed_in_order_with_an_event_each(session: Session) -> None:
    task_id = kb.create_task(session, title="t")
    first = kb.add_comment(session, task_id, body="first!", author="ana")
    kb.add_comment(session, task_id, body="'; DROP TABLE kanban_tasks; -- ✓")
    comments = kb.list_comments(session, task_id=task_id)
    assert [(c.author, c.body) for c in comments] == [
        ("ana", "first!"),
        (None, "'; DROP TABLE kanban_tasks; -- ✓"),
    ]
    assert comments[0].id == first.id
    events = [e for e in kb.list_events(session, task_id=task_id) if e.kind == "commented"]
    assert [e.payload for e in events] == [
        {"comment_id": c.id, "author": c.author} for c in comments
    ]


def test_bad_comments_write_nothing(session: Session) -> None:
    task_id = kb.create_task(session, title="t")
    before = snapshot(session)
    with pytest.raises(kb.InvalidInput):
        kb.add_comment(session, task_id, body="  ")
    with pytest.raises(kb.TaskNotFound):
        kb.add_comment(session, 999, body="hello")
    with pytest.raises(kb.TaskNotFound):
        kb.list_comments(session, task_id=999)
    assert snapshot(session) == before
    assert kb.list_comments(session, task_id=task_id) == []


def test_an_archived_task_releases_its_idempotency_key(session: Session) -> None:
    first = kb.create_task(session, title="t", idempotency_key="k", tenant="x")
    assert kb.create_task(session, title="again", idempotency_key="k", tenant="x") == first
    kb.archive_task(session, first)
    second = kb.create_task(session, title="again", idempotency_key="k", tenant="x")
    assert second != first


@pytest.mark.slow
@pytest.mark.parametrize("tenant", ["acme", None])
def test_six_processes_creating_with_one_key_get_one_task(
    db_url: str, session: Session, tmp_path: Path, tenant: str | None
) -> None:
    procs = 6
    barrier = SPAWN.Barrier(procs)
    outs = [str(tmp_path / f"creator-{n}.json") for n in range(procs)]
    started = [
        SPAWN.Process(target=workers.create_idempotently, args=(db_url, tenant, barrier, out))
        for out in outs
    ]
    for proc in started:
        proc.start()
    for proc in started:
        proc.join(timeout=120)
    assert [p.exitcode for p in started] == [0] * procs
    ids = {tid for out in outs for tid in json.loads(Path(out).read_text())}
    assert len(ids) == 1
    rows = session.scalar(select(func.count()).select_from(kb.Task))
    assert rows == 1
    created = [e for e in kb.list_events(session) if e.kind == "created"]
    assert len(created) == 1
