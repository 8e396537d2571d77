"""What every scenario shares: a database, worker processes, their logs, the checks.

A scenario module supplies ``setup`` (seed the board), ``work`` (one worker's loop, run
in a spawned process) and ``checks`` (invariants over the logs and the database); the
harness does the rest: spawning with a common start signal, a global timeout, naming
workers that died or hung, collecting logs, timing and reporting.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import delete
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import queries as q

SPAWN = mp.get_context("spawn")
#: Workers stop starting new work at the timeout; past it by this much they are killed.
GRACE_SECONDS = 10.0

#: Worker log entries whose kind starts with this count against "no escaped lock errors".
DB_ERROR = "db_error"


@dataclass(frozen=True)
class Config:
    scenario: str
    db_url: str
    workers: int
    tasks: int
    work_ms: tuple[float, float]
    seed: int
    timeout: float
    log_dir: str
    claim_impl: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "work_ms": list(self.work_ms)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        return cls(**{**raw, "work_ms": tuple(raw["work_ms"])})


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Outcome:
    """What a run produced, before the scenario's checks judge it."""

    config: Config
    logs: dict[str, list[dict[str, Any]]]
    elapsed: float
    casualties: list[str] = field(default_factory=list)  # "worker-3 died with exit code -9"

    def entries(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        for worker_log in self.logs.values():
            for entry in worker_log:
                if kind is None or entry["kind"] == kind:
                    yield entry


class Scenario(Protocol):
    DESCRIPTION: str

    def setup(self, session: Session, config: Config) -> None: ...

    def work(self, worker: WorkerContext) -> None: ...

    def checks(self, outcome: Outcome, session: Session) -> list[Check]: ...


# -- inside a worker process ------------------------------------------------------------


class WorkerContext:
    """A worker's view: its name, seeded random source, claim function and log."""

    def __init__(self, index: int, config: Config, log_path: Path) -> None:
        self.index = index
        self.name = f"worker-{index}"
        self.config = config
        self.random = random.Random(config.seed * 1000 + index)
        self.claim_task: Callable[..., kb.Task | None] = resolve(config.claim_impl)
        self._log = log_path.open("a", buffering=1)  # a line per event survives a kill
        self.started = time.monotonic()
        self._parent = os.getppid()

    def log(self, kind: str, **fields: Any) -> None:
        entry = {"kind": kind, "worker": self.name, "t": time.monotonic() - self.started, **fields}
        self._log.write(json.dumps(entry) + "\n")

    def work_pause(self) -> None:
        low, high = self.config.work_ms
        time.sleep(self.random.uniform(low, high) / 1000)

    def out_of_time(self) -> bool:
        """Past the timeout, or orphaned: a worker whose harness died stops by itself."""
        orphaned = os.getppid() != self._parent
        return orphaned or time.monotonic() - self.started > self.config.timeout

    def close(self) -> None:
        self._log.close()


def resolve(claim_impl: str | None) -> Callable[..., kb.Task | None]:
    """``module:function`` to use instead of kb.claim_task (the checker's own test)."""
    if not claim_impl:
        return kb.claim_task
    module, _, name = claim_impl.partition(":")
    function: Callable[..., kb.Task | None] = getattr(importlib.import_module(module), name)
    return function


def worker_main(config_raw: dict[str, Any], index: int, start: Barrier) -> None:
    """Entry point of a spawned worker process."""
    from .scenarios import SCENARIOS

    config = Config.from_dict(config_raw)
    scenario = SCENARIOS[config.scenario]
    worker = WorkerContext(index, config, Path(config.log_dir) / f"worker-{index}.jsonl")
    try:
        start.wait(timeout=config.timeout)  # everyone imported and ready: go together
        worker.started = time.monotonic()
        scenario.work(worker)
        worker.log("exit")
    finally:
        worker.close()


# -- in the parent ----------------------------------------------------------------------


@contextmanager
def database(db_url: str | None, keep: bool) -> Iterator[str]:
    """A fresh temporary SQLite database, or the given one with its kanban rows wiped."""
    if db_url:
        kb.init_db(db_url)
        with kb.connect(db_url) as session:
            for table in (q.comments, q.events, q.links, q.runs, q.tasks):
                session.execute(delete(table))
            session.commit()
        yield db_url
        return
    home = tempfile.mkdtemp(prefix="kanban_stress_")
    url = f"sqlite:///{home}/kanban.db"
    kb.init_db(url)
    try:
        yield url
    finally:
        kb.dispose_engines()
        if keep:
            print(f"database kept at {home}/kanban.db")
        else:
            shutil.rmtree(home, ignore_errors=True)


def run(scenario: Scenario, config: Config, *, progress: bool) -> Outcome:
    """Seed the board, run the workers to the end or the timeout, collect their logs."""
    with kb.connect(config.db_url) as session:
        scenario.setup(session, config)
    start = SPAWN.Barrier(config.workers + 1)
    procs = {
        f"worker-{i}": SPAWN.Process(
            target=worker_main, args=(config.as_dict(), i, start), name=f"worker-{i}"
        )
        for i in range(config.workers)
    }
    for proc in procs.values():
        proc.start()
    start.wait(timeout=config.timeout)  # the clock starts once every worker is ready
    began = time.monotonic()
    with _progress(config, progress) as tick:
        casualties = _wait(procs, began + config.timeout + GRACE_SECONDS, tick)
    elapsed = time.monotonic() - began
    logs = {name: _read_log(Path(config.log_dir) / f"{name}.jsonl") for name in procs}
    return Outcome(config, logs, elapsed, casualties)


def _wait(procs: dict[str, Any], deadline: float, tick: Callable[[], None]) -> list[str]:
    while any(p.is_alive() for p in procs.values()) and time.monotonic() < deadline:
        tick()
        time.sleep(0.1)
    casualties = []
    for name, proc in procs.items():
        if proc.is_alive():
            proc.kill()
            proc.join()
            casualties.append(f"{name} hung past the timeout and was killed")
        elif proc.exitcode != 0:
            casualties.append(f"{name} died with exit code {proc.exitcode}")
    return casualties


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a killed worker
            continue
    return entries


@contextmanager
def _progress(config: Config, enabled: bool) -> Iterator[Callable[[], None]]:
    """A rich progress bar of finished tasks while on a terminal; silent otherwise."""
    if not enabled or not sys.stdout.isatty():
        yield lambda: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    engine = kb.cached_engine(config.db_url)
    finished = sa.select(sa.func.count()).where(q.tasks.c.status == kb.Status.DONE.value)
    columns = (
        TextColumn(f"[bold]{config.scenario}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tasks done"),
        TimeElapsedColumn(),
    )
    with Progress(*columns) as bar:
        task = bar.add_task("tasks", total=config.tasks)

        def tick() -> None:
            with engine.connect() as conn:
                bar.update(task, completed=conn.execute(finished).scalar_one())

        yield tick
