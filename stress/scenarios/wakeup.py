"""Idle pick-up latency: how soon an idle ``kb.Worker`` claims a task made ready.

worker-0 runs one ``kb.Worker`` (concurrency 1, a no-op handler, the default idle
backoff as its safety poll) and nothing else; worker-1 creates ``--tasks`` tasks, one
at a time, ``--work-ms`` apart (the gap, uniform; the issue measured 1000-3000); any
further workers stay idle. The latency of each task is read from the database's own
clock: its first run's start minus the task's creation. worker-0 also measures its own
CPU time (``/proc/self/stat``, every thread) from its first task to its last, as a
share of one core: an idle worker's cost, plus one claim and completion per gap.

The percentiles and the CPU share are reported, not judged (a loaded machine would
fail a timing check); the checks are that every task was claimed once and completed.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.models import Task, TaskRun

from ..harness import Check, Config, Outcome, WorkerContext, read

DESCRIPTION = (
    "one idle kb.Worker, new tasks --work-ms apart (e.g. 1000-3000): created->claimed "
    "latency p50/p90/p99 from database timestamps, and the idle worker's CPU share"
)
TENANT = "wakeup"
#: Log kinds: worker-0's CPU measurement, worker-1's last task made.
CPU, MADE = "worker_cpu", "made_all"


def setup(session: Session, config: Config) -> None:
    return None  # the tasks come one at a time, during the run


def work(worker: WorkerContext) -> None:
    if worker.index == 0:
        _idle_worker(worker)
    elif worker.index == 1:
        _producer(worker)


def _idle_worker(worker: WorkerContext) -> None:
    finished = threading.Event()
    handled = 0
    # From the first task to the last: the start-up (connections, the first claim) is
    # not what an idle worker costs.
    first: tuple[float, float] | None = None
    last = (0.0, 0.0)

    def handler(task: kb.Task) -> None:
        nonlocal handled, first, last
        handled += 1
        last = (_cpu_seconds(), time.monotonic())
        first = first or last
        if handled >= worker.config.tasks:
            finished.set()

    runner = kb.Worker(handler, url=worker.config.db_url, tenant=TENANT)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    while not finished.wait(0.5) and not worker.out_of_time():
        pass
    runner.stop()
    thread.join(30)
    if first is not None and handled > 1:
        cpu, wall = last[0] - first[0], last[1] - first[1]
        worker.log(CPU, cpu_seconds=cpu, wall_seconds=wall, handled=handled)


def _cpu_seconds() -> float:
    """User plus system time of this process, every thread, from /proc/self/stat."""
    with open("/proc/self/stat") as stat:
        # The command name may hold spaces: the fields after it start past its ")".
        fields = stat.read().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _producer(worker: WorkerContext) -> None:
    session = kb.connect(worker.config.db_url)
    try:
        for number in range(worker.config.tasks):
            if worker.out_of_time():
                return
            worker.work_pause()  # the gap: the worker has gone idle by now
            kb.create_task(session, title=f"wakeup #{number}", tenant=TENANT)
        worker.log(MADE)
    finally:
        session.close()


def latencies_ms(session: Session) -> list[float]:
    """Created -> first claimed, per task, in milliseconds (database clock both)."""
    first_run = (
        select(TaskRun.task_id, func.min(TaskRun.started_at).label("claimed_at"))
        .group_by(TaskRun.task_id)
        .subquery()
    )
    rows = read(
        session,
        lambda s: s.execute(
            select(Task.created_at, first_run.c.claimed_at).join(
                first_run, first_run.c.task_id == Task.id
            )
        ).all(),
    )
    return sorted((claimed - created).total_seconds() * 1000 for created, claimed in rows)


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile of sorted ``values``."""
    index = max(0, min(len(values) - 1, round(share * len(values) + 0.5) - 1))
    return values[index]


def checks(outcome: Outcome, session: Session) -> list[Check]:
    expected = outcome.config.tasks
    latencies = latencies_ms(session)
    runs = read(session, lambda s: s.scalar(select(func.count()).select_from(TaskRun)))
    done = read(
        session,
        lambda s: s.scalar(select(func.count()).select_from(Task).where(Task.status == "done")),
    )
    numbers: dict[str, Any] = {"tasks_measured": len(latencies)}
    if latencies:
        numbers.update(
            {
                f"latency_ms_{name}": round(percentile(latencies, share), 2)
                for name, share in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
            }
        )
        numbers["latency_ms_mean"] = round(statistics.fmean(latencies), 2)
        numbers["latency_ms_max"] = round(latencies[-1], 2)
    cpu = next(outcome.entries(CPU), None)
    if cpu is not None and cpu["wall_seconds"] > 0:
        numbers["worker_cpu_percent_of_a_core"] = round(
            100 * cpu["cpu_seconds"] / cpu["wall_seconds"], 3
        )
    outcome.numbers.update(numbers)
    return [
        Check("every task claimed once", runs == expected == len(latencies), f"{runs} runs"),
        Check("every task completed", done == expected, f"{done} of {expected} done"),
        Check("the worker measured its CPU", cpu is not None or expected < 2, ""),
        Check("no worker crashed or hung", not outcome.casualties, "; ".join(outcome.casualties)),
    ]
