"""Rejected calls: each raises the KanbanError subclass that says why, and writes nothing.

"Writes nothing" is checked with ``snapshot`` of every kanban table (``version`` columns
included) before and after the call, on a board that already has rows in it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from functools import partial, reduce
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.states import can_move

from .helpers import snapshot
from .test_service import claimed, runs, task_in, task_row

UNKNOWN = 999_999
NOT_A_TOKEN = "0123456789abcdef0123456789abcdef"


def describe(error: BaseException) -> str:
    """The type and first line of an exception, without the driver's SQL dump."""
    lines = str(error).splitlines()
    return f"{type(error).__module__}.{type(error).__name__}: {lines[0] if lines else ''}"


def rejected(
    session: Session,
    error: type[kb.KanbanError],
    call: Callable[[], object],
    what: object = "the call",
) -> kb.KanbanError:
    """Run ``call``; assert it raises ``error`` and leaves every kanban table unchanged."""
    assert issubclass(error, kb.KanbanError)
    before = snapshot(session)
    try:
        call()
    except error as caught:
        raised = caught
    except Exception as other:
        pytest.fail(f"{what}: raised {describe(other)}, not {error.__name__}", pytrace=False)
    else:
        pytest.fail(f"{what}: did not raise {error.__name__}", pytrace=False)
    assert snapshot(session) == before, f"{what}: a rejected call wrote to the database"
    return raised


@pytest.fixture
def board(session: Session) -> dict[str, Any]:
    """A board with rows in every table: a done parent, a running task, a ready one."""
    parent = kb.create_task(session, title="parent")
    child = kb.create_task(session, title="child", parents=[parent])
    kb.complete_task(session, parent, force=True)
    running, token = claimed(session, title="running")
    ready = kb.create_task(session, title="ready")
    return {"parent": parent, "child": child, "running": running, "token": token, "ready": ready}


# -- create_task ------------------------------------------------------------------------

BAD_CREATE_ARGS: dict[str, dict[str, Any]] = {
    "empty_title": {"title": ""},
    "space_title": {"title": "   "},
    "blank_title": {"title": " \t\r\n "},
    "title_501": {"title": "x" * 501},
    "emoji_title_501": {"title": "🎉" * 501},
    "int_title": {"title": 123},
    "none_title": {"title": None},
    "bytes_title": {"title": b"bytes"},
    "nul_in_title": {"title": "a\x00b"},
    "int_body": {"body": 5},
    "nul_in_body": {"body": "a\x00b"},
    "bool_priority": {"priority": True},
    "float_priority": {"priority": 1.5},
    "str_priority": {"priority": "1"},
    "long_assignee": {"assignee": "a" * 201},
    "int_assignee": {"assignee": 7},
    "long_tenant": {"tenant": "t" * 201},
    "long_created_by": {"created_by": "c" * 201},
    "long_idempotency_key": {"idempotency_key": "k" * 201},
    "zero_max_attempts": {"max_attempts": 0},
    "negative_max_attempts": {"max_attempts": -1},
    "bool_max_attempts": {"max_attempts": True},
    "str_run_at": {"run_at": "2030-01-01"},
    "int_run_at": {"run_at": 0},
    "str_parents": {"parents": "12"},
    "int_parents": {"parents": 1},
    "zero_parent": {"parents": [0]},
    "negative_parent": {"parents": [-1]},
    "str_parent": {"parents": ["1"]},
    "bool_parent": {"parents": [True]},
    "too_many_parents": {"parents": range(1, 10_002)},  # PostgreSQL: 65,535 parameters
    "run_at_before_year_1_in_utc": {
        "run_at": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))
    },
    "run_at_after_9999_in_utc": {
        "run_at": datetime.max.replace(tzinfo=timezone(-timedelta(hours=5)))
    },
}


def test_create_task_rejects_bad_input_and_writes_nothing(
    session: Session, board: dict[str, Any]
) -> None:
    for case, args in BAD_CREATE_ARGS.items():
        rejected(
            session,
            kb.InvalidInput,
            partial(kb.create_task, session, **{"title": "ok", **args}),
            case,
        )


def test_create_task_with_a_missing_parent_raises_task_not_found_and_writes_nothing(
    session: Session, board: dict[str, Any]
) -> None:
    error = rejected(
        session,
        kb.TaskNotFound,
        lambda: kb.create_task(session, title="orphan", parents=[board["parent"], UNKNOWN]),
    )
    assert isinstance(error, kb.TaskNotFound) and error.task_id == UNKNOWN


def test_a_rejected_create_does_not_spend_an_idempotency_key(session: Session) -> None:
    rejected(
        session,
        kb.TaskNotFound,
        lambda: kb.create_task(session, title="t", idempotency_key="k", parents=[UNKNOWN]),
    )
    first = kb.create_task(session, title="t", idempotency_key="k")
    assert kb.create_task(session, title="t", idempotency_key="k") == first


# -- complete_task arguments ------------------------------------------------------------

BAD_METADATA: dict[str, Any] = {
    "object_value": {"x": object()},
    "nan_value": {"x": float("nan")},
    "inf_value": {"x": math.inf},
    "set_value": {"x": {1, 2}},
    "bytes_value": {"x": b"raw"},
    "nul_in_value": {"x": "a\x00b"},
    "nul_in_key": {"a\x00b": 1},
    "int_key": {1: "a", "1": "b"},  # JSON would keep only one of them
    "none_key": {None: 1},
    "nested_int_key": {"x": [{"y": {2: "b"}}]},
    "deeply_nested": {"x": reduce(lambda inner, _: [inner], range(100_000), [])},
    "list": [1, 2],
    "string": '{"x": 1}',
    "int": 5,
}


def test_complete_task_rejects_non_json_metadata_and_the_claim_still_holds(
    session: Session, engine: Engine, board: dict[str, Any]
) -> None:
    task_id, token = board["running"], board["token"]

    for case, metadata in BAD_METADATA.items():
        rejected(
            session,
            kb.InvalidInput,
            partial(kb.complete_task, session, task_id, claim_lock=token, metadata=metadata),
            case,
        )

    row = task_row(engine, task_id)
    assert (row.status, row.claim_lock) == ("running", token)
    (run,) = runs(engine, task_id)
    assert row.current_run_id == run.id and run.outcome is None and run.ended_at is None
    assert kb.complete_task(session, task_id, claim_lock=token, metadata={"x": 1}).status == "done"


BAD_COMPLETE_ARGS: dict[str, dict[str, Any]] = {
    "int_result": {"result": 5},
    "nul_in_result": {"result": "a\x00b"},
    "dict_summary": {"summary": {"a": 1}},
    "nul_in_summary": {"summary": "\x00"},
    "empty_claim_lock": {"claim_lock": ""},
    "int_claim_lock": {"claim_lock": 5},
    "claim_lock_and_force": {"force": True},  # the CLI refuses the pair too
}


def test_complete_task_rejects_bad_arguments(session: Session, board: dict[str, Any]) -> None:
    for case, args in BAD_COMPLETE_ARGS.items():
        call_args = {"claim_lock": board["token"], **args}
        rejected(
            session,
            kb.InvalidInput,
            partial(kb.complete_task, session, board["running"], **call_args),
            case,
        )


@pytest.mark.parametrize("which", ["running", "ready"])
def test_complete_task_needs_a_claim_lock_or_force(
    session: Session, board: dict[str, Any], which: str
) -> None:
    rejected(session, kb.InvalidInput, lambda: kb.complete_task(session, board[which]))
    rejected(
        session,
        kb.InvalidInput,
        lambda: kb.complete_task(session, board[which], claim_lock=None, force=False),
    )


# -- unknown and malformed task ids -----------------------------------------------------

CALLS_ON_A_TASK: dict[str, Callable[[Session, Any], object]] = {
    "claim_task": lambda s, t: kb.claim_task(s, t, claimer="w"),
    "complete_task": lambda s, t: kb.complete_task(s, t, claim_lock=NOT_A_TOKEN),
    "complete_task_forced": lambda s, t: kb.complete_task(s, t, force=True),
    "heartbeat": lambda s, t: kb.heartbeat(s, t, claim_lock=NOT_A_TOKEN),
    "block_task": lambda s, t: kb.block_task(s, t, reason="r"),
    "block_task_held": lambda s, t: kb.block_task(s, t, reason="r", claim_lock=NOT_A_TOKEN),
    "unblock_task": lambda s, t: kb.unblock_task(s, t),
    "fail_task": lambda s, t: kb.fail_task(s, t, claim_lock=NOT_A_TOKEN, error="e"),
    "release_task": lambda s, t: kb.release_task(s, t, claim_lock=NOT_A_TOKEN),
    "get_task": lambda s, t: kb.get_task(s, t),
    "latest_run": lambda s, t: kb.latest_run(s, t),
    "list_runs": lambda s, t: kb.list_runs(s, task_id=t),
}


@pytest.mark.parametrize("call", CALLS_ON_A_TASK.values(), ids=CALLS_ON_A_TASK)
def test_an_unknown_task_id_raises_task_not_found_and_writes_nothing(
    session: Session, board: dict[str, Any], call: Callable[[Session, Any], object]
) -> None:
    error = rejected(session, kb.TaskNotFound, lambda: call(session, UNKNOWN))
    assert isinstance(error, kb.TaskNotFound) and error.task_id == UNKNOWN
    assert str(UNKNOWN) in str(error)


BAD_IDS = [0, -1, True, "1", 1.0, None]


@pytest.mark.parametrize("call", CALLS_ON_A_TASK.values(), ids=CALLS_ON_A_TASK)
def test_a_malformed_task_id_raises_invalid_input(
    session: Session, board: dict[str, Any], call: Callable[[Session, Any], object]
) -> None:
    for bad_id in BAD_IDS:
        rejected(session, kb.InvalidInput, partial(call, session, bad_id), f"task_id={bad_id!r}")


# -- fencing: wrong, stale and finished claim_locks -------------------------------------

FENCED: dict[str, Callable[[Session, int, str], object]] = {
    "complete_task": lambda s, t, lock: kb.complete_task(s, t, claim_lock=lock, result="r"),
    "heartbeat": lambda s, t, lock: kb.heartbeat(s, t, claim_lock=lock),
    "fail_task": lambda s, t, lock: kb.fail_task(s, t, claim_lock=lock, error="e"),
    "release_task": lambda s, t, lock: kb.release_task(s, t, claim_lock=lock),
    "block_task": lambda s, t, lock: kb.block_task(s, t, reason="r", claim_lock=lock),
}


def assert_claim_lost(session: Session, call: Callable[[], object], task_id: int) -> None:
    error = rejected(session, kb.ClaimLost, call)
    assert isinstance(error, kb.ClaimLost) and error.task_id == task_id


@pytest.mark.parametrize("call", FENCED.values(), ids=FENCED)
def test_a_wrong_claim_lock_raises_claim_lost_and_the_holder_keeps_the_task(
    session: Session, engine: Engine, call: Callable[[Session, int, str], object]
) -> None:
    task_id, token = claimed(session)
    wrong = NOT_A_TOKEN if token != NOT_A_TOKEN else "f" * 32

    assert_claim_lost(session, lambda: call(session, task_id, wrong), task_id)
    if token.upper() != token:  # tokens are lower-case hex, compared exactly
        assert_claim_lost(session, lambda: call(session, task_id, token.upper()), task_id)

    assert kb.complete_task(session, task_id, claim_lock=token).status == "done"


@pytest.mark.parametrize("call", FENCED.values(), ids=FENCED)
def test_a_stale_claim_lock_raises_claim_lost(
    session: Session, engine: Engine, call: Callable[[Session, int, str], object]
) -> None:
    task_id, stale = claimed(session)
    kb.release_task(session, task_id, claim_lock=stale)
    current = kb.claim_task(session, task_id, claimer="worker-1")  # the same worker again
    assert current is not None and current.claim_lock != stale

    assert_claim_lost(session, lambda: call(session, task_id, stale), task_id)

    row = task_row(engine, task_id)
    assert (row.status, row.claim_lock) == ("running", current.claim_lock)
    assert call(session, task_id, str(current.claim_lock)) is not None


@pytest.mark.parametrize("call", FENCED.values(), ids=FENCED)
def test_the_claim_lock_of_a_finished_claim_raises_claim_lost(
    session: Session, call: Callable[[Session, int, str], object]
) -> None:
    task_id, token = claimed(session)
    kb.complete_task(session, task_id, claim_lock=token)
    assert_claim_lost(session, lambda: call(session, task_id, token), task_id)


@pytest.mark.parametrize("call", FENCED.values(), ids=FENCED)
def test_a_claim_lock_on_a_task_never_claimed_raises_claim_lost(
    session: Session, call: Callable[[Session, int, str], object]
) -> None:
    task_id = kb.create_task(session, title="ready, never claimed")
    assert_claim_lost(session, lambda: call(session, task_id, NOT_A_TOKEN), task_id)


@pytest.mark.parametrize("name", ["heartbeat", "fail_task", "release_task", "block_task"])
def test_a_malformed_claim_lock_raises_invalid_input(
    session: Session, board: dict[str, Any], name: str
) -> None:
    call = FENCED[name]
    # block_task(claim_lock=None) is its unheld form, tested elsewhere
    for lock in ["", "   ", 5, b"bytes", *([] if name == "block_task" else [None])]:
        rejected(
            session, kb.InvalidInput, partial(call, session, board["running"], lock), f"{lock!r}"
        )


# -- illegal transitions ----------------------------------------------------------------

ILLEGAL: dict[str, tuple[str, Callable[[Session, int], object], str]] = {
    "unblock_ready": ("ready", lambda s, t: kb.unblock_task(s, t), "ready"),
    "unblock_todo": ("todo", lambda s, t: kb.unblock_task(s, t), "ready"),
    "unblock_triage": ("triage", lambda s, t: kb.unblock_task(s, t), "ready"),
    "unblock_running": ("running", lambda s, t: kb.unblock_task(s, t), "ready"),
    "unblock_done": ("done", lambda s, t: kb.unblock_task(s, t), "ready"),
    "block_blocked": ("blocked", lambda s, t: kb.block_task(s, t, reason="again"), "blocked"),
    "block_done": ("done", lambda s, t: kb.block_task(s, t, reason="too late"), "blocked"),
    "force_complete_done": ("done", lambda s, t: kb.complete_task(s, t, force=True), "done"),
}


@pytest.mark.parametrize(("status", "call", "target"), ILLEGAL.values(), ids=ILLEGAL)
def test_an_illegal_move_raises_invalid_transition_and_writes_nothing(
    session: Session, status: str, call: Callable[[Session, int], object], target: str
) -> None:
    task_id, _ = task_in(session, status)

    error = rejected(session, kb.InvalidTransition, lambda: call(session, task_id))

    assert isinstance(error, kb.InvalidTransition)
    assert (error.task_id, error.from_status, error.to_status) == (task_id, status, target)
    assert status in str(error)


@pytest.mark.parametrize("status", ["todo", "running", "done"])
def test_invalid_transition_gives_the_real_reason(session: Session, status: str) -> None:
    """Regression: unblocking a todo/running/done task named a move the table allows."""
    task_id, _ = task_in(session, status)
    with pytest.raises(kb.InvalidTransition) as caught:
        kb.unblock_task(session, task_id)
    error = caught.value
    assert can_move(error.from_status, error.to_status)  # so the move is not the reason
    assert error.needs == ("blocked",)
    assert f"is {status!r}" in str(error) and "'blocked'" in str(error)


# -- TTLs, limits, claimers ---------------------------------------------------------------

BAD_TTLS = [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf, True, False, "10", [10]]

TTL_CALLS: dict[str, Callable[[Session, dict[str, Any], Any], object]] = {
    "claim_task": lambda s, b, ttl: kb.claim_task(s, b["ready"], claimer="w", ttl_seconds=ttl),
    "claim_next": lambda s, b, ttl: kb.claim_next(s, claimer="w", ttl_seconds=ttl),
    "claim_many": lambda s, b, ttl: kb.claim_many(s, claimer="w", limit=2, ttl_seconds=ttl),
    "heartbeat": lambda s, b, ttl: kb.heartbeat(
        s, b["running"], claim_lock=b["token"], ttl_seconds=ttl
    ),
}


@pytest.mark.parametrize("call", TTL_CALLS.values(), ids=TTL_CALLS)
def test_a_bad_ttl_raises_invalid_input_and_writes_nothing(
    session: Session, board: dict[str, Any], call: Callable[..., object]
) -> None:
    for ttl in BAD_TTLS:
        rejected(session, kb.InvalidInput, partial(call, session, board, ttl), f"ttl={ttl!r}")


def test_claim_many_rejects_a_bad_limit(session: Session, board: dict[str, Any]) -> None:
    for limit in [0, -1, True, 1.5, "3", None]:
        rejected(
            session,
            kb.InvalidInput,
            partial(kb.claim_many, session, claimer="w", limit=limit),
            f"limit={limit!r}",
        )


CLAIMS: dict[str, Callable[[Session, dict[str, Any], Any], object]] = {
    "claim_task": lambda s, b, who: kb.claim_task(s, b["ready"], claimer=who),
    "claim_next": lambda s, b, who: kb.claim_next(s, claimer=who),
    "claim_many": lambda s, b, who: kb.claim_many(s, claimer=who, limit=1),
}


@pytest.mark.parametrize("call", CLAIMS.values(), ids=CLAIMS)
def test_a_bad_claimer_raises_invalid_input(
    session: Session, board: dict[str, Any], call: Callable[..., object]
) -> None:
    for claimer in ["", "  ", None, 5, "w" * 201, "a\x00b"]:
        rejected(
            session, kb.InvalidInput, partial(call, session, board, claimer), f"claimer={claimer!r}"
        )


@pytest.mark.parametrize("field", ["assignee", "tenant"])
def test_claim_filters_are_validated(session: Session, board: dict[str, Any], field: str) -> None:
    rejected(session, kb.InvalidInput, lambda: kb.claim_next(session, claimer="w", **{field: 5}))
    rejected(
        session,
        kb.InvalidInput,
        lambda: kb.claim_many(session, claimer="w", limit=1, **{field: "x" * 201}),
    )


# -- reasons and errors -----------------------------------------------------------------


def test_fail_task_needs_an_error_message(session: Session, board: dict[str, Any]) -> None:
    for error in ["", "  ", None, 42, "a\x00b"]:
        rejected(
            session,
            kb.InvalidInput,
            partial(
                kb.fail_task, session, board["running"], claim_lock=board["token"], error=error
            ),
            f"error={error!r}",
        )


@pytest.mark.parametrize("which", ["running", "ready"])
def test_block_task_needs_a_reason(session: Session, board: dict[str, Any], which: str) -> None:
    lock = board["token"] if which == "running" else None
    for reason in ["", "  ", None, 42, "a\x00b"]:
        rejected(
            session,
            kb.InvalidInput,
            partial(kb.block_task, session, board[which], reason=reason, claim_lock=lock),
            f"reason={reason!r}",
        )


def test_release_task_rejects_a_bad_reason(session: Session, board: dict[str, Any]) -> None:
    for reason in [42, "a\x00b"]:
        rejected(
            session,
            kb.InvalidInput,
            partial(
                kb.release_task, session, board["running"], claim_lock=board["token"], reason=reason
            ),
            f"reason={reason!r}",
        )


# -- reads ------------------------------------------------------------------------------

BAD_READS: dict[str, Callable[[Session], object]] = {
    "status_unknown": lambda s: kb.list_tasks(s, status="bogus"),
    "status_empty": lambda s: kb.list_tasks(s, status=""),
    "status_upper": lambda s: kb.list_tasks(s, status="READY"),
    "status_int": lambda s: kb.list_tasks(s, status=3),
    "tasks_limit_zero": lambda s: kb.list_tasks(s, limit=0),
    "tasks_limit_bool": lambda s: kb.list_tasks(s, limit=True),
    "tasks_assignee_int": lambda s: kb.list_tasks(s, assignee=5),
    "events_after_negative": lambda s: kb.list_events(s, after_id=-1),
    "events_after_str": lambda s: kb.list_events(s, after_id="0"),
    "events_limit_zero": lambda s: kb.list_events(s, limit=0),
    "events_task_zero": lambda s: kb.list_events(s, task_id=0),
}


def test_reads_reject_bad_arguments(session: Session, board: dict[str, Any]) -> None:
    for case, call in BAD_READS.items():
        rejected(session, kb.InvalidInput, partial(call, session), case)


# -- input the driver would refuse: out of range, lone surrogates, huge TTLs ----------


OUT_OF_RANGE: dict[str, Callable[[Session], object]] = {
    "priority_2**31": lambda s: kb.create_task(s, title="t", priority=2**31),
    "priority_-2**31-1": lambda s: kb.create_task(s, title="t", priority=-(2**31) - 1),
    "max_attempts_2**31": lambda s: kb.create_task(s, title="t", max_attempts=2**31),
    "priority_2**63": lambda s: kb.create_task(s, title="t", priority=2**63),
    "parent_2**63": lambda s: kb.create_task(s, title="t", parents=[2**63]),
    "claim_many_limit_2**31": lambda s: kb.claim_many(s, claimer="w", limit=2**31),
    "claim_many_limit_2**63": lambda s: kb.claim_many(s, claimer="w", limit=2**63),
    "claim_task_2**63": lambda s: kb.claim_task(s, 2**63, claimer="w"),
    "get_task_2**63": lambda s: kb.get_task(s, 2**63),
    "complete_task_2**63": lambda s: kb.complete_task(s, 2**63, force=True),
    "list_events_after_2**63": lambda s: kb.list_events(s, after_id=2**63),
}


@pytest.mark.parametrize("call", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE)
def test_an_out_of_range_integer_is_invalid_input_or_works_never_a_driver_error(
    session: Session, board: dict[str, Any], call: Callable[[Session], object]
) -> None:
    """Regression: integers past their column's range (INTEGER, BIGINT) used to reach the
    driver and escape as DataError (PostgreSQL) or OverflowError (SQLite)."""
    before = snapshot(session)
    try:
        call(session)
    except (kb.InvalidInput, kb.TaskNotFound):
        assert snapshot(session) == before
    except Exception as error:
        pytest.fail(f"a raw driver error escaped: {describe(error)}", pytrace=False)


def test_ids_beyond_32_bits_are_valid_input(session: Session, board: dict[str, Any]) -> None:
    """Task and event ids are BIGINT: a range check must not stop at 2**31."""
    big = 2**40
    before = snapshot(session)
    with pytest.raises(kb.TaskNotFound):
        kb.get_task(session, big)
    with pytest.raises(kb.TaskNotFound):
        kb.claim_task(session, big, claimer="w")
    with pytest.raises(kb.TaskNotFound):
        kb.complete_task(session, big, force=True)
    assert kb.list_events(session, after_id=big) == []
    assert kb.list_events(session, task_id=big) == []
    assert snapshot(session) == before


@pytest.mark.parametrize("field", ["title", "body", "assignee"])
def test_a_lone_surrogate_in_text_is_invalid_input(
    session: Session, board: dict[str, Any], field: str
) -> None:
    """Regression: a lone surrogate used to escape as a raw UnicodeEncodeError."""
    args = {"title": "fine", field: "bad \ud800 half"}
    rejected(session, kb.InvalidInput, lambda: kb.create_task(session, **args))


@pytest.mark.parametrize("name", ["claim_task", "heartbeat"])
def test_a_huge_ttl_is_invalid_input_or_gives_a_lease_that_expires(
    session: Session, board: dict[str, Any], name: str
) -> None:
    """Regression: ttl_seconds=1e12 stored a NULL lease (SQLite) or an unreadable one (PG)."""
    task_id = board["ready"] if name == "claim_task" else board["running"]
    before = snapshot(session)
    try:
        TTL_CALLS[name](session, board, 1e12)
        expires = kb.get_task(session, task_id).claim_expires
        kb.list_tasks(session)
    except kb.InvalidInput:
        assert snapshot(session) == before
    except Exception as error:
        pytest.fail(f"a raw driver error escaped: {describe(error)}", pytrace=False)
    else:
        assert expires is not None, "a lease with no expiry is never reclaimed"


def test_a_rejected_call_leaves_the_session_usable(session: Session, engine: Engine) -> None:
    with pytest.raises(kb.TaskNotFound):
        kb.claim_task(session, UNKNOWN, claimer="w")
    with pytest.raises(kb.InvalidInput):
        kb.create_task(session, title="")
    task_id = kb.create_task(session, title="after the errors", run_at=datetime.now(UTC))
    assert task_row(engine, task_id).title == "after the errors"
