"""``/metrics``: the board's numbers in the Prometheus text format, read from the
database at each scrape (so every server of a fleet reports the same board)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.states import Status

from .reads import utcnow

#: Event kinds counted as claims, completions and failures.
COUNTED = {"claimed": "claims", "completed": "completions", "failed": "failures"}


class BoardCollector(Collector):
    def __init__(self, sessions: Callable[[], Session]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[Metric]:
        with self._sessions() as s:
            oldest = kb.board_stats(s)["oldest_ready_age_seconds"]
            with s.begin():
                per_status = s.execute(
                    select(kb.Task.status, kb.Task.tenant, func.count()).group_by(
                        kb.Task.status, kb.Task.tenant
                    )
                ).all()
                per_kind = dict(
                    s.execute(
                        select(kb.TaskEvent.kind, func.count())
                        .where(kb.TaskEvent.kind.in_(tuple(COUNTED)))
                        .group_by(kb.TaskEvent.kind)
                    ).all()
                )
                expired = s.scalar(
                    select(func.count()).where(
                        kb.Task.status == Status.RUNNING.value, kb.Task.claim_expires < utcnow()
                    )
                )
        tasks = GaugeMetricFamily(
            "kanban_tasks", "Tasks per status and tenant.", labels=["status", "tenant"]
        )
        seen = set()
        for status, tenant, count in per_status:
            tasks.add_metric([status, tenant or ""], count)
            seen.add((status, tenant or ""))
        for status in Status:  # every status present, even when empty
            if not any(s == status.value for s, _ in seen):
                tasks.add_metric([status.value, ""], 0)
        yield tasks
        for kind, name in COUNTED.items():
            counter = CounterMetricFamily(
                f"kanban_{name}",
                f"{name.capitalize()} recorded in the event log (pruned history not counted).",
            )
            counter.add_metric([], per_kind.get(kind, 0))
            yield counter
        yield GaugeMetricFamily(
            "kanban_oldest_ready_age_seconds",
            "Age of the oldest ready task (0 when none is ready).",
            value=oldest or 0.0,
        )
        yield GaugeMetricFamily(
            "kanban_expired_leases",
            "Running tasks whose lease has run out and wait for a reclaim.",
            value=expired or 0,
        )


def registry(sessions: Callable[[], Session]) -> CollectorRegistry:
    """A registry of its own, so several boards (or a host's metrics) never collide."""
    found = CollectorRegistry(auto_describe=False)
    found.register(BoardCollector(sessions))
    return found
