"""Argument checks that run before any SQL, so a rejected call writes nothing."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from .config import INT32_MAX, TTL_RANGE, claim_ttl_seconds, ttl_in_range
from .errors import InvalidInput
from .models import NAME_MAX_LENGTH, TITLE_MAX_LENGTH
from .states import Status


def text(
    value: object, field: str, *, required: bool = False, max_length: int | None = None
) -> str | None:
    """A string stored verbatim; NUL is refused (PostgreSQL text cannot hold it)."""
    if value is None:
        if required:
            raise InvalidInput(f"{field} is required")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string, not {type(value).__name__}")
    if required and not value.strip():
        raise InvalidInput(f"{field} must not be empty")
    if max_length is not None and len(value) > max_length:
        raise InvalidInput(f"{field} is {len(value)} characters; the maximum is {max_length}")
    if "\x00" in value:
        raise InvalidInput(f"{field} must not contain NUL characters")
    _require_utf8(value, field)
    return value


def _require_utf8(value: str, field: str) -> None:
    # A lone surrogate is a valid Python str that no UTF-8 database can store.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{field} is not valid Unicode (it holds a lone surrogate)") from None


def required_text(value: object, field: str, *, max_length: int | None = None) -> str:
    result = text(value, field, required=True, max_length=max_length)
    assert result is not None  # text() raised for None already
    return result


def title(value: object) -> str:
    return required_text(value, "title", max_length=TITLE_MAX_LENGTH)


def name(value: object, field: str, *, required: bool = False) -> str | None:
    return text(value, field, required=required, max_length=NAME_MAX_LENGTH)


INT64_MAX = 2**63 - 1  # ids: BIGINT on PostgreSQL, SQLite's 64-bit integers


def boolean(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{field} must be True or False, not {value!r}")
    return value


def integer(
    value: object, field: str, *, minimum: int | None = None, maximum: int = INT32_MAX
) -> int:
    """An int (not a bool) within ``minimum``..``maximum`` and the column's range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{field} must be an integer, not {type(value).__name__}")
    low = -maximum - 1 if minimum is None else minimum
    if not low <= value <= maximum:
        raise InvalidInput(f"{field} must be between {low} and {maximum}, not {value}")
    return value


def optional_integer(value: object, field: str, *, minimum: int | None = None) -> int | None:
    return None if value is None else integer(value, field, minimum=minimum)


def task_id(value: object, field: str = "task_id") -> int:
    return integer(value, field, minimum=1, maximum=INT64_MAX)


#: Ids a list argument (a task's parents) may hold: each is a bound parameter, and
#: PostgreSQL takes at most 65,535 in a statement.
MAX_IDS = 10_000


def task_ids(values: Iterable[object], field: str) -> list[int]:
    ids = list(dict.fromkeys(task_id(v, field) for v in collection(values, field)))
    if len(ids) > MAX_IDS:
        raise InvalidInput(f"{field} holds {len(ids)} tasks; the most is {MAX_IDS:,}")
    return ids


def collection(values: object, field: str) -> list[object]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InvalidInput(f"{field} must be a collection")
    return list(values)


def number(value: object, field: str, *, infinity: bool = False) -> float:
    """An int or a float (not a bool); NaN is refused, and so are the infinities unless
    ``infinity`` (a wait that may last for ever)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{field} must be a number, not {type(value).__name__}")
    if math.isnan(value) or (math.isinf(value) and not infinity):
        raise InvalidInput(f"{field} must be a finite number, not {value}")
    return float(value)


#: The longest ``max_runtime``: whole milliseconds in a 32-bit INTEGER column (about
#: 24.8 days), the same bound on every backend and for a Worker's own limit.
MAX_RUNTIME_SECONDS = (2**31 - 1) // 1000


def runtime_limit(value: object, field: str) -> float | None:
    """Seconds one run may take (``max_runtime``): None for no limit, else positive and
    at most :data:`MAX_RUNTIME_SECONDS`."""
    if value is None:
        return None
    seconds = number(value, field)
    if not 0 < seconds <= MAX_RUNTIME_SECONDS:
        raise InvalidInput(
            f"{field} must be a positive number of seconds up to {MAX_RUNTIME_SECONDS}"
            f" (about 24 days), not {seconds}"
        )
    return seconds


def ttl(value: object) -> float:
    """Seconds a claim lasts without a heartbeat; defaults to the configured TTL."""
    if value is None:
        return claim_ttl_seconds()
    value = number(value, "ttl_seconds")
    if not ttl_in_range(value):
        raise InvalidInput(f"ttl_seconds must be {TTL_RANGE}, not {value}")
    return value


def json_object(value: object, field: str) -> dict[str, Any] | None:
    """A dict that survives a JSON round trip (no NaN: PostgreSQL's jsonb refuses it)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be a JSON object (a dict), not {type(value).__name__}")
    try:
        encoded = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as error:
        raise InvalidInput(f"{field} is not JSON-serialisable: {error}") from None
    if "\x00" in encoded or "\\u0000" in encoded:
        raise InvalidInput(f"{field} must not contain NUL characters")
    _require_utf8(encoded, field)
    _require_string_keys(value, field)
    return value


def _require_string_keys(value: object, field: str) -> None:
    # json.dumps writes {1: "a", "1": "b"} as {"1": "a", "1": "b"}: one would be lost.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            for key, member in item.items():
                if not isinstance(key, str):
                    raise InvalidInput(
                        f"{field} keys must be strings, not {key!r} (JSON would make it one)"
                    )
                pending.append(member)
        elif isinstance(item, list | tuple):
            pending.extend(item)


def timestamp(value: object, field: str) -> datetime | None:
    """A datetime as naive UTC; a naive input is taken to be UTC already."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidInput(f"{field} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is not None:
        try:
            value = value.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:
            raise InvalidInput(f"{field} is out of range in UTC: {value.isoformat()}") from None
    return value


def status(value: object, field: str = "status") -> Status:
    try:
        return Status(str(value))
    except ValueError:
        allowed = ", ".join(s.value for s in Status)
        raise InvalidInput(f"{field} must be one of {allowed}, not {value!r}") from None


def after_id(value: object) -> int:
    return integer(value, "after_id", minimum=0, maximum=INT64_MAX)


def limit(value: object) -> int | None:
    return optional_integer(value, "limit", minimum=1)
