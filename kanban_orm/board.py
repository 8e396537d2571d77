"""Drawing the board: a pure function from tasks and "now" to a rich renderable.

Nothing here touches the database or the clock: the caller passes the tasks (any objects
with :class:`Task`'s attributes) and the time to measure ages against, so a rendering is
reproducible and can be compared with a snapshot at a fixed width.

Each column is a status, in workflow order (archived tasks are not drawn). A card shows::

    #12 p3            id and priority
    Write the rep…    title, cut to the column's width
    5m @alice         age (since created), then assignee

and a running card shows its lease time left instead of its age (``2m left``, or
``expired`` once the lease has run out and the task waits for a reclaim), and on a
fourth line who holds it (``by host:123``, the claimer of its run).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from rich import box
from rich.console import Console, Group, RenderableType
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from .states import Status

#: The board's columns, left to right.
COLUMNS: tuple[Status, ...] = (
    Status.TRIAGE,
    Status.TODO,
    Status.READY,
    Status.RUNNING,
    Status.REVIEW,
    Status.BLOCKED,
    Status.DONE,
)

_HEADER_STYLES: dict[Status, str] = {
    Status.TRIAGE: "magenta",
    Status.TODO: "white",
    Status.READY: "cyan",
    Status.RUNNING: "yellow",
    Status.REVIEW: "blue",
    Status.BLOCKED: "red",
    Status.DONE: "green",
}

#: Lines one card takes on screen, the rule under it included.
CARD_HEIGHT = 4


class CardLike(Protocol):
    """What the board reads from a task (a :class:`kanban_orm.Task` has all of it)."""

    @property
    def id(self) -> int: ...
    @property
    def title(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def assignee(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def claim_expires(self) -> datetime | None: ...
    @property
    def completed_at(self) -> datetime | None: ...


def format_duration(seconds: float) -> str:
    """A short, coarse duration: ``45s``, ``12m``, ``3h``, ``2d`` (rounded down)."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def card_timing(task: CardLike, now: datetime) -> str:
    """``2m left`` / ``expired`` for a running task, else its age since it was created."""
    if task.status == Status.RUNNING.value and task.claim_expires is not None:
        left = (task.claim_expires - now).total_seconds()
        return f"{format_duration(left)} left" if left > 0 else "expired"
    return format_duration((now - task.created_at).total_seconds())


def column_order(status: Status, tasks: Iterable[CardLike]) -> list[CardLike]:
    """Cards of one column in display order.

    Claim order (priority, highest first, then oldest) everywhere except ``done``,
    which shows the most recently finished first.
    """
    if status is Status.DONE:
        return sorted(tasks, key=lambda t: (t.completed_at or t.created_at, t.id), reverse=True)
    return sorted(tasks, key=lambda t: (-t.priority, t.id))


def _card(task: CardLike, now: datetime, claimer: str | None = None) -> Text:
    timing = card_timing(task, now)
    owner = f" @{task.assignee}" if task.assignee else ""
    lines = [
        Text(f"#{task.id} p{task.priority}", style="bold"),
        Text(" ".join(task.title.split())),
        Text(f"{timing}{owner}", style="dim"),
    ]
    if claimer:
        # Who holds a running card, on a line of its own: at 80 columns a card is 8
        # characters wide, and a claimer after the lease time would be cut off.
        lines.append(Text(f"by {claimer}", style="yellow"))
    card = Text("\n").join(lines)
    card.no_wrap = True
    card.overflow = "ellipsis"
    return card


def _column(
    cards: Sequence[CardLike],
    now: datetime,
    max_cards: int | None,
    total: int,
    claimers: Mapping[int, str],
) -> RenderableType:
    shown = list(cards if max_cards is None else cards[:max_cards])
    parts: list[RenderableType] = []
    for index, task in enumerate(shown):
        if index:
            parts.append(Rule(style="dim", characters="╌"))
        running = task.status == Status.RUNNING.value
        parts.append(_card(task, now, claimers.get(task.id) if running else None))
    hidden = total - len(shown)
    if hidden:
        parts.append(Text(f"+{hidden} more", style="dim italic", no_wrap=True))
    return Group(*parts)


def render_board(
    tasks: Iterable[CardLike],
    now: datetime,
    *,
    title: str | None = None,
    max_cards: int | None = None,
    counts: Mapping[str, int] | None = None,
    claimers: Mapping[int, str] | None = None,
    width: int | None = None,
) -> Table:
    """The board as a rich Table: one column per status in :data:`COLUMNS`.

    ``now`` is a naive UTC datetime (like the task timestamps) that ages and lease
    times are measured against. ``max_cards`` caps the cards drawn per column (the rest
    are counted as ``+N more``). Tasks in a status outside :data:`COLUMNS` (archived)
    are left out. The table expands to the console's width and cuts titles to fit.
    ``counts`` (tasks per status) is for a caller that passes only the cards drawn (see
    :func:`kanban_orm.workflow.board_cards`): the headers and ``+N more`` then count
    every task, not only those passed. ``claimers`` maps a running task's id to the
    claimer of its run, shown on its card (``by host:123``). Given the ``width`` it
    will be drawn at, a header too wide for its column puts the count on a second line
    rather than cutting it off.
    """
    by_status: dict[str, list[CardLike]] = {status.value: [] for status in COLUMNS}
    for task in tasks:
        if task.status in by_status:
            by_status[task.status].append(task)
    # A count below the cards passed (read at another moment) counts those cards.
    sizes = {
        status: max(len(cards), 0 if counts is None else counts.get(status, 0))
        for status, cards in by_status.items()
    }
    total = sum(sizes.values())
    table = Table(
        title=title or f"kanban board: {total} task{'' if total == 1 else 's'}",
        caption=f"as of {now:%Y-%m-%d %H:%M:%S} UTC",
        box=box.SQUARE,
        expand=True,
        show_lines=False,
        padding=(0, 1),
    )
    headers = [f"{status.value} {sizes[status.value]}" for status in COLUMNS]
    if width is not None and max(map(len, headers)) > _cell_width(width):
        headers = [f"{status.value}\n{sizes[status.value]}" for status in COLUMNS]
    for status, header in zip(COLUMNS, headers, strict=True):
        table.add_column(
            header,
            header_style=f"bold {_HEADER_STYLES[status]}",
            ratio=1,
            no_wrap=True,
            overflow="ellipsis",
        )
    table.add_row(
        *(
            _column(
                column_order(status, by_status[status.value]),
                now,
                max_cards,
                sizes[status.value],
                claimers or {},
            )
            for status in COLUMNS
        )
    )
    return table


def _cell_width(width: int) -> int:
    """The text width of the narrowest column of a board ``width`` characters wide."""
    borders, padding = len(COLUMNS) + 1, 2 * len(COLUMNS)
    return (width - borders - padding) // len(COLUMNS)


def board_text(
    tasks: Iterable[CardLike],
    now: datetime,
    *,
    width: int = 100,
    title: str | None = None,
    max_cards: int | None = None,
    counts: Mapping[str, int] | None = None,
    claimers: Mapping[int, str] | None = None,
) -> str:
    """:func:`render_board` drawn as plain text (no colour) at ``width`` columns."""
    out = io.StringIO()
    console = Console(
        file=out,
        width=width,
        color_system=None,
        force_terminal=False,
        highlight=False,
        emoji=False,
        legacy_windows=False,
    )
    board = render_board(
        tasks, now, title=title, max_cards=max_cards, counts=counts, claimers=claimers, width=width
    )
    console.print(board)
    return out.getvalue()


def cards_that_fit(height: int) -> int:
    """How many cards per column fit a terminal ``height`` lines tall (at least 1)."""
    chrome = 7  # title, top border, header, header rule, bottom border, caption, "+N more"
    return max(1, (height - chrome + 1) // CARD_HEIGHT)
