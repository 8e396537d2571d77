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

A scenario may also set ``CHAOS`` (a :class:`Chaos`): the parent then SIGKILLs a share of
the workers at random moments of the work phase, each while it is inside a database call
or inside its simulated work (workers say which with :meth:`WorkerContext.stage`), and
starts a replacement for each; on PostgreSQL it also terminates random backends
(``pg_terminate_backend``) of the workers mid-statement. Those deaths are the test, not
casualties: they are reported as ``Outcome.kills`` and ``Outcome.terminations``.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import SynchronizedArray
from multiprocessing.synchronize import Event, Semaphore
from pathlib import Path
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import db as kb_db

T = TypeVar("T")
SPAWN = mp.get_context("spawn")
#: Past the timeout workers finish the task in hand; this much later they are killed.
GRACE_SECONDS = 5.0
#: Start-up (spawn + imports) gets at least this long, whatever ``--timeout`` says: a
#: loaded machine can take seconds to import, and that is not what the timeout limits.
STARTUP_SECONDS = 60.0
#: How often the parent looks at its workers (and redraws the progress bar).
POLL_SECONDS = 0.1

#: Worker log kind for a database error that reached the worker (DatabaseBusy,
#: DatabaseUnavailable, DatabaseError): what the seed's invariant 6 counts.
DB_ERROR = "db_error"
#: The errors a worker survives and logs as DB_ERROR: each is a finding for the checks,
#: not a crash. A raw driver error is not among them: the library promises none reaches
#: a caller, so one that does crashes its worker and fails the run. A scenario's own
#: queries go through :func:`read` for the same reason.
DB_ERRORS = (kb.DatabaseBusy, kb.DatabaseUnavailable, kb.DatabaseError)
#: Worker log kinds the harness itself writes.
READY, EXIT, CRASH, TIMED_OUT = "ready", "exit", "crash", "timed_out"
#: The casualty line added when a worker could not start: no work ran at all.
ABORTED = "run aborted before the start signal: nothing was tested"

Procs = Mapping[str, BaseProcess]

#: What a worker is doing, as :meth:`WorkerContext.stage` publishes it to the parent.
IDLE, TRANSACTION, WORKING = 0, 1, 2
STAGES = {IDLE: "idle", TRANSACTION: "transaction", WORKING: "work"}


@dataclass(frozen=True)
class Chaos:
    """How the parent disturbs a scenario's run (set as the scenario's ``CHAOS``).

    ``kill_fraction`` of ``--workers`` (at least one) are SIGKILLed, each when the board's
    done count first passes a random share of the tasks in ``kill_between``; the kills
    alternate between a victim inside a database call and one inside its work (the
    parent waits up to ``stage_wait`` seconds for the victim to get there), and each
    victim is replaced by a fresh worker. On PostgreSQL ``terminations`` random worker
    backends are terminated while they run a statement or sit in a transaction, spread
    over the same window.
    """

    kill_fraction: float = 0.2
    kill_between: tuple[float, float] = (0.05, 0.8)
    stage_wait: float = 2.0
    terminations: int = 0


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
    #: "sync" (kanban_orm) or "async" (kanban_orm.aio, on an event loop per worker),
    #: for the scenarios that run on both (claims).
    api: str = "sync"

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
    #: Chaos only: the parent's SIGKILLs ({worker, stage, task, at, t}) and backend
    #: terminations ({pid, state, at, t}); ``at`` is wall-clock seconds (time.time()).
    kills: list[dict[str, Any]] = field(default_factory=list)
    terminations: list[dict[str, Any]] = field(default_factory=list)
    #: Numbers a scenario's checks measured for the report ({"reclaims": 12, ...}).
    numbers: dict[str, Any] = field(default_factory=dict)

    def entries(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        for worker_log in self.logs.values():
            for entry in worker_log:
                if kind is None or entry["kind"] == kind:
                    yield entry


class Disturber(Protocol):
    """What a scenario's ``disturber(config)`` returns: the parent's own faults (a server
    restart, a file made read-only), stepped while the workers run; ``numbers`` go to
    :attr:`Outcome.numbers`."""

    numbers: dict[str, Any]

    def step(self) -> None: ...

    def close(self) -> None: ...


class Scenario(Protocol):
    DESCRIPTION: str

    def setup(self, session: Session, config: Config) -> None: ...

    def work(self, worker: WorkerContext) -> None: ...

    def checks(self, outcome: Outcome, session: Session) -> list[Check]: ...


def read(session: Session, query: Callable[[Session], T]) -> T:
    """Run a scenario's own read through the library's retry layer (kanban errors only)."""
    return kb_db.run_read(session, query)


def one_line(error: BaseException, limit: int = 200) -> str:
    """An error as one short line: driver errors carry the SQL and a blank line after."""
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- inside a worker process ------------------------------------------------------------


class StallWatch:
    """Notices a measure of progress (tasks left, the newest event id) that has not
    moved for ``seconds``, so a worker on a board that cannot finish stops by itself."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last: Any = None
        self._since = time.monotonic()

    def stalled(self, value: Any) -> bool:
        now = time.monotonic()
        if value != self.last:
            self.last, self._since = value, now
            return False
        return now - self._since > self.seconds


class WorkerContext:
    """A worker's view: its name, seeded random source, claim function and log."""

    def __init__(
        self,
        index: int,
        config: Config,
        log_path: Path,
        shared: SynchronizedArray[int] | None = None,
    ) -> None:
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
        # [stage, task id] for the parent's chaos (see stage()); None outside a run.
        self._shared = shared

    def log(self, kind: str, **fields: Any) -> None:
        entry = {
            "kind": kind,
            "worker": self.name,
            "t": time.monotonic() - self.started,
            "at": time.time(),
            **fields,
        }
        self._log.write(json.dumps(entry) + "\n")

    @contextmanager
    def stage(self, stage: int, task: int | None = None) -> Iterator[None]:
        """Say what this worker is doing (TRANSACTION or WORKING, on which task) for the
        parent to aim its kills; back to IDLE afterwards. Costs two memory writes."""
        shared = self._shared
        if shared is None:
            yield
            return
        shared[1] = task or 0
        shared[0] = stage
        try:
            yield
        finally:
            shared[0] = IDLE

    def work_pause(self) -> None:
        time.sleep(self.work_seconds())

    def work_seconds(self) -> float:
        """One simulated piece of work's length, from ``--work-ms``."""
        low, high = self.config.work_ms
        return self.random.uniform(low, high) / 1000

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


def worker_main(
    config_raw: dict[str, Any],
    index: int,
    ready: Semaphore,
    start: Event,
    shared: SynchronizedArray[int] | None = None,
    began: float | None = None,
) -> None:
    """Entry point of a spawned worker process (module level, so spawn can pickle it).

    A replacement started mid-run (chaos) gets ``began``, the parent's time.monotonic()
    at the start signal (one clock for every process on the machine), so its log times
    and its timeout count from the run's start like everyone else's.
    """
    from .scenarios import SCENARIOS

    config = Config.from_dict(config_raw)
    worker = WorkerContext(index, config, _log_path(config, f"worker-{index}"), shared)
    try:
        worker.claim_task = resolve(config.claim_impl)
        scenario = SCENARIOS[config.scenario]
        worker.log(READY)
        ready.release()
        if not _wait_for_start(worker, start):
            return
        # Every worker's clock starts at the signal.
        worker.started = time.monotonic() if began is None else began
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
        wipe_rows(session)
        session.commit()


def wipe_rows(conn: Any) -> None:
    """Delete every kanban row, children first, in the caller's transaction; the status
    tallies keep their rows (the table's own, made with it) and start over."""
    tallies: Any = kb.StatusTally.__table__
    for table in reversed(kb.Base.metadata.sorted_tables):
        if table is not tallies:
            conn.execute(table.delete())
    conn.execute(tallies.update().values(tasks=0, through=None))


def run(scenario: Scenario, config: Config, *, progress: bool) -> Outcome:
    """Seed the board, run the workers to the end or the timeout, collect their logs."""
    with kb.connect(config.db_url) as session:
        scenario.setup(session, config)
    chaos: Chaos | None = getattr(scenario, "CHAOS", None)
    make_disturber: Callable[[Config], Disturber] | None = getattr(scenario, "disturber", None)
    disturber: Disturber | None = None
    ready, start = SPAWN.Semaphore(0), SPAWN.Event()
    procs: dict[str, BaseProcess] = {}
    shared: dict[str, SynchronizedArray[int]] = {}

    def spawn(index: int, began: float | None = None) -> BaseProcess:
        name = f"worker-{index}"
        shared[name] = SPAWN.Array("q", 2, lock=False)
        procs[name] = SPAWN.Process(
            target=worker_main,
            args=(config.as_dict(), index, ready, start, shared[name], began),
            name=name,
        )
        return procs[name]

    for i in range(config.workers):
        spawn(i)
    killer: _Killer | None = None
    try:
        for proc in procs.values():
            proc.start()
        not_started = _await_ready(config, procs, ready, max(config.timeout, STARTUP_SECONDS))
        if not_started:
            _kill(procs)
            return Outcome(config, _read_logs(config, procs), 0.0, [*not_started, ABORTED])
        start.set()
        began = time.monotonic()
        if chaos is not None:
            killer = _Killer(chaos, config, procs, shared, spawn, began)
        if make_disturber is not None:
            disturber = make_disturber(config)
        with _progress(config, progress) as tick:

            def step() -> None:
                tick()
                if killer is not None:
                    killer.step()
                if disturber is not None:
                    disturber.step()

            hung = _wait(procs, began + config.timeout + GRACE_SECONDS, step)
        wall = time.monotonic() - began
    finally:
        _kill(procs)  # Ctrl-C or a harness bug must not leave workers behind
        if killer is not None:
            killer.close()
        if disturber is not None:
            disturber.close()
    logs = _read_logs(config, procs)
    killed = {k["worker"] for k in killer.kills} if killer else set()
    survivors = {name: log for name, log in logs.items() if name not in killed}
    casualties = _fates({n: p for n, p in procs.items() if n not in killed}, logs, hung)
    casualties += _timed_out(config, logs)
    return Outcome(
        config,
        logs,
        _elapsed(survivors, wall, casualties),
        casualties,
        kills=killer.kills if killer else [],
        terminations=killer.terminations if killer else [],
        numbers=dict(disturber.numbers) if disturber else {},
    )


class _Killer:
    """The parent's side of :class:`Chaos`: SIGKILL and replace workers, terminate
    PostgreSQL backends, each when the done count passes its threshold."""

    def __init__(
        self,
        chaos: Chaos,
        config: Config,
        procs: dict[str, BaseProcess],
        shared: dict[str, SynchronizedArray[int]],
        spawn: Callable[[int, float | None], BaseProcess],
        began: float,
    ) -> None:
        self.chaos, self.config, self.procs, self.shared = chaos, config, procs, shared
        self.spawn, self.began = spawn, began
        self.random = random.Random(config.seed * 7919 + 1)
        low, high = chaos.kill_between
        kills = max(1, round(chaos.kill_fraction * config.workers))
        self.kill_at = sorted(self.random.uniform(low, high) * config.tasks for _ in range(kills))
        engine = kb.cached_engine(config.db_url)
        self.postgres = engine.dialect.name == "postgresql"
        # Its own NullPool engine: a terminated backend must never be one of ours.
        self.engine = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
        terminations = chaos.terminations if self.postgres else 0
        self.terminate_at = sorted(
            self.random.uniform(low, high) * config.tasks for _ in range(terminations)
        )
        self.next_index = config.workers
        self.kills: list[dict[str, Any]] = []
        self.terminations: list[dict[str, Any]] = []

    def close(self) -> None:
        self.engine.dispose()

    def step(self) -> None:
        if not self.kill_at and not self.terminate_at:
            return
        try:
            with self.engine.connect() as conn:
                done = conn.execute(
                    sa.select(sa.func.count()).where(kb.Task.status == kb.Status.DONE.value)
                ).scalar_one()
        except sa.exc.DBAPIError:
            return
        target = TRANSACTION if len(self.kills) % 2 == 0 else WORKING
        if self.kill_at and done >= self.kill_at[0] and self._kill_one(target):
            self.kill_at.pop(0)
        if self.terminate_at and done >= self.terminate_at[0] and self._terminate_one():
            self.terminate_at.pop(0)

    def _kill_one(self, target: int) -> bool:
        killed = {k["worker"] for k in self.kills}
        alive = [n for n, p in self.procs.items() if p.is_alive() and n not in killed]
        if not alive:
            return False
        name = self.random.choice(alive)
        proc, shared = self.procs[name], self.shared[name]
        deadline = time.monotonic() + self.chaos.stage_wait
        while shared[0] != target and time.monotonic() < deadline and proc.is_alive():
            time.sleep(0.0002)
        stage, task = shared[0], shared[1]
        if proc.pid is None or not proc.is_alive():
            return False
        os.kill(proc.pid, signal.SIGKILL)
        at = time.time()
        self.kills.append(
            {
                "worker": name,
                "stage": STAGES.get(stage, str(stage)),
                "task": task or None,
                "at": at,
                "t": round(time.monotonic() - self.began, 3),
            }
        )
        self.spawn(self.next_index, self.began).start()
        self.next_index += 1
        return True

    def _terminate_one(self) -> bool:
        """Terminate one worker backend that is running a statement or holds a
        transaction open; look for up to a second. False: none caught this time."""
        find = sa.text(
            "SELECT pid, state FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
            "AND state IN ('active', 'idle in transaction')"
        )
        deadline = time.monotonic() + 1.0
        try:
            with self.engine.connect() as conn:
                while time.monotonic() < deadline:
                    busy = conn.execute(find).all()
                    conn.rollback()
                    if not busy:
                        time.sleep(0.001)
                        continue
                    pid, state = self.random.choice(busy)
                    ok = conn.execute(
                        sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}
                    ).scalar()
                    conn.rollback()
                    if ok:
                        self.terminations.append(
                            {
                                "pid": pid,
                                "state": state,
                                "at": time.time(),
                                "t": round(time.monotonic() - self.began, 3),
                            }
                        )
                        return True
        except sa.exc.DBAPIError:
            pass
        return False


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
