"""The scenarios, by name. A scenario is a module with DESCRIPTION, setup, work, checks."""

from __future__ import annotations

from ..harness import Scenario
from . import chaos, claims, deps, mixed, partition, readonly, reclaim, restart, soak, wakeup

SCENARIOS: dict[str, Scenario] = {
    "claims": claims,
    "deps": deps,
    "mixed": mixed,
    "reclaim": reclaim,
    "chaos": chaos,
    "restart": restart,
    "readonly": readonly,
    "soak": soak,
    "partition": partition,
    "wakeup": wakeup,
}
