"""What every scenario shares: a database, worker processes, their logs, the checks.

A scenario module supplies ``setup`` (seed the board), ``work`` (one worker's loop, run
in a spawned process) and ``checks`` (invariants over the logs and the database); the
harness does the rest: spawning, a common start signal, a global timeout, naming
workers that died or hung, collecting logs, timing and reporting.

A run has two phases. Start-up: every worker imports its code, opens its log and says
it is ready; a worker that dies here aborts the run at once (nothing was tested, and
waiting for it would only hang). Work: the start signal releases everyone together and
the clock starts; ``--timeout`` seconds later workers stop taking new work, and
``GRACE_SECONDS`` after that any worker still alive is killed and named as hung.
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
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event, Semaphore
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

import kanban_orm as kb

SPAWN = mp.get_context("spawn")
#: Past the timeout workers finish the task in hand; this much later they are killed.
GRACE_SECONDS = 5.0
#: Start-up (spawn + imports) gets at least this long, whatever ``--timeout`` says: a
#: loaded machine can take seconds to import, and that is not what the timeout limits.
STARTUP_SECONDS = 60.0
#: How often the parent looks at its workers (and redraws the progress bar).
POLL_SECONDS = 0.1

#: Worker log kind for a database error that reached the worker (raw driver error or
#: DatabaseBusy): what the seed's invariant 6 counts.
DB_ERROR = "db_error"
#: Worker log kinds the harness itself writes.
READY, EXIT, CRASH, TIMED_OUT = "ready", "exit", "crash", "timed_out"
#: The casualty line added when a worker could not start: no work ran at all.
ABORTED = "run aborted before the start signal: nothing was tested"

Procs = Mapping[str, BaseProcess]


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
        # A plain dict crosses the spawn boundary without pickling this module's classes.
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
    #: Workers that died, hung, ran out of time or never started, one sentence each
    #: ("worker-3 died with exit code -9"); any entry fails the run.
    casualties: list[str] = field(default_factory=list)

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


def one_line(error: BaseException, limit: int = 200) -> str:
    """An error as one short line: driver errors carry the SQL and a blank line after."""
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- inside a worker process ------------------------------------------------------------


class WorkerContext:
    """A worker's view: its name, seeded random source, claim function and log."""

    def __init__(self, index: int, config: Config, log_path: Path) -> None:
        self.index = index
        self.name = f"worker-{index}"
        self.config = config
        self.random = random.Random(config.seed * 1000 + index)
        # One JSON line per event, line-buffered: a killed worker's log survives up to
        # its last complete line (the chaos scenarios depend on it).
        self._log = log_path.open("a", buffering=1)
        self.started = time.monotonic()
        self.timed_out = False
        self._parent = os.getppid()
        self.claim_task: Callable[..., kb.Task | None] = kb.claim_task

    def log(self, kind: str, **fields: Any) -> None:
        entry = {"kind": kind, "worker": self.name, "t": time.monotonic() - self.started, **fields}
        self._log.write(json.dumps(entry) + "\n")

    def work_pause(self) -> None:
        low, high = self.config.work_ms
        time.sleep(self.random.uniform(low, high) / 1000)

    def orphaned(self) -> bool:
        return os.getppid() != self._parent

    def out_of_time(self) -> bool:
        """Past the timeout, or orphaned: a worker whose harness died stops by itself.

        Scenarios call this before taking new work; the first True is logged, so the
        report can say the run stopped with work left rather than just "tasks not done".
        """
        if not self.timed_out and time.monotonic() - self.started > self.config.timeout:
            self.timed_out = True
            self.log(TIMED_OUT)
        return self.timed_out or self.orphaned()

    def close(self) -> None:
        self._log.close()


def resolve(claim_impl: str | None) -> Callable[..., kb.Task | None]:
    """``module:function`` to use instead of kb.claim_task (the checker's own test)."""
    if not claim_impl:
        return kb.claim_task
    module, sep, name = claim_impl.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"expected MODULE:FUNCTION, not {claim_impl!r}")
    function = getattr(importlib.import_module(module), name)
    if not callable(function):
        raise ValueError(f"{claim_impl} is not callable")
    return function  # type: ignore[no-any-return]


def worker_main(config_raw: dict[str, Any], index: int, ready: Semaphore, start: Event) -> None:
    """Entry point of a spawned worker process (module level, so spawn can pickle it)."""
    from .scenarios import SCENARIOS

    config = Config.from_dict(config_raw)
    worker = WorkerContext(index, config, _log_path(config, f"worker-{index}"))
    try:
        worker.claim_task = resolve(config.claim_impl)
        scenario = SCENARIOS[config.scenario]
        worker.log(READY)
        ready.release()
        if not _wait_for_start(worker, start):
            return
        worker.started = time.monotonic()  # every worker's clock starts at the signal
        scenario.work(worker)
        worker.log(EXIT)
    except BaseException as error:
        # The traceback goes to stderr as usual; the log keeps the gist for the report.
        worker.log(CRASH, error=one_line(error), where=_where(error))
        raise
    finally:
        worker.close()


def _wait_for_start(worker: WorkerContext, start: Event) -> bool:
    deadline = time.monotonic() + max(worker.config.timeout, STARTUP_SECONDS)
    while not start.wait(timeout=1.0):
        if worker.orphaned() or time.monotonic() > deadline:
            return False
    return True


def _where(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""


# -- in the parent ----------------------------------------------------------------------


@contextmanager
def database(db_url: str | None, keep: bool) -> Iterator[str]:
    """A fresh temporary SQLite database, or the given one with its kanban rows wiped."""
    if db_url:
        kb.init_db(db_url)
        _wipe(db_url)
        try:
            yield db_url
        finally:
            kb.dispose_engines()
        return
    home = tempfile.mkdtemp(prefix="kanban_stress_")
    url = f"sqlite:///{home}/kanban.db"
    try:
        kb.init_db(url)
        yield url
    finally:
        kb.dispose_engines()
        if keep:
            print(f"database kept at {home}/kanban.db")
        else:
            shutil.rmtree(home, ignore_errors=True)


def _wipe(db_url: str) -> None:
    """Delete every row of every kanban table, children first, so runs are repeatable.

    Rows only: the schema (and its version table) stays, and other tables in the
    database are not touched.
    """
    with kb.connect(db_url) as session:
        for table in reversed(kb.Base.metadata.sorted_tables):
            session.execute(table.delete())
        session.commit()


def run(scenario: Scenario, config: Config, *, progress: bool) -> Outcome:
    """Seed the board, run the workers to the end or the timeout, collect their logs."""
    with kb.connect(config.db_url) as session:
        scenario.setup(session, config)
    ready, start = SPAWN.Semaphore(0), SPAWN.Event()
    procs = {
        f"worker-{i}": SPAWN.Process(
            target=worker_main, args=(config.as_dict(), i, ready, start), name=f"worker-{i}"
        )
        for i in range(config.workers)
    }
    try:
        for proc in procs.values():
            proc.start()
        not_started = _await_ready(config, procs, ready, max(config.timeout, STARTUP_SECONDS))
        if not_started:
            _kill(procs)
            return Outcome(config, _read_logs(config, procs), 0.0, [*not_started, ABORTED])
        start.set()
        began = time.monotonic()
        with _progress(config, progress) as tick:
            hung = _wait(procs, began + config.timeout + GRACE_SECONDS, tick)
        wall = time.monotonic() - began
    finally:
        _kill(procs)  # Ctrl-C or a harness bug must not leave workers behind
    logs = _read_logs(config, procs)
    casualties = _fates(procs, logs, hung) + _timed_out(config, logs)
    return Outcome(config, logs, _elapsed(logs, wall, casualties), casualties)


def _await_ready(config: Config, procs: Procs, ready: Semaphore, limit: float) -> list[str]:
    """Wait until every worker is ready; else say which were not, one sentence each.

    Returns as soon as a worker dies (the run is lost; waiting would only hang), or
    after ``limit`` seconds naming the workers that have not said they are ready.
    """
    deadline = time.monotonic() + limit
    waiting = len(procs)
    while waiting:
        if ready.acquire(timeout=POLL_SECONDS):
            waiting -= 1
            continue
        logs = {name: _read_log(_log_path(config, name)) for name in procs}
        dead = [
            f"{name} died with exit code {p.exitcode} before the start{_crash(logs[name])}"
            for name, p in procs.items()
            if not p.is_alive()
        ]
        if dead:
            return dead
        if time.monotonic() > deadline:
            return [
                f"{name} was not ready to start after {limit:g} s"
                for name in procs
                if not any(e["kind"] == READY for e in logs[name])
            ]
    return []


def _wait(procs: Procs, deadline: float, tick: Callable[[], None]) -> set[str]:
    """Wait for every worker to exit; kill and return those still alive at ``deadline``."""
    while any(p.is_alive() for p in procs.values()) and time.monotonic() < deadline:
        tick()
        time.sleep(POLL_SECONDS)
    hung = {name for name, p in procs.items() if p.is_alive()}
    _kill(procs)
    return hung


def _kill(procs: Procs) -> None:
    for proc in procs.values():
        if proc.is_alive():
            proc.kill()
    for proc in procs.values():
        if proc.pid is not None:
            proc.join(timeout=10)


def _fates(procs: Procs, logs: dict[str, list[dict[str, Any]]], hung: set[str]) -> list[str]:
    """One sentence per worker that did not end cleanly, named."""
    fates = []
    for name, proc in procs.items():
        if name in hung:
            fates.append(f"{name} hung past the timeout and was killed")
        elif proc.exitcode != 0:
            fates.append(f"{name} died with exit code {proc.exitcode}{_crash(logs[name])}")
        elif not any(e["kind"] == EXIT for e in logs[name]):
            fates.append(f"{name} exited without finishing its log")
    return fates


def _crash(entries: list[dict[str, Any]]) -> str:
    """Why a worker died, when it lived long enough to log the exception."""
    crash = next((e for e in entries if e["kind"] == CRASH), None)
    return f": {crash['error']} ({crash['where']})" if crash else ""


def _timed_out(config: Config, logs: dict[str, list[dict[str, Any]]]) -> list[str]:
    late = [name for name, entries in logs.items() if any(e["kind"] == TIMED_OUT for e in entries)]
    if not late:
        return []
    return [f"run timed out after {config.timeout:g} s; stopped by the timeout: {', '.join(late)}"]


def _elapsed(logs: dict[str, list[dict[str, Any]]], wall: float, casualties: list[str]) -> float:
    """Seconds from the start signal to the last worker's exit entry.

    Measured by the workers, because the parent only notices an exit after the
    interpreter's teardown (a second or two on a loaded machine). A run with casualties
    has no clean ending to measure: the parent's clock then stands.
    """
    exits = [e["t"] for entries in logs.values() for e in entries if e["kind"] == EXIT]
    if casualties or len(exits) != len(logs):
        return wall
    return max(exits, default=wall)


def _log_path(config: Config, name: str) -> Path:
    return Path(config.log_dir) / f"{name}.jsonl"


def _read_logs(config: Config, procs: Procs) -> dict[str, list[dict[str, Any]]]:
    return {name: _read_log(_log_path(config, name)) for name in procs}


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
    finished = sa.select(sa.func.count()).where(kb.Task.status == kb.Status.DONE.value)
    columns = (
        TextColumn(f"[bold]{config.scenario}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tasks done"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("tasks", total=config.tasks)

        def tick() -> None:
            try:
                with engine.connect() as conn:
                    bar.update(task, completed=conn.execute(finished).scalar_one())
            except sa.exc.DBAPIError:
                pass  # a progress bar must never fail the run it decorates

        yield tick
