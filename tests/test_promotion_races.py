"""Promotion under real concurrency: no child is left waiting for a parent that is done.

On PostgreSQL each statement sees only what had committed when it began, so these races
are real there (queries.LOCK_WAITING_CHILDREN explains the locking that closes them);
on SQLite they prove the same outcome under its one-writer-at-a-time rule.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import steps

from . import workers

SPAWN = mp.get_context("spawn")
ROUNDS = 30


def run_pair(jobs: list[tuple[Callable[..., None], tuple[Any, ...]]]) -> None:
    barrier = SPAWN.Barrier(len(jobs))
    procs = [SPAWN.Process(target=fn, args=(*args[:-1], barrier, args[-1])) for fn, args in jobs]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=180)
        assert proc.exitcode == 0


def claimed(session: Session, title: str) -> tuple[int, str]:
    task = kb.claim_task(session, kb.create_task(session, title=title), claimer="t")
    assert task is not None and task.claim_lock is not None
    return task.id, task.claim_lock


def test_two_last_parents_finishing_together_promote_their_child(
    db_url: str, session: Session, tmp_path: Path
) -> None:
    firsts, seconds, children = [], [], []
    for _ in range(ROUNDS):
        firsts.append(claimed(session, "parent a"))
        seconds.append(claimed(session, "parent b"))
        children.append(
            kb.create_task(session, title="child", parents=[firsts[-1][0], seconds[-1][0]])
        )
    run_pair(
        [
            (workers.complete_in_lockstep, (db_url, firsts, str(tmp_path / "a"))),
            (workers.complete_in_lockstep, (db_url, seconds, str(tmp_path / "b"))),
        ]
    )
    stuck = [c for c in children if kb.get_task(session, c).status != "ready"]
    assert stuck == [], f"children left waiting although both parents are done: {stuck}"


def test_a_child_created_while_its_parent_finishes_is_never_left_waiting(
    db_url: str, session: Session, tmp_path: Path
) -> None:
    parents = [claimed(session, "parent") for _ in range(ROUNDS)]
    out = tmp_path / "children"
    run_pair(
        [
            (workers.complete_in_lockstep, (db_url, parents, str(tmp_path / "a"))),
            (
                workers.create_children_in_lockstep,
                (db_url, [p for p, _ in parents], str(out)),
            ),
        ]
    )
    children = json.loads(out.read_text())
    stuck = [c for c in children if kb.get_task(session, c).status != "ready"]
    assert stuck == [], f"children left waiting for a parent that is done: {stuck}"


def _specify_case(session: Session) -> tuple[int, str, int, Callable[[Session], object]]:
    parent, token = claimed(session, "parent")
    child = kb.create_task(session, title="child", triage=True)
    kb.link_tasks(session, parent=parent, child=child)
    return parent, token, child, lambda s: kb.specify_task(s, child)


def _unblock_case(session: Session) -> tuple[int, str, int, Callable[[Session], object]]:
    parent, token = claimed(session, "parent")
    child = kb.create_task(session, title="child", parents=[parent])
    kb.block_task(session, child, reason="wait")
    return parent, token, child, lambda s: kb.unblock_task(s, child)


def _request_changes_case(session: Session) -> tuple[int, str, int, Callable[[Session], object]]:
    parent, first = claimed(session, "parent")
    kb.complete_task(session, parent, claim_lock=first)
    child = kb.create_task(session, title="child", parents=[parent])
    held = kb.claim_task(session, child, claimer="w")
    assert held is not None and held.claim_lock is not None
    kb.submit_for_review(session, child, claim_lock=held.claim_lock)
    kb.reopen_task(session, parent, reason="again")
    again = kb.claim_task(session, parent, claimer="w")
    assert again is not None and again.claim_lock is not None
    return parent, again.claim_lock, child, lambda s: kb.request_changes(s, child, reason="redo")


@pytest.mark.parametrize(
    "case",
    [_specify_case, _unblock_case, _request_changes_case],
    ids=["specify", "unblock", "request_changes"],
)
def test_a_child_deciding_ready_or_todo_while_its_last_parent_finishes_is_not_stranded(
    db_url: str,
    engine: Engine,
    session: Session,
    case: Callable[[Session], tuple[int, str, int, Callable[[Session], object]]],
) -> None:
    """Regression (found by the deps stress scenario): specify, unblock and request
    changes decide between ready and todo from their statement's snapshot. If the last
    parent finished meanwhile, its promotion did not see the child (not yet in todo) and
    the child then wrote todo: stranded. On PostgreSQL a lock held on the child makes the
    interleaving certain; SQLite runs the two one after the other."""
    parent, token, child, move = case(session)
    blocker = engine.connect()
    if engine.dialect.name == "postgresql":
        # The move's UPDATE starts (seeing the parent running) and waits for this lock.
        blocker.exec_driver_sql(f"SELECT id FROM kanban_tasks WHERE id = {child} FOR UPDATE")
        threading.Timer(1.0, blocker.commit).start()
    mover = threading.Thread(target=lambda: _with_session(db_url, move))
    mover.start()
    time.sleep(0.3)
    kb.complete_task(session, parent, claim_lock=token)
    mover.join(timeout=30)
    blocker.close()

    assert kb.get_task(session, child).status == "ready"


def _with_session(url: str, move: Callable[[Session], object]) -> None:
    with kb.connect(url) as s:
        move(s)


def _hold_open_after(monkeypatch: pytest.MonkeyPatch, name: str, kind: str) -> threading.Event:
    """Make the transaction that records ``kind`` (through steps.``name``) linger 1 s
    after recording it, still open; the event says it got there."""
    reached = threading.Event()
    real = getattr(steps, name)

    def lingering(s: Any, *args: Any, **kw: Any) -> None:
        real(s, *args, **kw)
        if kind in args and not reached.is_set():
            reached.set()
            time.sleep(1.0)

    monkeypatch.setattr(steps, name, lingering)
    return reached


def test_specify_while_a_new_parent_is_being_linked_waits_for_the_link(
    db_url: str, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (review): specify share-locked only the parents its snapshot could see,
    so a link being added meanwhile was missed and the child became ready under an
    unfinished parent."""
    parent = kb.create_task(session, title="parent")
    child = kb.create_task(session, title="child", triage=True)
    linked = _hold_open_after(monkeypatch, "record", "linked")
    linker = threading.Thread(
        target=lambda: _with_session(db_url, lambda s: kb.link_tasks(s, parent=parent, child=child))
    )
    linker.start()
    assert linked.wait(30)
    specified = kb.specify_task(session, child)
    linker.join(timeout=30)
    assert specified.status == "todo"
    assert kb.get_task(session, child).status == "todo"


def test_reopening_a_parent_while_another_parent_finishes_leaves_the_child_waiting(
    db_url: str, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (review): a finisher of the other parent promoted the child from a
    snapshot in which the reopened parent was still done."""
    first, first_token = claimed(session, "first parent")
    kb.complete_task(session, first, claim_lock=first_token)
    second, second_token = claimed(session, "second parent")
    child = kb.create_task(session, title="child", parents=[first, second])
    reopened = _hold_open_after(monkeypatch, "record_many", "waiting")
    reopener = threading.Thread(
        target=lambda: _with_session(db_url, lambda s: kb.reopen_task(s, first))
    )
    reopener.start()
    assert reopened.wait(30)
    kb.complete_task(session, second, claim_lock=second_token)
    reopener.join(timeout=30)
    assert kb.get_task(session, first).status == "ready"
    assert kb.get_task(session, child).status == "todo"


@pytest.mark.parametrize("batch", [False, True], ids=["complete_task", "complete_many"])
def test_a_link_committed_while_its_parent_completes_in_one_statement_is_seen(
    db_url: str, session: Session, monkeypatch: pytest.MonkeyPatch, batch: bool
) -> None:
    """complete_task first tries one statement whose snapshot cannot see a link that
    commits while it waits for the parent's row lock (queries.COMPLETE_UNCONTESTED).
    The linker's touch gives the parent a new row version, so that statement steps
    aside and the transaction path promotes the new child."""
    parent, token = claimed(session, "parent")
    child = kb.create_task(session, title="child")
    held = [claimed(session, "other"), (parent, token)] if batch else [(parent, token)]
    linked = _hold_open_after(monkeypatch, "record", "linked")
    linker = threading.Thread(
        target=lambda: _with_session(db_url, lambda s: kb.link_tasks(s, parent=parent, child=child))
    )
    linker.start()
    assert linked.wait(30)
    assert kb.get_task(session, child).status == "ready"  # the link is not committed yet
    # Its snapshot is taken now, well inside the linker's open second.
    if batch:
        kb.complete_many(session, held)
    else:
        kb.complete_task(session, parent, claim_lock=token)
    linker.join(timeout=30)

    assert kb.get_task(session, parent).status == "done"
    assert kb.get_task(session, child).status == "ready"
    kinds = [e.kind for e in kb.list_events(session, task_id=child)]
    assert kinds[-2:] == ["linked", "promoted"], kinds


def test_linking_a_done_parent_while_another_parent_completes_leaves_the_child_ready(
    db_url: str, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (review): link_tasks decided ready-or-todo from all of the child's
    parents but touched only the new one; another parent completing meanwhile in one
    statement did not see the child wait, and the link then put it in todo for good."""
    other, other_token = claimed(session, "other parent")
    child, child_token = claimed(session, "child")
    kb.link_tasks(session, parent=other, child=child)  # running: stays running
    kb.release_task(session, child, claim_lock=child_token)
    new_parent, new_token = claimed(session, "new parent")
    kb.complete_task(session, new_parent, claim_lock=new_token)
    linked = _hold_open_after(monkeypatch, "record", "linked")
    linker = threading.Thread(
        target=lambda: _with_session(
            db_url, lambda s: kb.link_tasks(s, parent=new_parent, child=child)
        )
    )
    linker.start()
    assert linked.wait(30)
    kb.complete_task(session, other, claim_lock=other_token)
    linker.join(timeout=30)

    assert kb.get_task(session, child).status == "ready"
