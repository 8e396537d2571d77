"""The transition table (pure unit tests, no database)."""

from __future__ import annotations

import itertools

import pytest

from kanban_orm import queries
from kanban_orm.states import FINISHED, TRANSITIONS, Status, can_move, sources_of

ALL = list(Status)
PAIRS = list(itertools.product(ALL, ALL))


def test_every_status_has_exactly_one_row() -> None:
    assert set(TRANSITIONS) == set(Status)
    assert len(TRANSITIONS) == len(Status)


def test_every_row_names_only_known_states() -> None:
    for source, targets in TRANSITIONS.items():
        assert isinstance(targets, frozenset), source
        assert targets <= set(Status), source


def test_no_state_moves_to_itself() -> None:
    for status in Status:
        assert status not in TRANSITIONS[status]
        assert not can_move(status, status)


def test_status_values_are_the_lowercase_names() -> None:
    assert [s.value for s in Status] == [s.name.lower() for s in Status]
    assert Status.READY == "ready" and str(Status.RUNNING) == "running"


def test_archived_is_terminal_and_reachable_from_every_other_state() -> None:
    assert TRANSITIONS[Status.ARCHIVED] == frozenset()
    for status in Status:
        assert not can_move(Status.ARCHIVED, status)
        if status is not Status.ARCHIVED:
            assert can_move(status, Status.ARCHIVED), status


def test_finished_states_are_done_and_archived() -> None:
    assert frozenset({Status.DONE, Status.ARCHIVED}) == FINISHED


def test_every_state_but_archived_can_move_somewhere() -> None:
    for status in Status:
        assert bool(TRANSITIONS[status]) is (status is not Status.ARCHIVED)


def test_every_state_is_reachable_from_triage() -> None:
    seen = {Status.TRIAGE}
    frontier = [Status.TRIAGE]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(Status)


@pytest.mark.parametrize("target", ALL, ids=str)
def test_sources_of_agrees_with_the_table(target: Status) -> None:
    sources = sources_of(target)
    assert set(sources) == {s for s in Status if target in TRANSITIONS[s]}
    assert list(sources) == [s for s in TRANSITIONS if s in sources]  # table order
    assert len(sources) == len(set(sources))
    assert sources_of(target.value) == sources


def test_sources_of_the_main_targets() -> None:
    assert sources_of(Status.RUNNING) == (Status.READY,)
    assert Status.RUNNING in sources_of(Status.DONE)
    assert Status.DONE not in sources_of(Status.DONE)
    assert sources_of(Status.TRIAGE) == ()
    assert Status.ARCHIVED not in itertools.chain.from_iterable(sources_of(s) for s in Status)


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=str)
def test_can_move_is_membership_in_the_table(source: Status, target: Status) -> None:
    expected = target in TRANSITIONS[source]
    assert can_move(source, target) is expected
    assert can_move(source.value, target.value) is expected


LEGAL = [
    ("triage", "todo"),
    ("triage", "ready"),
    ("todo", "ready"),
    ("ready", "running"),
    ("running", "done"),
    ("running", "ready"),
    ("running", "blocked"),
    ("running", "review"),
    ("review", "done"),
    ("blocked", "ready"),
    ("blocked", "todo"),
    ("done", "archived"),
]
ILLEGAL = [
    ("todo", "running"),  # a claim only takes a ready task
    ("triage", "running"),
    ("blocked", "running"),
    ("done", "running"),
    ("done", "blocked"),
    ("archived", "ready"),
    ("ready", "review"),  # review follows work
    ("review", "running"),
    ("ready", "ready"),
]


@pytest.mark.parametrize(("source", "target"), LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
def test_the_lifecycle_moves_are_legal(source: str, target: str) -> None:
    assert can_move(source, target)


@pytest.mark.parametrize(("source", "target"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_shortcuts_are_illegal(source: str, target: str) -> None:
    assert not can_move(source, target)


def test_unknown_states_are_refused() -> None:
    with pytest.raises(ValueError):
        can_move("ready", "finished")
    with pytest.raises(ValueError):
        can_move("READY", "running")
    with pytest.raises(ValueError):
        sources_of("nowhere")


def test_every_move_the_sql_hard_wires_is_in_the_table() -> None:
    assert queries._WIRED_MOVES
    for source, target in queries._WIRED_MOVES:
        assert can_move(source, target), (source, target)
