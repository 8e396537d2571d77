"""Every benchmarked system, by key and backend.

Keys: ``kb-next`` (a), ``kb-many10`` and ``kb-many50`` (b), ``raw`` (c), and the peers (d):
``huey`` and ``litequeue`` on SQLite, ``procrastinate`` and ``pgqueuer`` on PostgreSQL.
"""

from __future__ import annotations

from functools import cache

from . import kanban, mariadb, peers, worker
from .core import POSTGRES, SQLITE, System

RAW = "raw"
RAW_STEPS = "raw-steps"
LEAN = "lean"
KANBAN_KEYS = ("kb-next", "kb-many10", "kb-many50")
WORKER_KEYS = ("kb-worker", "kb-worker-prefetch", "kb-worker-10ms")
PEER_KEYS = {SQLITE: ("huey", "litequeue"), POSTGRES: ("procrastinate", "pgqueuer")}
ALL_KEYS = (
    *KANBAN_KEYS,
    *WORKER_KEYS,
    RAW,
    RAW_STEPS,
    LEAN,
    *PEER_KEYS[SQLITE],
    *PEER_KEYS[POSTGRES],
)


@cache
def systems() -> dict[tuple[str, str], System]:
    found: dict[tuple[str, str], System] = {}
    for backend in (SQLITE, POSTGRES):
        consumers = {
            "kb-next": (kanban.kb_next_consumer, "kb.claim_next + kb.complete_task"),
            "kb-many10": (
                kanban.kb_many10_consumer,
                "kb.claim_many(limit=10) + kb.complete_many of the batch",
            ),
            "kb-many50": (
                kanban.kb_many50_consumer,
                "kb.claim_many(limit=50) + kb.complete_many of the batch",
            ),
        }
        for key, (consumer, note) in consumers.items():
            found[key, backend] = System(
                key=key,
                label=f"kanban_orm {key.removeprefix('kb-').replace('many', 'claim_many ')}"
                if key != "kb-next"
                else "kanban_orm claim_next",
                backend=backend,
                kind="kanban_orm",
                note=note,
                setup=kanban.seed,
                consumer=consumer,
                verify=kanban.verify,
            )
        note = (
            "sqlite3, BEGIN IMMEDIATE, a statement per step; same rows"
            if backend == SQLITE
            else "psycopg autocommit, 1 statement per transition (CTEs), SKIP LOCKED; same rows"
        )
        found[RAW, backend] = System(
            key=RAW,
            label="raw driver baseline",
            backend=backend,
            kind="raw",
            note=note,
            setup=kanban.seed,
            consumer=kanban.raw_consumer,
            verify=kanban.verify,
        )
        found.update(_worker_systems(backend))
    found[LEAN, SQLITE] = System(
        key=LEAN,
        label="lean kernel (raw, minimal schema)",
        backend=SQLITE,
        kind="raw",
        note="the raw sqlite3 loop on tasks with one index, runs and events with none, no FK",
        setup=worker.lean_seed,
        consumer=worker.lean_consumer,
        verify=kanban.verify,
    )
    found[RAW_STEPS, POSTGRES] = System(
        key=RAW_STEPS,
        label="raw, a statement per step",
        backend=POSTGRES,
        kind="raw",
        note="psycopg, BEGIN + 4 statements + COMMIT, then BEGIN + 3 + COMMIT; same rows",
        setup=kanban.seed,
        consumer=kanban.raw_steps_consumer,
        verify=kanban.verify,
    )
    for peer in peers.PEERS:
        found[peer.key, peer.backend] = peer
    found.update(mariadb.systems())
    return found


def _worker_systems(backend: str) -> dict[tuple[str, str], System]:
    rows = {
        "kb-worker": ("kanban_orm Worker, no-op", "kb.Worker(drain=True), a no-op handler, 1 slot"),
        "kb-worker-prefetch": (
            f"kanban_orm Worker, no-op, prefetch {worker.PREFETCH}",
            f"the same with prefetch={worker.PREFETCH}: batches of {worker.PREFETCH + 1} claimed, "
            "their completions committed together with the next claim",
        ),
        "kb-worker-10ms": (
            "kanban_orm Worker, 10 ms x8",
            f"kb.Worker(drain=True), a 10 ms handler, {worker.SLOW_CONCURRENCY} slots",
        ),
    }
    consumers = {
        "kb-worker": worker.kb_worker_consumer,
        "kb-worker-prefetch": worker.kb_worker_prefetch_consumer,
        "kb-worker-10ms": worker.kb_worker_slow_consumer,
    }
    return {
        (key, backend): System(
            key=key,
            label=label,
            backend=backend,
            kind="kanban_orm",
            note=note,
            setup=kanban.seed,
            consumer=consumers[key],
            verify=kanban.verify,
        )
        for key, (label, note) in rows.items()
    }


def system(key: str, backend: str | None = None) -> System:
    """The system ``key`` on ``backend`` (a spawned consumer passes no backend: any will
    do for finding its consumer function, which dispatches on the target)."""
    for (k, b), found in systems().items():
        if k == key and (backend is None or b == backend):
            return found
    raise KeyError(f"no system {key!r} on {backend}")
