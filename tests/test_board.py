"""The board drawing: a pure function of tasks and "now", compared with snapshots."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from kanban_orm.board import (
    board_text,
    card_timing,
    cards_that_fit,
    column_order,
    format_duration,
)
from kanban_orm.models import Task
from kanban_orm.states import Status

NOW = datetime(2024, 5, 1, 12, 0, 0)


def card(
    task_id: int,
    title: str,
    status: str,
    *,
    priority: int = 0,
    assignee: str | None = None,
    age: float = 60.0,
    lease_left: float | None = None,
    done_ago: float | None = None,
) -> Task:
    """An unsaved Task: the board reads attributes only."""
    return Task(
        id=task_id,
        title=title,
        status=status,
        priority=priority,
        assignee=assignee,
        created_at=NOW - timedelta(seconds=age),
        claim_expires=None if lease_left is None else NOW + timedelta(seconds=lease_left),
        completed_at=None if done_ago is None else NOW - timedelta(seconds=done_ago),
    )


TASKS = [
    card(1, "Write the quarterly report", "ready", priority=3, assignee="ali", age=300),
    card(2, "Fix login", "ready", age=45),
    card(3, "Deploy", "running", priority=5, assignee="bob", age=7200, lease_left=150),
    card(4, "Stale lease", "running", assignee="carol", age=90000, lease_left=-3),
    card(5, "Triage me", "triage", age=10),
    card(6, "Wait for #1", "todo", priority=1, assignee="dave", age=4000),
    card(7, "Needs review", "review", priority=2, assignee="erin", age=600),
    card(8, "Broken", "blocked", age=100),
    card(9, "Shipped", "done", assignee="alice", age=5000, done_ago=10),
    card(10, "Shipped earlier", "done", age=5000, done_ago=100),
    card(11, "Gone", "archived"),
]

# Lines are compared with trailing spaces stripped (rich pads the centred title).
EXPECTED_100 = """\
                                       kanban board: 10 tasks
┌──────────────┬─────────────┬─────────────┬─────────────┬─────────────┬─────────────┬─────────────┐
│ triage 1     │ todo 1      │ ready 2     │ running 2   │ review 1    │ blocked 1   │ done 2      │
├──────────────┼─────────────┼─────────────┼─────────────┼─────────────┼─────────────┼─────────────┤
│ #5 p0        │ #6 p1       │ #1 p3       │ #3 p5       │ #7 p2       │ #8 p0       │ #9 p0       │
│ Triage me    │ Wait for #1 │ Write the … │ Deploy      │ Needs revi… │ Broken      │ Shipped     │
│ 10s          │ 1h @dave    │ 5m @ali     │ 2m left @b… │ 10m @erin   │ 1m          │ 1h @alice   │
│              │             │ ╌╌╌╌╌╌╌╌╌╌╌ │ ╌╌╌╌╌╌╌╌╌╌╌ │             │             │ ╌╌╌╌╌╌╌╌╌╌╌ │
│              │             │ #2 p0       │ #4 p0       │             │             │ #10 p0      │
│              │             │ Fix login   │ Stale lease │             │             │ Shipped ea… │
│              │             │ 45s         │ expired @c… │             │             │ 1h          │
└──────────────┴─────────────┴─────────────┴─────────────┴─────────────┴─────────────┴─────────────┘
                                   as of 2024-05-01 12:00:00 UTC"""

EXPECTED_60_ONE_CARD = """\
                     kanban board: acme
┌────────┬────────┬────────┬───────┬───────┬───────┬───────┐
│ triage │ todo   │ ready  │ runn… │ revi… │ bloc… │ done  │
│ 1      │ 1      │ 2      │ 2     │ 1     │ 1     │ 2     │
├────────┼────────┼────────┼───────┼───────┼───────┼───────┤
│ #5 p0  │ #6 p1  │ #1 p3  │ #3 p5 │ #7 p2 │ #8 p0 │ #9 p0 │
│ Triag… │ Wait … │ Write… │ Depl… │ Need… │ Brok… │ Ship… │
│ 10s    │ 1h @d… │ 5m @a… │ 2m l… │ 10m … │ 1m    │ 1h @… │
│        │        │ +1 mo… │ +1 m… │       │       │ +1 m… │
└────────┴────────┴────────┴───────┴───────┴───────┴───────┘
               as of 2024-05-01 12:00:00 UTC"""


def stripped(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.splitlines())


def test_snapshot_at_100_columns() -> None:
    text = board_text(TASKS, NOW, width=100)
    assert stripped(text) == EXPECTED_100
    assert all(len(line) == 100 for line in text.splitlines())


def test_snapshot_at_60_columns_with_one_card_per_column() -> None:
    text = board_text(TASKS, NOW, width=60, title="kanban board: acme", max_cards=1)
    assert stripped(text) == EXPECTED_60_ONE_CARD
    assert all(len(line) == 60 for line in text.splitlines())


def test_at_80_columns_the_header_counts_are_whole_and_running_cards_name_their_claimer() -> None:
    text = board_text(TASKS, NOW, width=80, claimers={3: "w1", 4: "w2", 1: "not running"})
    lines = text.splitlines()
    assert all(len(line) == 80 for line in lines)
    header = next(i for i, line in enumerate(lines) if "running" in line)
    assert "running " in lines[header] and "…" not in lines[header]
    assert lines[header + 1].split("│")[4].strip() == "2"  # the count, under "running"
    assert "by w1" in text and "by w2" in text
    assert "not running" not in text  # only a running card shows a claimer


def test_rendering_is_deterministic_and_ignores_input_order() -> None:
    assert board_text(TASKS, NOW) == board_text(list(reversed(TASKS)), NOW)


def test_every_line_fits_any_reasonable_width() -> None:
    long = [card(i, "x" * 300, "ready", assignee="y" * 100) for i in range(1, 4)]
    for width in (40, 80, 120, 200):
        assert {len(line) for line in board_text(long, NOW, width=width).splitlines()} == {width}


def test_an_empty_board_still_draws_every_column() -> None:
    text = board_text([], NOW, width=120)
    assert "kanban board: 0 tasks" in text
    for status in ("triage", "todo", "ready", "running", "review", "blocked", "done"):
        assert f"{status} 0" in text
    assert "archived" not in text


def test_counts_given_with_the_cards_drawn_head_the_columns_and_say_how_many_are_hidden() -> None:
    drawn = [card(1, "best", "ready", priority=9)]
    counts = {"ready": 40, "done": 7, "archived": 3}
    text = board_text(drawn, NOW, width=120, max_cards=1, counts=counts)
    assert "kanban board: 47 tasks" in text  # archived tasks are not on the board
    assert "ready 40" in text and "+39 more" in text
    assert "done 7" in text and "+7 more" in text
    assert "todo 0" in text


def test_a_count_below_the_cards_passed_counts_the_cards() -> None:
    drawn = [card(1, "one", "ready"), card(2, "two", "ready")]
    text = board_text(drawn, NOW, width=120, max_cards=1, counts={"ready": 1})
    assert "ready 2" in text and "+1 more" in text and "+-" not in text


def test_titles_with_newlines_and_markup_are_drawn_literally() -> None:
    text = board_text([card(1, "[bold]not\nmarkup[/bold]", "ready")], NOW, width=200)
    assert "[bold]not markup[/bold]" in text


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(-5, "0s"), (0, "0s"), (59.9, "59s"), (60, "1m"), (3599, "59m"), (3600, "1h"), (86400, "1d")],
)
def test_format_duration(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown


def test_card_timing_is_lease_left_for_running_and_age_otherwise() -> None:
    assert card_timing(card(1, "t", "running", lease_left=61), NOW) == "1m left"
    assert card_timing(card(1, "t", "running", lease_left=0), NOW) == "expired"
    assert card_timing(card(1, "t", "ready", age=125), NOW) == "2m"
    assert card_timing(card(1, "t", "done", age=7200, done_ago=1), NOW) == "2h"


def test_column_order_is_claim_order_and_done_is_newest_first() -> None:
    ready = [card(1, "a", "ready"), card(2, "b", "ready", priority=9), card(3, "c", "ready")]
    assert [t.id for t in column_order(Status.READY, ready)] == [2, 1, 3]
    done = [card(1, "a", "done", done_ago=5), card(2, "b", "done", done_ago=1)]
    assert [t.id for t in column_order(Status.DONE, done)] == [2, 1]


def test_cards_that_fit() -> None:
    assert cards_that_fit(10) == 1
    assert cards_that_fit(47) == 10
    assert cards_that_fit(0) == 1
