"""Board workflow: dependencies, triage, review, reopen, archive, edits, stats."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

import kanban_orm as kb

from .helpers import snapshot


def kinds(session: Session, task_id: int) -> list[str]:
    return [e.kind for e in kb.list_events(session, task_id=task_id)]


def test_link_makes_a_ready_child_wait_and_unlink_releases_it(session: Session) -> None:
    parent = kb.create_task(session, title="parent")
    child = kb.create_task(session, title="child")
    assert kb.link_tasks(session, parent=parent, child=child).status == "todo"
    assert kb.claim_task(session, child, claimer="w") is None
    assert kb.link_tasks(session, parent=parent, child=child).status == "todo"  # twice: no-op
    assert kinds(session, child) == ["created", "linked"]
    assert kb.unlink_tasks(session, parent=parent, child=child).status == "ready"
    events = kb.list_events(session, task_id=child)
    assert [(e.kind, e.payload) for e in events[1:]] == [
        ("linked", {"parent_id": parent, "status": "todo"}),  # the log says it moved
        ("unlinked", {"parent_id": parent, "status": "ready"}),
    ]


def test_a_link_to_a_finished_parent_leaves_the_child_ready_and_says_so(
    session: Session,
) -> None:
    parent = kb.create_task(session, title="parent")
    kb.complete_task(session, parent, force=True)
    child = kb.create_task(session, title="child")
    assert kb.link_tasks(session, parent=parent, child=child).status == "ready"
    linked = kb.list_events(session, task_id=child)[-1]
    assert (linked.kind, linked.payload) == ("linked", {"parent_id": parent, "status": "ready"})


def test_list_links_gives_parents_and_children_in_id_order(session: Session) -> None:
    first = kb.create_task(session, title="first")
    second = kb.create_task(session, title="second")
    child = kb.create_task(session, title="child", parents=[second, first])
    grandchild = kb.create_task(session, title="grandchild", parents=[child])
    alone = kb.create_task(session, title="alone")

    assert kb.list_links(session, task_id=child) == ([first, second], [grandchild])
    links = kb.list_links(session, task_id=first)
    assert (links.parents, links.children) == ([], [child])
    assert kb.list_links(session, task_id=alone) == kb.TaskLinks(parents=[], children=[])
    kb.unlink_tasks(session, parent=second, child=child)
    assert kb.list_links(session, task_id=child).parents == [first]
    with pytest.raises(kb.TaskNotFound):
        kb.list_links(session, task_id=999)
    with pytest.raises(kb.InvalidInput):
        kb.list_links(session, task_id=0)


@pytest.mark.parametrize("edges", [[(1, 1)], [(1, 2), (2, 1)], [(1, 2), (2, 3), (3, 1)]])
def test_a_link_that_closes_a_cycle_is_refused_and_writes_nothing(
    session: Session, edges: list[tuple[int, int]]
) -> None:
    for i in range(3):
        kb.create_task(session, title=f"t{i}")
    *accepted, closing = edges
    for parent, child in accepted:
        kb.link_tasks(session, parent=parent, child=child)
    before = snapshot(session)
    with pytest.raises(kb.InvalidInput):
        kb.link_tasks(session, parent=closing[0], child=closing[1])
    assert snapshot(session) == before


def test_link_unknown_task_and_unlink_missing_link_write_nothing(session: Session) -> None:
    task = kb.create_task(session, title="t")
    other = kb.create_task(session, title="u")
    before = snapshot(session)
    with pytest.raises(kb.TaskNotFound):
        kb.link_tasks(session, parent=task, child=999)
    with pytest.raises(kb.TaskNotFound):
        kb.unlink_tasks(session, parent=999, child=task)
    with pytest.raises(kb.InvalidInput):
        kb.unlink_tasks(session, parent=task, child=other)
    assert snapshot(session) == before


def test_child_is_promoted_in_the_transaction_of_its_last_parents_completion(
    session: Session,
) -> None:
    first = kb.create_task(session, title="first")
    second = kb.create_task(session, title="second")
    child = kb.create_task(session, title="child", parents=[first, second])
    kb.complete_task(session, first, force=True)
    assert kb.get_task(session, child).status == "todo"
    task = kb.claim_task(session, second, claimer="w")
    assert task is not None
    kb.complete_task(session, second, claim_lock=task.claim_lock)
    assert kb.get_task(session, child).status == "ready"
    promoted = [e for e in kb.list_events(session, task_id=child) if e.kind == "promoted"]
    completed = [e for e in kb.list_events(session, task_id=second) if e.kind == "completed"]
    assert [e.payload for e in promoted] == [{"parent_id": second}]
    assert promoted[0].id == completed[0].id + 1  # same transaction, right after


def test_archiving_a_parent_counts_as_finished(session: Session) -> None:
    parent = kb.create_task(session, title="parent")
    child = kb.create_task(session, title="child", parents=[parent])
    kb.archive_task(session, parent)
    assert kb.get_task(session, child).status == "ready"


def test_reopening_a_done_parent_sends_unstarted_children_back_to_todo(
    session: Session,
) -> None:
    parent = kb.create_task(session, title="parent")
    waiting = kb.create_task(session, title="waiting", parents=[parent])
    started = kb.create_task(session, title="started", parents=[parent])
    kb.complete_task(session, parent, force=True)
    assert kb.claim_task(session, started, claimer="w") is not None
    reopened = kb.reopen_task(session, parent, reason="wrong numbers")
    assert (reopened.status, reopened.result, reopened.completed_at) == ("ready", None, None)
    assert kb.get_task(session, waiting).status == "todo"
    assert kb.get_task(session, started).status == "running"
    assert kinds(session, waiting)[-1] == "waiting"
    with pytest.raises(kb.InvalidTransition):
        kb.reopen_task(session, parent)


def test_triage_then_specify(session: Session) -> None:
    task = kb.create_task(session, title="vague idea", triage=True)
    assert kb.claim_task(session, task, claimer="w") is None
    assert kb.specify_task(session, task).status == "ready"
    with pytest.raises(kb.InvalidTransition):
        kb.specify_task(session, task)


def test_review_approve_and_request_changes(session: Session) -> None:
    task_id = kb.create_task(session, title="draft")
    claimed = kb.claim_task(session, task_id, claimer="writer")
    assert claimed is not None and claimed.claim_lock is not None
    token = claimed.claim_lock  # the Task object itself is refreshed by later calls
    in_review = kb.submit_for_review(session, task_id, claim_lock=token, result="v1")
    assert (in_review.status, in_review.claim_lock, in_review.result) == ("review", None, "v1")
    assert kb.latest_run(session, task_id).outcome == "submitted"  # type: ignore[union-attr]
    with pytest.raises(kb.ClaimLost):
        kb.complete_task(session, task_id, claim_lock=token)

    back = kb.request_changes(session, task_id, reason="cite sources", reviewer="ed")
    assert back.status == "ready"
    changes = [e for e in kb.list_events(session, task_id=task_id) if e.kind == "changes_requested"]
    assert changes[0].payload == {"reason": "cite sources", "reviewer": "ed"}

    again = kb.claim_task(session, task_id, claimer="writer")
    assert again is not None and again.claim_lock is not None
    kb.submit_for_review(session, task_id, claim_lock=again.claim_lock, result="v2")
    done = kb.approve_task(session, task_id, reviewer="ed")
    assert (done.status, done.result) == ("done", "v2")
    with pytest.raises(kb.InvalidTransition):
        kb.approve_task(session, task_id)


def test_archive_running_needs_force_and_voids_the_claim(session: Session) -> None:
    task_id = kb.create_task(session, title="t")
    claimed = kb.claim_task(session, task_id, claimer="w")
    assert claimed is not None and claimed.claim_lock is not None
    token = claimed.claim_lock
    before = snapshot(session)
    with pytest.raises(kb.InvalidTransition, match="'running' to 'archived' unless forced"):
        kb.archive_task(session, task_id)
    assert snapshot(session) == before
    archived = kb.archive_task(session, task_id, force=True)
    assert (archived.status, archived.claim_lock, archived.current_run_id) == (
        "archived",
        None,
        None,
    )
    assert kb.latest_run(session, task_id).outcome == "archived"  # type: ignore[union-attr]
    with pytest.raises(kb.ClaimLost):
        kb.heartbeat(session, task_id, claim_lock=token)
    assert kb.list_tasks(session) == []
    assert [t.id for t in kb.list_tasks(session, status="archived")] == [task_id]
    with pytest.raises(kb.InvalidTransition):
        kb.archive_task(session, task_id, force=True)


def test_edits_write_events_and_bad_edits_write_nothing(session: Session) -> None:
    task_id = kb.create_task(session, title="t")
    edited = kb.update_task(session, task_id, assignee="ana", priority=7)
    assert (edited.assignee, edited.priority, edited.version) == ("ana", 7, 2)
    assert kb.list_events(session, task_id=task_id)[-1].payload == {
        "assignee": "ana",
        "priority": 7,
    }
    before = snapshot(session)
    for bad in ({}, {"title": ""}, {"priority": "high"}, {"max_attempts": 0}):
        with pytest.raises(kb.InvalidInput):
            kb.update_task(session, task_id, **bad)
    with pytest.raises(kb.TaskNotFound):
        kb.update_task(session, 999, priority=1)
    assert snapshot(session) == before


def test_board_stats_counts_and_oldest_ready_age(session: Session) -> None:
    empty = kb.board_stats(session)
    assert set(empty["by_status"].values()) == {0}
    assert empty["oldest_ready_age_seconds"] is None
    kb.create_task(session, title="a", assignee="ana", tenant="x")
    kb.create_task(session, title="b", assignee="ana", tenant="x")
    done = kb.create_task(session, title="c", assignee="bo", tenant="y")
    kb.complete_task(session, done, force=True)
    stats = kb.board_stats(session)
    assert stats["by_status"]["ready"] == 2 and stats["by_status"]["done"] == 1
    assert stats["by_assignee"] == {"ana": 2}  # done tasks are not open work
    assert stats["oldest_ready_age_seconds"] >= 0
    assert kb.board_stats(session, tenant="y")["by_status"]["ready"] == 0


def test_board_cards_reads_each_column_best_first_up_to_the_cap_and_counts_all(
    session: Session,
) -> None:
    low = kb.create_task(session, title="low", tenant="x")
    high = kb.create_task(session, title="high", priority=5, tenant="x")
    also_low = kb.create_task(session, title="also low", tenant="y")
    finished = [kb.create_task(session, title=f"done {i}", tenant="x") for i in range(3)]
    for task_id in (finished[1], finished[0], finished[2]):  # the last finished comes first
        kb.complete_task(session, task_id, force=True)
        time.sleep(0.01)  # distinct completed_at (SQLite keeps milliseconds)
    gone = kb.create_task(session, title="gone")
    kb.archive_task(session, gone)

    cards, counts = kb.board_cards(session, per_column=2)
    assert [(t.status, t.id) for t in cards] == [
        ("ready", high),
        ("ready", low),
        ("done", finished[2]),
        ("done", finished[0]),
    ]
    assert counts == {s.value: 0 for s in kb.Status} | {"ready": 3, "done": 3, "archived": 1}

    every, _ = kb.board_cards(session)
    assert sorted(t.id for t in every) == sorted([low, high, also_low, *finished])
    scoped, scoped_counts = kb.board_cards(session, tenant="y", per_column=1)
    assert [t.id for t in scoped] == [also_low]
    assert scoped_counts["ready"] == 1 and scoped_counts["done"] == 0
    with pytest.raises(kb.InvalidInput):
        kb.board_cards(session, per_column=0)


def test_board_cards_reads_one_snapshot_while_a_task_moves(session: Session, db_url: str) -> None:
    """A claim that commits between two of the read's statements: the board still shows
    each task once, where the snapshot has it, with counts to match."""
    first = kb.create_task(session, title="first", priority=1)
    second = kb.create_task(session, title="second")
    mover = kb.connect(db_url)
    engine = session.get_bind()
    moved: list[int] = []

    def claim_before_the_running_column(*args: Any) -> None:
        parameters = str(args[3])  # the running column's, not the counts' (every status)
        if not moved and "running" in parameters and "ready" not in parameters:
            claimed = kb.claim_next(mover, claimer="mover")
            assert claimed is not None
            moved.append(claimed.id)

    event.listen(engine, "before_cursor_execute", claim_before_the_running_column)
    try:
        cards, counts = kb.board_cards(session)
    finally:
        event.remove(engine, "before_cursor_execute", claim_before_the_running_column)
        mover.close()
    assert moved == [first]
    assert sorted((t.id, t.status) for t in cards) == [(first, "ready"), (second, "ready")]
    assert (counts["ready"], counts["running"]) == (2, 0)
    assert kb.board_cards(session)[1]["running"] == 1  # the next read sees the claim
