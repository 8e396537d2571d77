"""The backend seam: every backend against the same expectations, and the protocols a
backend states (see kanban_orm.backends).

These tests ask the backend what it can do (``uncontested_completion``, ...), never the
dialect's name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import backends
from kanban_orm.backends.postgresql import WAIT_MAKERS
from kanban_orm.states import Status, sources_of

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_no_dialect_checks_outside_the_backend_layer() -> None:
    package = REPO_ROOT / "kanban_orm"
    found = []
    for path in package.rglob("*.py"):
        if "backends" in path.relative_to(package).parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(word in line for word in ("dialect.name", "is_postgresql", "is_sqlite")):
                found.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert found == []


def test_every_engine_has_a_backend(engine: Engine) -> None:
    backend = backends.of(engine)
    assert backend.name == engine.dialect.name
    assert backends.named(backend.name) is backend


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(backends.UnsupportedBackend):
        backends.named("oracle")
    with pytest.raises(kb.InvalidInput, match="runs on SQLite"):
        kb.create_engine("oracle://scott@localhost/orcl")


# -- the one-statement completion protocol ------------------------------------------------
# Where a backend completes a claim in one statement without looking for waiting children
# (Backend.uncontested_completion), every transition that can make a child wait on a
# parent must rewrite the parent's row first (PostgreSQLBackend's docstring). Each
# scenario below ends with `child` waiting on a running `parent`; the parent's physical
# row (ctid) must have changed during the transition.


def _running_parent(session: Session) -> int:
    parent = kb.create_task(session, title="parent")
    assert kb.claim_task(session, parent, claimer="w") is not None
    return parent


def _create_with_parent(session: Session, parent: int) -> Callable[[], int]:
    return lambda: kb.create_task(session, title="child", parents=[parent])


def _link(session: Session, parent: int) -> Callable[[], int]:
    child = kb.create_task(session, title="child")
    return lambda: kb.link_tasks(session, parent, child).id


def _unblock(session: Session, parent: int) -> Callable[[], int]:
    child = kb.create_task(session, title="child", parents=[parent])
    kb.block_task(session, child, reason="hold")
    return lambda: kb.unblock_task(session, child).id


def _specify(session: Session, parent: int) -> Callable[[], int]:
    child = kb.create_task(session, title="child", parents=[parent], triage=True)
    return lambda: kb.specify_task(session, child).id


def _request_changes(session: Session, parent: int) -> Callable[[], int]:
    child = kb.create_task(session, title="child")
    held = kb.claim_task(session, child, claimer="w2")
    assert held is not None and held.claim_lock is not None
    kb.submit_for_review(session, child, claim_lock=held.claim_lock)
    kb.link_tasks(session, parent, child)  # a task in review does not wait
    return lambda: kb.request_changes(session, child, reason="again").id


def _reopen(session: Session, parent: int) -> Callable[[], int]:
    child = kb.create_task(session, title="child")
    held = kb.claim_task(session, child, claimer="w2")
    assert held is not None
    kb.complete_task(session, child, claim_lock=held.claim_lock)
    kb.link_tasks(session, parent, child)  # a finished task does not wait
    return lambda: kb.reopen_task(session, child).id


#: Each wait-maker of WAIT_MAKERS, and the state the child waits from (None: created).
SCENARIOS: dict[str, tuple[Status | None, Callable[[Session, int], Callable[[], int]]]] = {
    "create_task(parents=...)": (None, _create_with_parent),
    "link_tasks": (Status.READY, _link),
    "unblock_task": (Status.BLOCKED, _unblock),
    "specify_task": (Status.TRIAGE, _specify),
    "request_changes": (Status.REVIEW, _request_changes),
    "reopen_task": (Status.DONE, _reopen),
}


def test_every_way_into_todo_is_a_listed_wait_maker() -> None:
    # A new move into todo in the transition table is a new wait-maker: it must be
    # listed on the backend and covered here before this passes.
    assert set(SCENARIOS) == set(WAIT_MAKERS)
    covered = {source for source, _ in SCENARIOS.values() if source is not None}
    assert set(sources_of(Status.TODO)) <= covered


def _row_version(session: Session, task_id: int) -> str:
    # PostgreSQL's physical row address: a rewrite of the row moves it.
    return str(
        session.execute(
            sa.text("SELECT CAST(ctid AS TEXT) FROM kanban_tasks WHERE id = :id"), {"id": task_id}
        ).scalar_one()
    )


@pytest.mark.parametrize("maker", sorted(SCENARIOS))
def test_wait_makers_rewrite_the_parent_row(session: Session, maker: str) -> None:
    if backends.of(session).uncontested_completion(one=True) is None:
        pytest.skip("this backend completes in a transaction that looks for children")
    parent = _running_parent(session)
    _, scenario = SCENARIOS[maker]
    transition = scenario(session, parent)
    before = _row_version(session, parent)
    session.commit()
    child = transition()
    assert kb.get_task(session, child).status == Status.TODO.value
    assert _row_version(session, parent) != before, f"{maker} did not rewrite the parent row"
    session.commit()
