"""delete_task and reassign_task: guards, children, events and the board log.

Every test runs on SQLite and PostgreSQL (the ``session`` fixture).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

import kanban_orm as kb


def test_delete_removes_the_task_and_its_history_and_logs_it(session: Session) -> None:
    task_id = kb.create_task(session, title="doomed", assignee="ana", tenant="t1")
    claimed = kb.claim_task(session, task_id, claimer="w")
    assert claimed is not None
    kb.fail_task(session, task_id, claim_lock=claimed.claim_lock, error="boom")
    kb.add_comment(session, task_id, body="why")
    last_event = kb.list_events(session, task_id=task_id)[-1].id

    entry_id = kb.delete_task(session, task_id, reason="duplicate", deleted_by="ana")

    with pytest.raises(kb.TaskNotFound):
        kb.get_task(session, task_id)
    assert kb.list_events(session, task_id=task_id) == []
    [entry] = kb.list_board_events(session)
    assert entry.id == entry_id
    assert (entry.kind, entry.task_id, entry.events_through) == ("deleted", task_id, last_event)
    assert entry.payload["title"] == "doomed"
    assert entry.payload["reason"] == "duplicate"
    assert entry.payload["deleted_by"] == "ana"
    assert entry.payload["status"] == "ready"
    assert (entry.payload["runs"], entry.payload["comments"]) == (1, 1)


def test_delete_refuses_a_running_task_unless_forced(session: Session) -> None:
    task_id = kb.create_task(session, title="busy")
    claimed = kb.claim_task(session, task_id, claimer="w")
    assert claimed is not None

    with pytest.raises(kb.InvalidTransition, match="unless forced"):
        kb.delete_task(session, task_id)
    assert kb.get_task(session, task_id).status == "running"  # a rejected call wrote nothing
    assert kb.list_board_events(session) == []

    kb.delete_task(session, task_id, force=True)
    [entry] = kb.list_board_events(session)
    assert entry.payload["forced"] is True
    assert entry.payload["released_run_id"] == claimed.current_run_id
    # the holder's claim died with the task
    with pytest.raises(kb.TaskNotFound):
        kb.complete_task(session, task_id, claim_lock=claimed.claim_lock)


def test_delete_a_missing_task(session: Session) -> None:
    with pytest.raises(kb.TaskNotFound):
        kb.delete_task(session, 999)
    with pytest.raises(kb.InvalidInput):
        kb.delete_task(session, 0)


def test_deleting_an_unfinished_parent_blocks_the_child_waiting_for_it(session: Session) -> None:
    parent = kb.create_task(session, title="parent")
    child = kb.create_task(session, title="child", parents=[parent])
    assert kb.get_task(session, child).status == "todo"

    kb.delete_task(session, parent)

    task = kb.get_task(session, child)
    assert task.status == "blocked"
    assert task.block_reason == f"parent {parent} was deleted before it finished"
    last = kb.list_events(session, task_id=child)[-1]
    assert (last.kind, last.payload["parent_id"]) == ("blocked", parent)
    assert kb.list_links(session, task_id=child).parents == []


def test_deleting_a_finished_parent_only_unlinks_its_children(session: Session) -> None:
    parent = kb.create_task(session, title="parent")
    child = kb.create_task(session, title="child", parents=[parent])
    kb.complete_task(session, parent, force=True)
    assert kb.get_task(session, child).status == "ready"

    kb.delete_task(session, parent)

    assert kb.get_task(session, child).status == "ready"
    last = kb.list_events(session, task_id=child)[-1]
    assert last.kind == "unlinked"
    assert last.payload == {"parent_id": parent, "status": "ready", "deleted": True}


def test_a_follower_behind_a_deleted_task_is_told(session: Session) -> None:
    first = kb.create_task(session, title="first")
    doomed = kb.create_task(session, title="doomed")
    cursor = kb.list_events(session, task_id=first)[-1].id

    kb.delete_task(session, doomed)

    with pytest.raises(kb.EventsPruned):
        kb.list_events(session, after_id=cursor)


def test_reassign_records_from_and_to(session: Session) -> None:
    task_id = kb.create_task(session, title="t", assignee="ana")

    task = kb.reassign_task(session, task_id, assignee="bob", by="lead")

    assert task.assignee == "bob"
    assert task.version == 2
    event = kb.list_events(session, task_id=task_id)[-1]
    assert event.kind == "reassigned"
    assert event.payload == {"from": "ana", "to": "bob", "by": "lead"}


def test_reassigning_a_running_task_keeps_its_claim(session: Session) -> None:
    task_id = kb.create_task(session, title="t", assignee="ana")
    claimed = kb.claim_task(session, task_id, claimer="w")
    assert claimed is not None

    task = kb.reassign_task(session, task_id, assignee=None)

    assert (task.status, task.claim_lock, task.assignee) == ("running", claimed.claim_lock, None)
    event = kb.list_events(session, task_id=task_id)[-1]
    assert (event.kind, event.run_id) == ("reassigned", claimed.current_run_id)
    done = kb.complete_task(session, task_id, claim_lock=claimed.claim_lock)
    assert done.status == "done"


def test_reassigning_to_the_same_assignee_records_nothing(session: Session) -> None:
    task_id = kb.create_task(session, title="t", assignee="ana")
    before = kb.list_events(session)

    assert kb.reassign_task(session, task_id, assignee="ana").version == 1

    assert [e.id for e in kb.list_events(session)] == [e.id for e in before]


def test_reassign_rejects_bad_input(session: Session) -> None:
    with pytest.raises(kb.TaskNotFound):
        kb.reassign_task(session, 12345, assignee="bob")
    task_id = kb.create_task(session, title="t")
    with pytest.raises(kb.InvalidInput):
        kb.reassign_task(session, task_id, assignee="x" * 500)
    assert kb.get_task(session, task_id).assignee is None


def test_delete_and_prune_join_the_callers_transaction(session: Session) -> None:
    kept = kb.create_task(session, title="kept")
    done = kb.create_task(session, title="done")
    kb.complete_task(session, done, force=True)

    with session.begin():
        kb.delete_task(session, kept)
        kb.prune(session, done_before=timedelta(0))
        session.rollback()

    assert {t.id for t in kb.list_tasks(session)} == {kept, done}
    assert kb.list_board_events(session) == []
