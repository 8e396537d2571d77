"""What every benchmarked system shares: storage targets, worker processes, timing, checks.

A :class:`System` knows how to create its storage and queue N tasks (``setup``), how one
consumer process claims and completes tasks (``consumer``: everything slow such as
imports and connecting happens before the start signal, the returned loop is what is
timed), and how to read back from its own storage how often each task was completed
(``verify``). :func:`measure` runs one system once: fresh storage, ``procs`` spawned
consumers, one start barrier, the clock from the start signal until the last consumer
has finished, then the exactly-once check against the storage *and* the consumers' own
reports of what they completed.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event, Semaphore
from pathlib import Path
from typing import Any

import sqlalchemy as sa

SPAWN = mp.get_context("spawn")
SQLITE, POSTGRES, MYSQL = "sqlite", "postgres", "mysql"
#: The backends the bench runs on by default; MYSQL when asked (--backends).
BACKENDS = (SQLITE, POSTGRES)
ALL_BACKENDS = (*BACKENDS, MYSQL)
#: Spawned consumers get this long to import and connect before the run is abandoned.
STARTUP_SECONDS = 120.0


@dataclass(frozen=True)
class Target:
    """Where one run keeps its data: a fresh SQLite file or a freshly created PG database.

    ``url`` is an SQLAlchemy URL (``sqlite:///...`` or ``postgresql+psycopg://...``);
    :attr:`sqlite_path` and :attr:`conninfo` are what raw drivers and peers need.
    """

    backend: str
    url: str

    @property
    def sqlite_path(self) -> str:
        database = sa.make_url(self.url).database
        assert self.backend == SQLITE and database
        return database

    @property
    def conninfo(self) -> str:
        """A libpq URL (no SQLAlchemy driver suffix) for psycopg, procrastinate, pgqueuer."""
        url = sa.make_url(self.url).set(drivername="postgresql")
        return url.render_as_string(hide_password=False)


#: The timed part of one consumer: complete up to ``quota`` tasks, return their ids.
Loop = Callable[[], list[int]]


@dataclass(frozen=True)
class Verdict:
    """What the storage says was completed, per task id, plus anything else amiss."""

    completions: dict[int, int]
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class System:
    key: str
    label: str
    backend: str
    #: "kanban_orm" (the package, public API), "raw" (the baseline) or "peer".
    kind: str
    note: str
    setup: Callable[[Target, int], None]
    #: (target, worker index, quota) -> the timed loop; runs in the spawned process.
    consumer: Callable[[Target, int, int], Loop]
    verify: Callable[[Target], Verdict]
    #: None when the system can run here, else why not (a peer that is not installed).
    unavailable: Callable[[], str | None] = lambda: None


@dataclass
class Result:
    system: str
    label: str
    kind: str
    backend: str
    procs: int
    queued: int
    tasks: int
    seconds: float | None
    rate: float | None
    exactly_once: bool
    duplicates: int
    lost: int
    problems: list[str]
    note: str
    table: str = "main"
    ratio: float | None = None
    #: The rate over the lean SQLite kernel's in the same table and shape (SQLite rows).
    lean_ratio: float | None = None
    #: Every repeat's rate (--repeat); ``rate`` is their median.
    rates: list[float | None] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# -- storage ----------------------------------------------------------------------------


@contextmanager
def postgres_database(pg_url: str) -> Iterator[str]:
    """A database of this bench run's own on the server ``pg_url`` names: its database
    name plus this process's id (``kanban_bench_1234``), so two benches running at once
    never drop each other's data. Created now, re-created for every run, dropped after."""
    url = sa.make_url(pg_url)
    if not url.database:
        raise ValueError("--pg-url must name a database (the bench's is that name + _PID)")
    url = url.set(drivername="postgresql+psycopg", database=f"{url.database}_{os.getpid()}")
    _recreate(url, create=True)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        _recreate(url, create=False)


def _recreate(url: sa.URL, *, create: bool) -> None:
    import psycopg

    admin = url.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
        if create:
            conn.execute(f'CREATE DATABASE "{url.database}"')


def fresh_target(backend: str, workdir: Path, pg_url: str | None, label: str) -> Target:
    """Storage for one run: a new SQLite file, or the bench's PG database dropped and
    re-created (so no run inherits another's dead rows or statistics)."""
    if backend == SQLITE:
        path = workdir / f"{label}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return Target(SQLITE, f"sqlite:///{path}")
    assert pg_url is not None
    if backend == MYSQL:  # pg_url is then the MariaDB/MySQL bench database's URL
        from . import mariadb

        mariadb.recreate(sa.make_url(pg_url), create=True)
        return Target(MYSQL, pg_url)
    _recreate(sa.make_url(pg_url), create=True)
    return Target(POSTGRES, pg_url)


#: The tables of the connected database that hold rows (PostgreSQL).
_TABLES_WITH_ROWS = """
    SELECT format('%I.%I', n.nspname, c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND pg_relation_size(c.oid) > 0
"""


def analyze(target: Target) -> None:
    """Fresh planner statistics after seeding, as autovacuum would leave them.

    On PostgreSQL only the tables that hold rows: autovacuum never analyzes a table in
    which nothing has changed, so a new database's run table has no statistics and the
    planner assumes it may grow. Statistics that say "empty" would be a state no
    deployment is in for long, and a prepared statement's generic plan, made in the
    first second, would keep scanning the whole growing table until the next ANALYZE.
    """
    if target.backend == SQLITE:
        import sqlite3

        with closing(sqlite3.connect(target.sqlite_path)) as conn:
            conn.execute("ANALYZE")
        return
    if target.backend == MYSQL:
        from . import mariadb

        mariadb.analyze(target)
        return
    import psycopg

    with psycopg.connect(target.conninfo, autocommit=True) as conn:
        for (table,) in conn.execute(_TABLES_WITH_ROWS).fetchall():
            conn.execute(f"VACUUM ANALYZE {table}")


# -- consumer processes -----------------------------------------------------------------


def consumer_main(
    key: str,
    target: Target,
    index: int,
    quota: int,
    ready: Semaphore,
    start: Event,
    results: Any,
) -> None:
    """Entry point of a spawned consumer (module level, so spawn can pickle it)."""
    try:
        from .systems import system

        loop = system(key, target.backend).consumer(target, index, quota)
    except BaseException as error:
        results.put((index, None, [], _one_line(error, traceback.format_exc())))
        ready.release()
        return
    ready.release()
    if not start.wait(timeout=STARTUP_SECONDS):
        results.put((index, None, [], "no start signal"))
        return
    try:
        done = loop()
    except BaseException as error:
        results.put((index, time.monotonic(), [], _one_line(error, traceback.format_exc())))
        return
    results.put((index, time.monotonic(), done, None))


def _one_line(error: BaseException, trace: str) -> str:
    if os.environ.get("KANBAN_BENCH_TRACEBACKS"):
        print(trace, flush=True)
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text[:300]


def quotas(tasks: int, procs: int) -> list[int]:
    """Split ``tasks`` completions over ``procs`` consumers as evenly as possible."""
    return [tasks // procs + (1 if i < tasks % procs else 0) for i in range(procs)]


def measure(
    sys_: System,
    *,
    procs: int,
    queued: int,
    tasks: int,
    workdir: Path,
    pg_url: str | None,
    timeout: float,
    table: str = "main",
) -> Result:
    """Queue ``queued`` tasks, let ``procs`` consumers complete ``tasks`` of them, check.

    With ``tasks == queued`` each consumer stops when nothing is left to claim (its
    quota is only a cap); with fewer, the consumers share exactly ``tasks`` completions,
    which measures the claim cost at a given backlog.
    """
    target = fresh_target(sys_.backend, workdir, pg_url, f"{sys_.key}-{procs}-{queued}")
    sys_.setup(target, queued)
    analyze(target)
    drain = tasks >= queued
    caps = [queued] * procs if drain else quotas(tasks, procs)
    ready, start, results = SPAWN.Semaphore(0), SPAWN.Event(), SPAWN.Queue()
    workers = [
        SPAWN.Process(
            target=consumer_main,
            args=(sys_.key, target, i, caps[i], ready, start, results),
            name=f"bench-{sys_.key}-{i}",
            daemon=True,
        )
        for i in range(procs)
    ]
    reports: list[tuple[int, float | None, list[int], str | None]] = []
    began = 0.0
    try:
        for worker in workers:
            worker.start()
        for _ in workers:
            if not ready.acquire(timeout=STARTUP_SECONDS):
                raise RuntimeError("a consumer did not start in time")
        began = time.monotonic()
        start.set()
        deadline = began + timeout
        while len(reports) < procs:
            try:
                reports.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                break
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=10)
    problems = [f"consumer {i}: {error}" for i, _, _, error in reports if error]
    if len(reports) < procs:
        problems.append(f"{procs - len(reports)} consumer(s) still running after {timeout:g} s")
    ends = [end for _, end, _, _ in reports if end is not None]
    crashed = any(error for _, _, _, error in reports)
    seconds = max(ends) - began if ends and len(reports) == procs and not crashed else None
    delivered = Counter(task_id for _, _, done, _ in reports for task_id in done)
    try:
        verdict = sys_.verify(target)
    except Exception as error:
        verdict = Verdict({}, [f"verify failed: {_one_line(error, traceback.format_exc())}"])
    expected = queued if drain else tasks
    duplicates, lost, checks = judge(verdict, delivered, expected)
    problems += verdict.problems + checks
    ok = not problems and duplicates == 0 and lost == 0
    rate = tasks / seconds if seconds and seconds > 0 else None
    return Result(
        rates=[rate],
        system=sys_.key,
        label=sys_.label,
        kind=sys_.kind,
        backend=sys_.backend,
        procs=procs,
        queued=queued,
        tasks=min(tasks, queued),
        seconds=seconds,
        rate=rate,
        exactly_once=ok,
        duplicates=duplicates,
        lost=lost,
        problems=problems,
        note=sys_.note,
        table=table,
    )


def judge(verdict: Verdict, delivered: Counter[int], expected: int) -> tuple[int, int, list[str]]:
    """Duplicates and losses, from the storage's count and the consumers' reports.

    A task counts as a duplicate if the storage recorded it completed more than once
    or more than one completion was handed to consumers (a queue that forgets a second
    delivery in its storage still shows up in the consumers' reports).
    """
    stored = verdict.completions
    duplicated = {t for t, n in stored.items() if n > 1} | {
        t for t, n in delivered.items() if n > 1
    }
    done_both = set(stored) & set(delivered)
    lost = max(0, expected - len(done_both))
    checks = []
    if set(stored) != set(delivered):
        only_stored = len(set(stored) - set(delivered))
        only_delivered = len(set(delivered) - set(stored))
        checks.append(
            f"storage and consumers disagree: {only_stored} only in storage, "
            f"{only_delivered} only reported by consumers"
        )
    if len(done_both) > expected:
        checks.append(f"{len(done_both)} tasks completed, {expected} expected")
    return len(duplicated), lost, checks
