"""A consistent public API: swappable ids keyword-only, task_id passed one way, heartbeat
returning the lease expiry, migration helpers named for what they do; the old spellings
still work for one release, with a DeprecationWarning."""

from __future__ import annotations

import inspect
from datetime import datetime

import pytest
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import serialize, worker


def keyword_only(function: object) -> set[str]:
    parameters = inspect.signature(function).parameters.values()  # type: ignore[arg-type]
    return {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def test_signatures_say_keyword_only() -> None:
    assert {"parent", "child"} <= keyword_only(kb.link_tasks)
    assert {"parent", "child"} <= keyword_only(kb.unlink_tasks)
    for function in (kb.list_runs, kb.list_comments, kb.list_links, kb.list_events):
        assert "task_id" in keyword_only(function), function
    assert "tenant" in keyword_only(kb.board_stats)


def test_link_and_unlink_by_keyword(session: Session) -> None:
    parent = kb.create_task(session, title="parent")
    child = kb.create_task(session, title="child")
    linked = kb.link_tasks(session, parent=parent, child=child)
    assert (linked.id, linked.status) == (child, "todo")
    assert kb.list_links(session, task_id=child).parents == [parent]
    unlinked = kb.unlink_tasks(session, parent=parent, child=child)
    assert (unlinked.id, unlinked.status) == (child, "ready")


def test_old_link_spellings_warn_and_still_work(session: Session) -> None:
    parent = kb.create_task(session, title="parent")
    child = kb.create_task(session, title="child")
    with pytest.warns(DeprecationWarning, match=r"link_tasks\(session, parent=\.\.\., child="):
        kb.link_tasks(session, parent, child)
    assert kb.list_links(session, task_id=child).parents == [parent]
    with pytest.warns(DeprecationWarning, match="unlink_tasks"):
        kb.unlink_tasks(session, parent_id=parent, child_id=child)
    assert kb.list_links(session, task_id=child).parents == []
    with pytest.raises(TypeError, match="multiple values for parent"):
        kb.link_tasks(session, parent, child, parent=parent)  # type: ignore[call-arg]


def test_list_functions_take_task_id_by_keyword_and_warn_when_positional(
    session: Session,
) -> None:
    task_id = kb.create_task(session, title="t")
    kb.add_comment(session, task_id, body="hello")
    assert kb.list_runs(session, task_id=task_id) == []
    assert [c.body for c in kb.list_comments(session, task_id=task_id)] == ["hello"]
    assert {e.task_id for e in kb.list_events(session, task_id=task_id)} == {task_id}
    with pytest.warns(DeprecationWarning, match=r"list_runs\(session, task_id=\.\.\.\)"):
        assert kb.list_runs(session, task_id) == []  # type: ignore[misc]
    with pytest.warns(DeprecationWarning, match="list_comments"):
        assert len(kb.list_comments(session, task_id)) == 1  # type: ignore[misc]
    with pytest.warns(DeprecationWarning, match="list_links"):
        assert kb.list_links(session, task_id).parents == []  # type: ignore[misc]


def test_board_stats_tenant_by_keyword(session: Session) -> None:
    kb.create_task(session, title="a", tenant="acme")
    kb.create_task(session, title="b", tenant="other")
    assert kb.board_stats(session, tenant="acme")["by_status"]["ready"] == 1
    with pytest.warns(DeprecationWarning, match="board_stats"):
        stats = kb.board_stats(session, "acme")  # type: ignore[misc]
    assert stats["by_status"]["ready"] == 1


def test_heartbeat_returns_the_new_lease_expiry(session: Session) -> None:
    task_id = kb.create_task(session, title="t")
    task = kb.claim_task(session, task_id, claimer="w", ttl_seconds=60)
    assert task is not None and task.claim_lock is not None and task.claim_expires is not None
    expires = kb.heartbeat(session, task_id, claim_lock=task.claim_lock, ttl_seconds=3600)
    assert isinstance(expires, datetime) and expires
    assert expires > task.claim_expires
    assert expires == kb.get_task(session, task_id).claim_expires


def test_migration_helpers_say_they_are_about_the_schema(db_url: str) -> None:
    assert kb.schema_check is kb.check and kb.schema_current is kb.current
    assert {"schema_check", "schema_current", "check", "current"} <= set(kb.__all__)
    kb.schema_check(db_url)
    assert kb.schema_current(db_url) == kb.head()


def test_json_shapes_have_a_module_of_their_own() -> None:
    assert serialize.task_json is worker.task_json  # the old import still works
    assert serialize.iso(datetime(2024, 5, 1, 12)) == "2024-05-01T12:00:00Z"
    assert set(serialize.__all__) == {"comment_json", "event_json", "iso", "run_json", "task_json"}


@pytest.mark.parametrize("bind", ["sqlite:///kanban.db", None, 5])
def test_session_factory_refuses_what_is_not_an_engine(bind: object) -> None:
    with pytest.raises(kb.InvalidInput, match="session_factory takes an Engine"):
        kb.session_factory(bind)  # type: ignore[arg-type]
