"""Task states and the one transition table.

Every module that moves a task consults :data:`TRANSITIONS` (directly or through
:func:`sources_of`), so the legal moves of a card are readable in one place.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    TRIAGE = "triage"
    TODO = "todo"
    READY = "ready"
    RUNNING = "running"
    REVIEW = "review"
    BLOCKED = "blocked"
    DONE = "done"
    ARCHIVED = "archived"


S = Status

#: from-state -> the states a task may move to from there.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.TRIAGE: frozenset({S.TODO, S.READY, S.BLOCKED, S.DONE, S.ARCHIVED}),
    # todo: waiting for its parents (or parked by hand)
    S.TODO: frozenset({S.READY, S.BLOCKED, S.DONE, S.ARCHIVED}),
    # ready -> todo when a parent is reopened before the child started
    S.READY: frozenset({S.RUNNING, S.TODO, S.BLOCKED, S.DONE, S.ARCHIVED}),
    # running -> ready: failed with retries left, released, or its lease reclaimed
    S.RUNNING: frozenset({S.DONE, S.READY, S.BLOCKED, S.REVIEW, S.ARCHIVED}),
    # review -> ready (or todo while a parent is unfinished): changes requested
    S.REVIEW: frozenset({S.DONE, S.READY, S.TODO, S.BLOCKED, S.ARCHIVED}),
    S.BLOCKED: frozenset({S.READY, S.TODO, S.DONE, S.ARCHIVED}),
    # done -> ready / todo: reopened
    S.DONE: frozenset({S.READY, S.TODO, S.ARCHIVED}),
    S.ARCHIVED: frozenset(),
}

#: States a task can no longer leave by doing work; children wait for these.
FINISHED: frozenset[Status] = frozenset({S.DONE, S.ARCHIVED})


def can_move(from_status: Status | str, to_status: Status | str) -> bool:
    return Status(to_status) in TRANSITIONS[Status(from_status)]


def sources_of(to_status: Status | str) -> tuple[Status, ...]:
    """Every state from which ``to_status`` is reachable, in table order.

    Guarded UPDATEs use this as their ``status IN (...)`` clause, so the SQL
    and the table cannot disagree.
    """
    target = Status(to_status)
    return tuple(s for s, targets in TRANSITIONS.items() if target in targets)
