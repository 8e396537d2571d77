"""Defaults a deployment may override through the environment, read at call time."""

from __future__ import annotations

import os

ENV_CLAIM_TTL = "KANBAN_CLAIM_TTL_SECONDS"
ENV_MAX_ATTEMPTS = "KANBAN_MAX_ATTEMPTS"

DEFAULT_CLAIM_TTL_SECONDS = 15 * 60
DEFAULT_MAX_ATTEMPTS = 3
#: fail_task(retry=True) waits base * 2**(attempt-1) seconds (capped, jittered) before the
#: task is claimable again.
RETRY_BACKOFF_BASE_SECONDS = 10.0
RETRY_BACKOFF_MAX_SECONDS = 3600.0


def _positive_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {raw!r}") from None
    if not value > 0:
        raise ValueError(f"{name} must be positive, not {raw!r}")
    return value


def claim_ttl_seconds() -> float:
    return _positive_number(ENV_CLAIM_TTL, DEFAULT_CLAIM_TTL_SECONDS)


def max_attempts() -> int:
    return int(_positive_number(ENV_MAX_ATTEMPTS, DEFAULT_MAX_ATTEMPTS))
