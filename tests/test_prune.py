"""kb.prune: finished history only, in batches, dry run == real run, tailing stays honest.

Every test runs on SQLite and PostgreSQL (the ``session`` fixture).
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.models import TaskLink

NOW = timedelta(0)  # an age of zero: everything finished so far counts as old
FUTURE = datetime(2999, 1, 1)


def finish(session: Session, task_id: int) -> None:
    kb.complete_task(session, task_id, force=True)
    tick()


def tick() -> None:
    """Let the database clock (milliseconds on SQLite) pass what was just written, so an
    age of zero (NOW, strictly before the prune's now) counts it as old."""
    time.sleep(0.003)


def board_snapshot(session: Session) -> dict[int, tuple[str, set[int]]]:
    """task id -> (status, parent ids), for every task (archived ones included)."""
    parents: dict[int, set[int]] = {}
    for link in session.scalars(select(TaskLink)):
        parents.setdefault(link.child_id, set()).add(link.parent_id)
    found = {
        task.id: (task.status, parents.get(task.id, set()))
        for status in kb.Status
        for task in kb.list_tasks(session, status=status)
    }
    session.rollback()
    return found


def make_chain(session: Session, finished: int, live_children: int = 0) -> list[int]:
    """``finished`` done tasks; the first ``live_children`` of them get a todo child."""
    ids = [kb.create_task(session, title=f"t{i}") for i in range(finished)]
    for task_id in ids:
        finish(session, task_id)
    for parent in ids[:live_children]:
        child = kb.create_task(session, title=f"child of {parent}", parents=[parent])
        other = kb.create_task(session, title="unfinished other parent")
        kb.link_tasks(session, parent=other, child=child)
    return ids


# -- the property -------------------------------------------------------------------------

ACTIONS = st.sampled_from(["leave", "done", "archive", "claim", "block"])


@st.composite
def boards(draw: Any) -> list[tuple[str, list[int]]]:
    """Tasks in creation order: (what happens to it, indexes of earlier parents)."""
    size = draw(st.integers(min_value=1, max_value=8))
    return [
        (
            draw(ACTIONS),
            draw(st.lists(st.integers(0, i - 1), max_size=2, unique=True)) if i else [],
        )
        for i in range(size)
    ]


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    board=boards(),
    batch=st.integers(1, 4),
    done=st.booleans(),
    archived=st.booleans(),
    old_events=st.booleans(),
)
def test_prune_never_removes_an_unfinished_task_or_a_needed_parent(
    session: Session,
    board: list[tuple[str, list[int]]],
    batch: int,
    done: bool,
    archived: bool,
    old_events: bool,
) -> None:
    ids: list[int] = []
    for action, parent_indexes in board:
        task_id = kb.create_task(session, title="t", parents=[ids[i] for i in parent_indexes])
        ids.append(task_id)
        if action == "done":
            finish(session, task_id)
        elif action == "archive":
            kb.archive_task(session, task_id, force=True)
        elif action == "claim":
            kb.claim_task(session, task_id, claimer="w")
        elif action == "block":
            kb.block_task(session, task_id, reason="why")
    if not (done or archived or old_events):
        done = True
    before = board_snapshot(session)
    events_before = {e.id: e.task_id for e in kb.list_events(session)}
    dry = kb.prune(
        session,
        done_before=NOW if done else None,
        archived_before=NOW if archived else None,
        events_before=NOW if old_events else None,
        batch=batch,
        dry_run=True,
    )

    result = kb.prune(
        session,
        done_before=NOW if done else None,
        archived_before=NOW if archived else None,
        events_before=NOW if old_events else None,
        batch=batch,
    )

    after = board_snapshot(session)
    gone = set(before) - set(after)
    assert result.tasks == len(gone)
    assert dry.removed() == result.removed()
    for task_id, (status, parents) in before.items():
        if status not in ("done", "archived"):
            assert task_id in after, f"unfinished task {task_id} ({status}) was pruned"
            assert parents <= set(after), f"a parent of unfinished {task_id} was pruned"
            assert after[task_id] == (status, parents)
        if status == "done" and not done:
            assert task_id in after
        if status == "archived" and not archived:
            assert task_id in after
    kept_events = {e.id: e.task_id for e in kb.list_events(session)}
    for event_id, task_id in events_before.items():
        if before[task_id][0] not in ("done", "archived"):
            assert event_id in kept_events, f"event {event_id} of live task {task_id} removed"


# -- batches ------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2, 3, 5, 6])
def test_batch_boundaries_remove_every_prunable_task_exactly_once(
    session: Session, batch: int
) -> None:
    ids = make_chain(session, 5)
    keep = kb.create_task(session, title="still ready")

    result = kb.prune(session, done_before=NOW, batch=batch)

    assert result.tasks == 5
    assert result.runs == 0
    assert result.events == 10  # created + completed each
    # one transaction per batch that removed something (a full last batch needs one
    # more, empty, look to know it was the last)
    assert result.batches == -(-5 // batch)
    assert [t.id for t in kb.list_tasks(session)] == [keep]
    entries = [e for e in kb.list_board_events(session) if e.kind == "pruned"]
    assert sum(e.payload["tasks"] for e in entries) == 5
    assert max(e.events_through for e in entries) == 10  # the highest event id removed
    assert not set(ids) & {t.id for t in kb.list_tasks(session, status="done")}


def test_events_before_removes_old_events_of_finished_tasks_only(session: Session) -> None:
    done = make_chain(session, 1)[0]
    live = kb.create_task(session, title="live")
    kb.claim_task(session, live, claimer="w")

    result = kb.prune(session, events_before=NOW, batch=1)

    assert result.events == 2 and result.tasks == 0 and result.batches == 2
    assert kb.list_events(session, task_id=done) == []
    assert [e.kind for e in kb.list_events(session, task_id=live)] == ["created", "claimed"]
    assert kb.get_task(session, done).status == "done"


def test_a_parent_an_unfinished_child_counts_on_stays(session: Session) -> None:
    parents = make_chain(session, 3, live_children=1)

    result = kb.prune(session, done_before=NOW, batch=1)

    assert result.tasks == 2
    assert kb.get_task(session, parents[0]).status == "done"
    with pytest.raises(kb.TaskNotFound):
        kb.get_task(session, parents[1])


def test_cutoffs_spare_recent_tasks(session: Session) -> None:
    make_chain(session, 2)
    assert kb.prune(session, done_before=timedelta(days=1)).tasks == 0
    assert kb.prune(session, done_before=datetime(2000, 1, 1)).tasks == 0
    assert kb.prune(session, done_before=FUTURE).tasks == 2


def test_dry_run_equals_the_real_run_and_writes_nothing(session: Session) -> None:
    ids = make_chain(session, 4, live_children=1)
    archived = kb.create_task(session, title="archived")
    kb.add_comment(session, archived, body="note")
    kb.archive_task(session, archived)
    linked = kb.create_task(session, title="child of a pruned parent", parents=[ids[1]])
    finish(session, linked)
    before = board_snapshot(session)
    options: dict[str, Any] = {"done_before": NOW, "archived_before": NOW, "events_before": NOW}

    dry = kb.prune(session, batch=2, dry_run=True, **options)

    assert board_snapshot(session) == before
    assert kb.list_board_events(session) == []
    real = kb.prune(session, batch=2, **options)
    assert dry.dry_run and not real.dry_run
    assert dry.removed() == real.removed()
    assert real.tasks == 5 and real.comments == 1 and real.links == 1


def test_prune_rejects_bad_arguments_and_writes_nothing(session: Session) -> None:
    make_chain(session, 1)
    with pytest.raises(kb.InvalidInput):
        kb.prune(session)
    with pytest.raises(kb.InvalidInput):
        kb.prune(session, done_before=NOW, batch=0)
    with pytest.raises(kb.InvalidInput):
        kb.prune(session, done_before=timedelta(seconds=-1))
    with pytest.raises(kb.InvalidInput):
        kb.prune(session, done_before="yesterday")  # type: ignore[arg-type]
    assert len(kb.list_tasks(session, status="done")) == 1


# -- tailing ------------------------------------------------------------------------------


def test_a_follower_whose_cursor_points_into_pruned_events_is_told(session: Session) -> None:
    first = make_chain(session, 2)
    seen = [e.id for e in kb.list_events(session, limit=1)]
    live = kb.create_task(session, title="after")

    kb.prune(session, done_before=NOW)

    with pytest.raises(kb.EventsPruned) as told:
        kb.list_events(session, after_id=seen[-1])
    assert told.value.after_id == seen[-1]
    assert told.value.pruned_through == 4  # created+completed of the two pruned tasks
    # resuming from the horizon reads what is left, and nothing is refused after it
    rest = kb.list_events(session, after_id=told.value.pruned_through)
    assert [(e.task_id, e.kind) for e in rest] == [(live, "created")]
    assert kb.list_events(session, after_id=rest[-1].id) == []
    assert first  # the pruned tasks' history is in the board log instead
    assert [e.kind for e in kb.list_board_events(session)] == ["pruned"]


def test_a_follower_ahead_of_the_prune_never_notices(session: Session) -> None:
    make_chain(session, 2)
    last = kb.list_events(session)[-1].id
    kb.prune(session, done_before=NOW)
    assert kb.list_events(session, after_id=last) == []
    new = kb.create_task(session, title="new")
    assert [e.task_id for e in kb.list_events(session, after_id=last)] == [new]


def test_a_follower_polling_across_a_prune_sees_every_event_or_is_told(
    db_url: str,
) -> None:
    """Writer, pruner and follower on their own sessions at once: the follower either
    gets each event or an EventsPruned for the range it missed, never a silent hole."""
    setup = kb.connect(db_url)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        s = kb.connect(db_url)
        try:
            for i in range(60):
                task_id = kb.create_task(s, title=f"w{i}")
                finish(s, task_id)
        except BaseException as error:
            errors.append(error)
        finally:
            stop.set()
            s.close()

    def prune_loop() -> None:
        s = kb.connect(db_url)
        try:
            while not stop.is_set():
                kb.prune(s, done_before=NOW, batch=3)
                time.sleep(0.01)
        except BaseException as error:
            errors.append(error)
        finally:
            s.close()

    threads = [threading.Thread(target=write), threading.Thread(target=prune_loop)]
    for thread in threads:
        thread.start()
    follower = kb.connect(db_url)
    last, seen, told = 0, [], 0
    seen_list: list[int] = seen
    while True:
        finished = stop.is_set()
        try:
            batch = kb.list_events(follower, after_id=last)
        except kb.EventsPruned as gap:
            told = max(told, gap.pruned_through)
            last = gap.pruned_through
            continue
        seen += [e.id for e in batch]
        if batch:
            last = batch[-1].id
        if finished:
            break
    for thread in threads:
        thread.join()
    assert not errors
    assert seen_list == sorted(set(seen_list))
    # An event still there that the follower never saw lies below a horizon it was told.
    remaining = {e.id for e in kb.list_events(setup)}
    skipped = remaining - set(seen_list)
    assert all(event_id <= told for event_id in skipped), (skipped, told)
    setup.close()
    follower.close()


# -- the board-level log's own retention ---------------------------------------------------


def test_events_before_removes_old_board_log_entries_but_the_horizons(session: Session) -> None:
    for i in range(3):
        finish(session, kb.create_task(session, title=f"t{i}"))
    kb.prune(session, done_before=NOW, batch=1)  # three `pruned` entries, one per task
    doomed = kb.create_task(session, title="deleted")
    kb.delete_task(session, doomed, reason="test")
    tick()
    entries = kb.list_board_events(session)
    assert [e.kind for e in entries] == ["pruned", "pruned", "pruned", "deleted"]
    horizon = max(e.events_through or 0 for e in entries)
    keeper = max(e.id for e in entries if e.events_through == horizon)
    live = kb.create_task(session, title="live")

    dry = kb.prune(session, events_before=NOW, dry_run=True)
    result = kb.prune(session, events_before=NOW, batch=2)

    assert dry.board_events == result.board_events == 3
    assert result.tasks == result.events == 0  # the live task and its events stay
    assert [e.id for e in kb.list_board_events(session)] == [keeper]
    with pytest.raises(kb.EventsPruned) as told:  # followers below it are still told
        kb.list_events(session, after_id=1)
    assert told.value.pruned_through == horizon
    assert [e.task_id for e in kb.list_events(session, after_id=horizon)] == [live]


def test_board_log_entries_younger_than_the_cutoff_stay(session: Session) -> None:
    finish(session, kb.create_task(session, title="t"))
    kb.prune(session, done_before=NOW)
    kb.delete_task(session, kb.create_task(session, title="gone"))
    before = [e.id for e in kb.list_board_events(session)]

    result = kb.prune(session, events_before=timedelta(days=1))

    assert result.board_events == 0
    assert [e.id for e in kb.list_board_events(session)] == before
