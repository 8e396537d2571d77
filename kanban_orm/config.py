"""Settings a deployment may override through the environment, read at call time, and
the limits they (and the same values given to a call) are checked against.

A setting kanban_orm cannot use raises :class:`ConfigError` naming its variable.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from .errors import ConfigError

N = TypeVar("N", int, float)

ENV_CLAIM_TTL = "KANBAN_CLAIM_TTL_SECONDS"
ENV_MAX_ATTEMPTS = "KANBAN_MAX_ATTEMPTS"
ENV_SYNCHRONOUS = "KANBAN_SQLITE_SYNCHRONOUS"
ENV_BUSY_TIMEOUT = "KANBAN_SQLITE_BUSY_TIMEOUT_MS"
ENV_MAX_ATTACHMENT_BYTES = "KANBAN_MAX_ATTACHMENT_BYTES"

DEFAULT_CLAIM_TTL_SECONDS = 15 * 60
DEFAULT_MAX_ATTEMPTS = 3
SQLITE_SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
DEFAULT_SQLITE_SYNCHRONOUS = "NORMAL"
SQLITE_BUSY_TIMEOUT_MS = 5_000
DEFAULT_MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024
#: PostgreSQL's bytea holds at most 1 GiB; no backend keeps a larger attachment.
ATTACHMENT_BYTES_LIMIT = 1024**3

#: The largest value of an INTEGER column (priority, attempts, max_attempts, limits).
INT32_MAX = 2**31 - 1
#: A lease longer than a year is a mistake, and far enough out the databases' date
#: arithmetic overflows (SQLite silently, into a NULL that would never expire).
MAX_TTL_SECONDS = 365 * 24 * 3600
#: fail_task(retry=True) waits base * 2**(attempt-1) seconds (capped, jittered) before the
#: task is claimable again.
RETRY_BACKOFF_BASE_SECONDS = 10.0
RETRY_BACKOFF_MAX_SECONDS = 3600.0


def ttl_in_range(seconds: float) -> bool:
    return math.isfinite(seconds) and 0 < seconds <= MAX_TTL_SECONDS


TTL_RANGE = f"more than 0 and at most {MAX_TTL_SECONDS} (a year)"


def claim_ttl_seconds() -> float:
    raw = _from_env(ENV_CLAIM_TTL)
    if raw is None:
        return DEFAULT_CLAIM_TTL_SECONDS
    value = _parsed(raw, float, ENV_CLAIM_TTL, "a number")
    if not ttl_in_range(value):
        raise ConfigError(f"{ENV_CLAIM_TTL} must be {TTL_RANGE}, not {raw!r}")
    return value


def max_attempts() -> int:
    raw = _from_env(ENV_MAX_ATTEMPTS)
    if raw is None:
        return DEFAULT_MAX_ATTEMPTS
    value = _parsed(raw, int, ENV_MAX_ATTEMPTS, "a whole number")
    if not 1 <= value <= INT32_MAX:
        raise ConfigError(f"{ENV_MAX_ATTEMPTS} must be from 1 to {INT32_MAX}, not {raw!r}")
    return value


def sqlite_synchronous(given: str | None = None) -> str:
    """SQLite's ``synchronous`` pragma: ``given``, else the environment's, else NORMAL."""
    mode = (given or _from_env(ENV_SYNCHRONOUS) or DEFAULT_SQLITE_SYNCHRONOUS).upper()
    if mode not in SQLITE_SYNCHRONOUS_MODES:
        raise ConfigError(
            f"synchronous ({ENV_SYNCHRONOUS}) must be {', '.join(SQLITE_SYNCHRONOUS_MODES)},"
            f" not {mode!r}"
        )
    return mode


def sqlite_busy_timeout_ms(given: int | None = None) -> int:
    """SQLite's ``busy_timeout``: ``given``, else the environment's, else 5 seconds."""
    if given is None:
        raw = _from_env(ENV_BUSY_TIMEOUT)
        if raw is None:
            return SQLITE_BUSY_TIMEOUT_MS
        given = _parsed(raw, int, ENV_BUSY_TIMEOUT, "a whole number of milliseconds")
    if isinstance(given, bool) or not isinstance(given, int) or not 0 <= given <= INT32_MAX:
        raise ConfigError(
            f"busy_timeout_ms ({ENV_BUSY_TIMEOUT}) must be from 0 to {INT32_MAX}, not {given!r}"
        )
    return given


def max_attachment_bytes() -> int:
    """The largest attachment :func:`kanban_orm.attach` stores (``KANBAN_MAX_ATTACHMENT_BYTES``,
    else 25 MiB)."""
    raw = _from_env(ENV_MAX_ATTACHMENT_BYTES)
    if raw is None:
        return DEFAULT_MAX_ATTACHMENT_BYTES
    value = _parsed(raw, int, ENV_MAX_ATTACHMENT_BYTES, "a whole number of bytes")
    if not 0 <= value <= ATTACHMENT_BYTES_LIMIT:
        raise ConfigError(
            f"{ENV_MAX_ATTACHMENT_BYTES} must be from 0 to {ATTACHMENT_BYTES_LIMIT}, not {raw!r}"
        )
    return value


def _from_env(name: str) -> str | None:
    raw = os.environ.get(name)
    return None if raw is None or raw == "" else raw


def _parsed(raw: str, kind: type[N], name: str, what: str) -> N:
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {what}, not {raw!r}") from None


# -- retention (the housekeeping thread, kanban_orm.maintenance.Housekeeper) --------------

ENV_RETENTION_DONE_DAYS = "KANBAN_RETENTION_DONE_DAYS"
ENV_RETENTION_ARCHIVED_DAYS = "KANBAN_RETENTION_ARCHIVED_DAYS"
ENV_RETENTION_EVENTS_DAYS = "KANBAN_RETENTION_EVENTS_DAYS"
ENV_RETENTION_INTERVAL = "KANBAN_RETENTION_INTERVAL_SECONDS"
ENV_RETENTION_BATCH = "KANBAN_RETENTION_BATCH"
DEFAULT_RETENTION_INTERVAL_SECONDS = 3600.0
DEFAULT_RETENTION_BATCH = 500
MAX_RETENTION_BATCH = 10_000
#: Far enough that any age beyond it is a typo (and datetime arithmetic stays in range).
MAX_RETENTION_DAYS = 100 * 365


@dataclass(frozen=True)
class RetentionSettings:
    """How the housekeeping thread prunes: each age None leaves that kind of history."""

    done_after: timedelta | None = None
    archived_after: timedelta | None = None
    events_after: timedelta | None = None
    interval_seconds: float = DEFAULT_RETENTION_INTERVAL_SECONDS
    batch: int = DEFAULT_RETENTION_BATCH

    @property
    def enabled(self) -> bool:
        return any(
            age is not None for age in (self.done_after, self.archived_after, self.events_after)
        )


def retention_settings() -> RetentionSettings:
    """``KANBAN_RETENTION_*`` from the environment; unset ages leave history alone."""
    return RetentionSettings(
        done_after=_retention_days(ENV_RETENTION_DONE_DAYS),
        archived_after=_retention_days(ENV_RETENTION_ARCHIVED_DAYS),
        events_after=_retention_days(ENV_RETENTION_EVENTS_DAYS),
        interval_seconds=_retention_interval(),
        batch=_retention_batch(),
    )


def _retention_days(name: str) -> timedelta | None:
    raw = _from_env(name)
    if raw is None:
        return None
    days = _parsed(raw, float, name, "a number of days")
    if not (math.isfinite(days) and 0 <= days <= MAX_RETENTION_DAYS):
        raise ConfigError(f"{name} must be from 0 to {MAX_RETENTION_DAYS} days, not {raw!r}")
    return timedelta(days=days)


def _retention_interval() -> float:
    raw = _from_env(ENV_RETENTION_INTERVAL)
    if raw is None:
        return DEFAULT_RETENTION_INTERVAL_SECONDS
    seconds = _parsed(raw, float, ENV_RETENTION_INTERVAL, "a number of seconds")
    if not (math.isfinite(seconds) and 1 <= seconds <= MAX_TTL_SECONDS):
        raise ConfigError(
            f"{ENV_RETENTION_INTERVAL} must be from 1 to {MAX_TTL_SECONDS} seconds, not {raw!r}"
        )
    return seconds


def _retention_batch() -> int:
    raw = _from_env(ENV_RETENTION_BATCH)
    if raw is None:
        return DEFAULT_RETENTION_BATCH
    batch = _parsed(raw, int, ENV_RETENTION_BATCH, "a whole number")
    if not 1 <= batch <= MAX_RETENTION_BATCH:
        raise ConfigError(
            f"{ENV_RETENTION_BATCH} must be from 1 to {MAX_RETENTION_BATCH}, not {raw!r}"
        )
    return batch
