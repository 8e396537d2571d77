"""Crash detection, measured: how soon another worker claims a SIGKILLed worker's task,
and that a SIGSTOPped worker's claim is never released before its lease ends.

    python -m stress.crash_bench --db URL [--kills 20] [--stops 5] [--rescuers 2]

``--rescuers`` ``kb.Worker`` processes run all along with their default settings (idle
backoff up to 5 s, the default 15-minute lease), completing whatever they claim. Each
kill round starts a victim ``kb.Worker`` whose handler never returns and gives it the
round's one task (assigned to the victim alone, then reassigned to the rescuers while the
victim holds it: a running task keeps its claim); after a random 0-5 s (any phase of the
rescuers' polling) the victim is SIGKILLed. Measured: kill -> the task's next run
started (the database's clock; the server runs on this host, as SQLite always does),
p50/p95 over the kills.

Each stop round does the same with a victim whose lease is 4 s, SIGSTOPs it instead,
and waits until its claim is released: an *early release* is one whose run closed
before the lease's expiry (database clock) or for any reason but "lease expired".

The board's kanban tables are emptied first: point it at a scratch database.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import signal
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import sqlalchemy as sa

import kanban_orm as kb

from .harness import wipe_rows

SPAWN = mp.get_context("spawn")
TENANT = "crash-bench"
VICTIM, RESCUER = "victim", "rescuer"
STOP_TTL_SECONDS = 4.0
#: A bound against a hung round, not a measurement.
PATIENCE = 120.0


def rescue(url: str) -> None:
    """A rescuer: a default kb.Worker that completes whatever it claims."""
    kb.Worker(lambda task: "rescued", url=url, tenant=TENANT, assignee=RESCUER).run()


def hold(url: str, marker: str, ttl_seconds: float | None) -> None:
    """A victim: a kb.Worker whose handler says what it holds, then never returns."""

    def handler(task: kb.Task) -> str:
        Path(marker).write_text(json.dumps({"task": task.id, "token": task.claim_lock}))
        while True:
            time.sleep(3600)

    kb.Worker(
        handler, url=url, tenant=TENANT, assignee=VICTIM, ttl_seconds=ttl_seconds, idle_max=0.25
    ).run()


def empty(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        wipe_rows(conn)  # the status tallies keep their rows


def victim_holds(url: str, session: Any, ttl: float | None, tmp: str) -> Any:
    """Start a victim, let it claim the round's task, then hand the task to the
    rescuers (it stays the victim's while the victim's claim holds)."""
    marker = Path(tmp) / f"held-{time.monotonic_ns()}.json"
    # A daemon: a round that fails leaves no victim running after the bench exits.
    victim = SPAWN.Process(target=hold, args=(url, str(marker), ttl), daemon=True)
    victim.start()
    task_id = kb.create_task(session, title="victim's task", tenant=TENANT, assignee=VICTIM)
    deadline = time.monotonic() + PATIENCE
    while not marker.exists() or not marker.read_text():
        if not victim.is_alive() or time.monotonic() > deadline:
            victim.kill()
            raise RuntimeError("the victim never claimed its task")
        time.sleep(0.02)
    kb.reassign_task(session, task_id, assignee=RESCUER)
    return victim, json.loads(marker.read_text())


def kill_round(url: str, session: Any, tmp: str) -> float:
    victim, held = victim_holds(url, session, None, tmp)
    time.sleep(random.uniform(0.0, 5.0))
    killed_at = datetime.now(UTC).replace(tzinfo=None)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    deadline = time.monotonic() + PATIENCE
    while len(runs := kb.list_runs(session, task_id=held["task"])) < 2:
        if time.monotonic() > deadline:
            raise RuntimeError(f"task {held['task']} was never claimed again")
        time.sleep(0.02)
    first, second = runs[0], runs[1]
    if first.outcome != "reclaimed" or "died" not in (first.error or ""):
        raise RuntimeError(f"unexpected first run: {first.outcome} {first.error}")
    rescued(session, held["task"])
    return (second.started_at - killed_at).total_seconds()


def rescued(session: Any, task_id: int) -> None:
    """Wait until a rescuer has completed the task, so rounds do not overlap."""
    deadline = time.monotonic() + PATIENCE
    while kb.get_task(session, task_id).status != "done":
        if time.monotonic() > deadline:
            raise RuntimeError(f"task {task_id} was never completed by a rescuer")
        time.sleep(0.02)


def stop_round(url: str, session: Any, tmp: str) -> bool:
    """True if the stopped victim's claim was released early (a violation)."""
    victim, held = victim_holds(url, session, STOP_TTL_SECONDS, tmp)
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        lease_end = kb.get_task(session, held["task"]).claim_expires
        deadline = time.monotonic() + PATIENCE
        while kb.get_task(session, held["task"]).claim_lock == held["token"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the stopped victim's lease was never reclaimed")
            time.sleep(0.05)
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        os.kill(victim.pid, signal.SIGCONT)
        victim.join()
    rescued(session, held["task"])
    first = kb.list_runs(session, task_id=held["task"])[0]
    early = first.ended_at is None or lease_end is None or first.ended_at < lease_end
    return early or first.error != "lease expired"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stress.crash_bench")
    parser.add_argument("--db", required=True, help="a scratch database URL")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--stops", type=int, default=5)
    parser.add_argument("--rescuers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args()
    random.seed(args.seed)
    engine = kb.create_engine(args.db)
    kb.upgrade(engine)
    empty(engine)
    session = kb.connect(args.db)
    rescuers = [SPAWN.Process(target=rescue, args=(args.db,)) for _ in range(args.rescuers)]
    for proc in rescuers:
        proc.start()
    delays: list[float] = []
    early = 0
    try:
        with TemporaryDirectory() as tmp:
            time.sleep(3.0)  # the rescuers are up and idle
            for _ in range(args.kills):
                delays.append(kill_round(args.db, session, tmp))
            for _ in range(args.stops):
                early += stop_round(args.db, session, tmp)
    finally:
        for proc in rescuers:
            if proc.pid is not None:
                os.kill(proc.pid, signal.SIGINT)  # a Worker stops cleanly on Ctrl-C
        for proc in rescuers:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    backend = sa.make_url(args.db).get_backend_name()
    print(
        f"{backend}: {len(delays)} SIGKILLs, kill -> claimed by another: "
        f"p50 {statistics.median(delays):.2f} s, p95 {percentile(delays, 0.95):.2f} s, "
        f"max {max(delays):.2f} s (lease 900 s); "
        f"{args.stops} SIGSTOPs: {early} released before the lease ended"
    )


if __name__ == "__main__":
    main()
