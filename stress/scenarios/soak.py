"""Workers claim and complete for minutes on end; memory and throughput must hold.

``python -m stress soak --minutes M``: each worker loops claim_next → complete_task →
create_task (a replacement, so the backlog stays at ``--tasks``) for M minutes, and
every SAMPLE_SECONDS logs its cycles so far and its resident memory (VmRSS). The
parent samples the database's size (the backend's ``storage_bytes``: SQLite's file and
its WAL, PostgreSQL's ``pg_database_size``, MariaDB's InnoDB estimate).
Pass: every worker's RSS grew less than RSS_LIMIT_MB from its first sample after the
warm-up to its last, the last minute's throughput is at least
THROUGHPUT_FLOOR of the first minute's (fifths of the run, for runs under five
minutes), and no error of any kind reached a worker.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import backends

from ..harness import DB_ERROR, DB_ERRORS, Check, Config, Outcome, WorkerContext, one_line

DESCRIPTION = (
    "claim → complete → create for --minutes M: RSS growth per worker < 10 MB, "
    "end throughput ≥ 0.8x the first minute, no error"
)
#: The harness's timeout is the soak's length plus this; workers stop at the length.
MARGIN_SECONDS = 60.0
SAMPLE_SECONDS = 5.0
WARM_UP_SECONDS = 20.0
RSS_LIMIT_MB = 10.0
THROUGHPUT_FLOOR = 0.8
SAMPLE, SIZE = "sample", "db_size"


def setup(session: Session, config: Config) -> None:
    for i in range(config.tasks):
        kb.create_task(session, title=f"soak #{i}")


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def work(worker: WorkerContext) -> None:
    session = kb.connect(worker.config.db_url, keep_connection=True)
    stop_at = worker.started + worker.config.timeout - MARGIN_SECONDS
    cycles = 0
    next_sample = time.monotonic()
    try:
        while time.monotonic() < stop_at and not worker.orphaned():
            if time.monotonic() >= next_sample:
                worker.log(SAMPLE, cycles=cycles, rss_kb=rss_kb())
                next_sample += SAMPLE_SECONDS
            try:
                task = kb.claim_next(session, claimer=worker.name)
                if task is None:
                    time.sleep(0.01)
                    continue
                kb.complete_task(session, task.id, claim_lock=str(task.claim_lock))
                kb.create_task(session, title=f"soak by {worker.name} #{cycles}")
            except (*DB_ERRORS, kb.KanbanError) as error:
                worker.log(DB_ERROR, during="cycle", error=one_line(error))
                continue
            cycles += 1
        worker.log(SAMPLE, cycles=cycles, rss_kb=rss_kb())
    finally:
        session.close()


# -- in the parent ------------------------------------------------------------------------


class Disturber:
    """Not a fault: samples the database's size (by part: SQLite's WAL apart) every
    SAMPLE_SECONDS."""

    def __init__(self, config: Config) -> None:
        self.engine = sa.create_engine(config.db_url, poolclass=sa.pool.NullPool)
        self.backend = backends.of(self.engine)
        self.started = time.monotonic()
        self.next = self.started
        self.numbers: dict[str, Any] = {"db_size_mb": [], "db_parts_mb": {}}

    def step(self) -> None:
        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + SAMPLE_SECONDS
        try:
            with self.engine.connect() as conn:
                parts = self.backend.storage_bytes(conn)
        except (OSError, sa.exc.DBAPIError):
            return
        at = round(now - self.started)
        self.numbers["db_size_mb"].append((at, _mb(sum(parts.values()))))
        for part, size in parts.items():
            self.numbers["db_parts_mb"].setdefault(part, []).append((at, _mb(size)))

    def close(self) -> None:
        self.engine.dispose()


def _mb(size: int) -> float:
    return round(size / 2**20, 2)


def disturber(config: Config) -> Disturber:
    return Disturber(config)


# -- checks -------------------------------------------------------------------------------


def _rate(samples: list[dict[str, Any]], start: float, end: float) -> float:
    """Cycles per second of one worker between two moments (its nearest samples)."""
    inside = [s for s in samples if start <= s["t"] <= end]
    if len(inside) < 2:
        return 0.0
    first, last = inside[0], inside[-1]
    return float(last["cycles"] - first["cycles"]) / max(1e-9, float(last["t"] - first["t"]))


def checks(outcome: Outcome, session: Session) -> list[Check]:
    length = outcome.config.timeout - MARGIN_SECONDS
    window = 60.0 if length >= 300 else max(2 * SAMPLE_SECONDS, length / 5)
    by_worker: dict[str, list[dict[str, Any]]] = {}
    for entry in outcome.entries(SAMPLE):
        by_worker.setdefault(entry["worker"], []).append(entry)
    growth: dict[str, float] = {}
    for name, samples in by_worker.items():
        warm = [s for s in samples if s["t"] >= min(WARM_UP_SECONDS, length / 4)]
        if warm:
            growth[name] = round((warm[-1]["rss_kb"] - warm[0]["rss_kb"]) / 1024, 2)
    first = sum(_rate(s, 0, window) for s in by_worker.values())
    # The last sample is taken at the very end, a little after ``length``.
    last = sum(_rate(s, length - window, length + SAMPLE_SECONDS) for s in by_worker.values())
    cycles = sum(s[-1]["cycles"] for s in by_worker.values() if s)
    steps = max(1, int(length // window))
    curve = [
        (
            round(k * window),
            round(sum(_rate(s, k * window, (k + 1) * window) for s in by_worker.values()), 1),
        )
        for k in range(steps)
    ]
    errors = [f"{e['worker']}: {e['error']}" for e in outcome.entries(DB_ERROR)]
    sizes = outcome.numbers.get("db_size_mb", [])
    if sizes:
        outcome.numbers["db_size_first_last_mb"] = {"first": sizes[0][1], "last": sizes[-1][1]}
    outcome.numbers.update(
        {
            "minutes": round(length / 60, 2),
            "cycles": cycles,
            "cycles_per_worker": {n: s[-1]["cycles"] for n, s in by_worker.items() if s},
            "rss_growth_mb": growth,
            "first_window_per_s": round(first, 1),
            "last_window_per_s": round(last, 1),
            "window_s": round(window, 1),
            "throughput_curve_per_s": curve,
            "rss_curve_kb": {
                n: [(round(s["t"]), s["rss_kb"]) for s in v] for n, v in by_worker.items()
            },
        }
    )
    big = {n: g for n, g in growth.items() if g >= RSS_LIMIT_MB}
    return [
        Check(
            f"1. RSS growth per worker under {RSS_LIMIT_MB:g} MB",
            bool(growth) and not big,
            f"max {max(growth.values(), default=0):g} MB over {cycles} cycles",
        ),
        Check(
            f"2. end throughput ≥ {THROUGHPUT_FLOOR:g}x the first {window:g} s",
            first > 0 and last >= THROUGHPUT_FLOOR * first,
            f"{first:.1f}/s first, {last:.1f}/s last",
        ),
        Check(
            "3. no error of any kind",
            not errors and not outcome.casualties,
            "; ".join([*outcome.casualties, *errors[:2]]),
        ),
    ]
