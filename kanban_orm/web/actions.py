"""The board's moves: which transition a drop or a drawer button calls.

The transition table decides what is allowed (:data:`kanban_orm.TRANSITIONS`); this
module only names, for each allowed move, the kernel function an operator may call
from the board. The server checks both before calling it, and the function's own
guarded UPDATE decides last, so a stale page can never move a card the table forbids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.states import Status

#: The name the board writes on the events its actions cause.
ACTOR = "web"


@dataclass(frozen=True)
class Move:
    """One move the board offers from a task's state."""

    to: Status
    label: str
    reason: str = "none"  # "none", "optional" or "required"
    confirm: str | None = None  # a question the browser asks first


Call = Callable[[Session, kb.Task, str | None], kb.Task]


def _block(s: Session, task: kb.Task, reason: str | None) -> kb.Task:
    # A running task is blocked with the claim that holds it now: a worker that claims
    # it again meanwhile holds another token, and the call then fails with ClaimLost.
    return kb.block_task(s, task.id, reason=reason or "", claim_lock=task.claim_lock)


def _release(s: Session, task: kb.Task, reason: str | None) -> kb.Task:
    return kb.release_task(s, task.id, claim_lock=task.claim_lock or "", reason=reason)


def _archive(s: Session, task: kb.Task, reason: str | None) -> kb.Task:
    return kb.archive_task(s, task.id, force=task.status == Status.RUNNING)


def _specify(s: Session, task: kb.Task, reason: str | None) -> kb.Task:
    return kb.specify_task(s, task.id)


def _unblock(s: Session, task: kb.Task, reason: str | None) -> kb.Task:
    return kb.unblock_task(s, task.id)


def _approve(s: Session, task: kb.Task, reason: str | None) -> kb.Task:
    return kb.approve_task(s, task.id, reviewer=ACTOR)


def _request_changes(s: Session, task: kb.Task, reason: str | None) -> kb.Task:
    return kb.request_changes(s, task.id, reason=reason or "", reviewer=ACTOR)


def _reopen(s: Session, task: kb.Task, reason: str | None) -> kb.Task:
    return kb.reopen_task(s, task.id, reason=reason)


_LANDS = "ready, or todo while a parent is unfinished"


def _moves_from(status: Status) -> dict[Status, tuple[Move, Call]]:
    """The board's action for each move out of ``status`` it offers (a subset of the
    table's: claiming, completing and submitting are a worker's, not an operator's)."""
    moves: dict[Status, tuple[Move, Call]] = {}
    if status is Status.RUNNING:
        moves[Status.READY] = (
            Move(
                Status.READY,
                "Release claim",
                "optional",
                "Release this task's claim? Its worker loses the task.",
            ),
            _release,
        )
        moves[Status.BLOCKED] = (
            Move(
                Status.BLOCKED, "Block", "required", "Block this running task? Its worker loses it."
            ),
            _block,
        )
        moves[Status.ARCHIVED] = (
            Move(
                Status.ARCHIVED,
                "Archive",
                confirm="Archive this running task? Its worker's claim is voided.",
            ),
            _archive,
        )
        return moves
    if status is not Status.ARCHIVED and status is not Status.BLOCKED:
        moves[Status.BLOCKED] = (Move(Status.BLOCKED, "Block", "required"), _block)
    if status is Status.TRIAGE:
        for to in (Status.READY, Status.TODO):
            moves[to] = (Move(to, f"Specify ({_LANDS})"), _specify)
    if status is Status.BLOCKED:
        for to in (Status.READY, Status.TODO):
            moves[to] = (Move(to, f"Unblock ({_LANDS})"), _unblock)
    if status is Status.REVIEW:
        moves[Status.DONE] = (Move(Status.DONE, "Approve"), _approve)
        for to in (Status.READY, Status.TODO):
            moves[to] = (Move(to, f"Request changes ({_LANDS})", "required"), _request_changes)
    if status is Status.DONE:
        for to in (Status.READY, Status.TODO):
            moves[to] = (Move(to, f"Reopen ({_LANDS})", "optional"), _reopen)
    if status is not Status.ARCHIVED:
        moves[Status.ARCHIVED] = (
            Move(Status.ARCHIVED, "Archive", confirm="Archive this task?"),
            _archive,
        )
    allowed = kb.TRANSITIONS[status]
    return {to: entry for to, entry in moves.items() if to in allowed}


def available(status: str) -> list[Move]:
    """The moves the drawer offers for a task in ``status``, one per action (a move that
    lands in ready or todo is offered once, as its ready target)."""
    seen: set[str] = set()
    offered = []
    for move, _call in _moves_from(Status(status)).values():
        if move.label not in seen:
            seen.add(move.label)
            offered.append(move)
    return offered


def move(s: Session, task_id: int, to: str) -> tuple[kb.Task, Move, Call]:
    """Check a move of ``task_id`` to ``to`` and return the task, the move and its call.

    Raises :class:`kb.InvalidTransition` when the table forbids the move (its message
    is what the browser shows), :class:`kb.InvalidInput` when the board has no action
    for an allowed move or the target is not a status, :class:`kb.TaskNotFound`.
    """
    try:
        target = Status(to)
    except ValueError:
        raise kb.InvalidInput(f"{to!r} is not a status") from None
    task = kb.get_task(s, task_id)
    current = Status(task.status)
    if target not in kb.TRANSITIONS[current]:
        raise kb.InvalidTransition(task_id, current, target)
    entry = _moves_from(current).get(target)
    if entry is None:
        raise kb.InvalidInput(
            f"task {task_id}: moving a {current.value!r} task to {target.value!r} is a "
            "worker's move (claim, complete or submit), not one the board makes"
        )
    return task, entry[0], entry[1]


class Ask(Exception):
    """Not an error: the move needs an answer first (a reason, or a confirmation), and
    the browser should ask its user and send the move again with it. Never leaves the
    web package: the server answers it with HTTP 428."""

    def __init__(self, ask: str, question: str) -> None:
        super().__init__(question)
        self.ask = ask
        self.question = question


def apply(
    s: Session, task_id: int, to: str, reason: str | None, *, confirmed: bool = False
) -> kb.Task:
    """Move ``task_id`` to ``to`` with the board's action for that move; the moved task.

    Raises :class:`Ask` when the move needs a reason or (unless ``confirmed``) a
    confirmation, what :func:`move` raises, and whatever the kernel's transition raises
    (:class:`kb.ClaimLost` when a running task's claim changed hands meanwhile,
    :class:`kb.InvalidTransition` when the task moved meanwhile); nothing is written then.
    """
    task, chosen, call = move(s, task_id, to)
    reason = (reason or "").strip() or None
    if chosen.reason == "required" and reason is None:
        raise Ask("required", f"{chosen.label} task {task_id}: why?")
    if chosen.confirm is not None and not confirmed:
        raise Ask("confirm", chosen.confirm)
    return call(s, task, reason)
