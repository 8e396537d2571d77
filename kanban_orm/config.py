"""Defaults a deployment may override through the environment, read at call time."""

from __future__ import annotations

import math
import os

from .errors import ConfigError

ENV_CLAIM_TTL = "KANBAN_CLAIM_TTL_SECONDS"
ENV_MAX_ATTEMPTS = "KANBAN_MAX_ATTEMPTS"

DEFAULT_CLAIM_TTL_SECONDS = 15 * 60
DEFAULT_MAX_ATTEMPTS = 3
#: A lease longer than a year is a mistake, and far enough out the databases' date
#: arithmetic overflows (SQLite silently, into a NULL that would never expire).
MAX_TTL_SECONDS = 365 * 24 * 3600
#: max_attempts is an INTEGER column.
MAX_ATTEMPTS_LIMIT = 2**31 - 1
#: fail_task(retry=True) waits base * 2**(attempt-1) seconds (capped, jittered) before the
#: task is claimable again.
RETRY_BACKOFF_BASE_SECONDS = 10.0
RETRY_BACKOFF_MAX_SECONDS = 3600.0


def _from_env(name: str) -> str | None:
    raw = os.environ.get(name)
    return None if raw is None or raw == "" else raw


def claim_ttl_seconds() -> float:
    raw = _from_env(ENV_CLAIM_TTL)
    if raw is None:
        return DEFAULT_CLAIM_TTL_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{ENV_CLAIM_TTL} must be a number, not {raw!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_TTL_SECONDS):
        raise ConfigError(
            f"{ENV_CLAIM_TTL} must be more than 0 and at most {MAX_TTL_SECONDS} (a year),"
            f" not {raw!r}"
        )
    return value


def max_attempts() -> int:
    raw = _from_env(ENV_MAX_ATTEMPTS)
    if raw is None:
        return DEFAULT_MAX_ATTEMPTS
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{ENV_MAX_ATTEMPTS} must be a whole number, not {raw!r}") from None
    if not 1 <= value <= MAX_ATTEMPTS_LIMIT:
        raise ConfigError(f"{ENV_MAX_ATTEMPTS} must be from 1 to {MAX_ATTEMPTS_LIMIT}, not {raw!r}")
    return value
