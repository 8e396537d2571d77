"""The bench's command line, run plan, tables and JSON report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .core import (
    ALL_BACKENDS,
    BACKENDS,
    MYSQL,
    POSTGRES,
    Result,
    System,
    measure,
    postgres_database,
)
from .mariadb import DEFAULT_MYSQL_URL, MYSQL_URL_ENV, mysql_database
from .report import chart, render, targets
from .systems import ALL_KEYS, LEAN, RAW, system, systems

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/kanban_bench"
PG_URL_ENV = "KANBAN_BENCH_POSTGRES_URL"
#: Systems the scaling and backlog tables cover.
DETAIL_KEYS = ("kb-next", RAW)
#: One measurement's shape: system, consumer processes, tasks queued, tasks completed.
Shape = tuple[System, int, int, int]


@dataclass(frozen=True)
class Plan:
    tasks: int
    procs: int
    systems: tuple[str, ...]
    backends: tuple[str, ...]
    scaling: tuple[int, ...]
    scaling_tasks: int
    backlog: tuple[int, ...]
    backlog_tasks: int
    timeout: float
    pg_url: str
    repeat: int = 1
    mysql_url: str = DEFAULT_MYSQL_URL


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace("k", "000"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _numbers(text: str) -> tuple[int, ...]:
    return tuple(_positive(part) for part in text.split(",") if part.strip())


def _choices(allowed: Iterable[str]) -> Callable[[str], tuple[str, ...]]:
    allowed = tuple(allowed)

    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = [c for c in chosen if c not in allowed]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(
                f"choose from {', '.join(allowed)}; not {', '.join(unknown) or 'nothing'}"
            )
        return chosen

    return parse


def _prog() -> str:
    if not (__package__ or "").startswith("stress") or Path(sys.argv[0]).name == "kanban-orm":
        return "kanban-orm stress bench"
    return "python -m stress bench"


def bench_argv(argv: list[str]) -> list[str] | None:
    """The bench's arguments when ``argv`` (the stress suite's) asks for the bench.

    ``kanban-orm stress`` puts the root ``--db URL`` (or ``$KANBAN_DATABASE_URL``) first.
    The bench makes its own databases: a PostgreSQL URL there names its server (and
    the prefix of its database name); a SQLite one is not needed.
    """
    if argv[:1] == ["bench"]:
        return argv[1:]
    if len(argv) >= 3 and argv[0] == "--db" and argv[2] == "bench":
        rest = argv[3:]
        if argv[1].startswith("postgresql") and "--pg-url" not in rest:
            rest = ["--pg-url", argv[1], *rest]
        return rest
    return None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=_prog(),
        description="Zero-work claim -> complete throughput of kanban_orm, a raw-driver "
        "baseline on the same tables, and peer queues (when installed), on SQLite, "
        "PostgreSQL and MariaDB/MySQL (--backends). Every system must complete every task "
        "exactly once; one that does not is marked in the table.",
        epilog=f"--pg-url names the PostgreSQL server and a database name (default "
        f"{DEFAULT_PG_URL}, or ${PG_URL_ENV}); the bench uses the database NAME_PID, "
        "re-created for every run and dropped at the end. SQLite runs use a temporary "
        "directory.",
    )
    p.add_argument(
        "--tasks", type=_positive, metavar="N", help="tasks queued per run (default 10000, or 10k)"
    )
    p.add_argument("--procs", type=_positive, metavar="P", help="consumer processes (default 5)")
    p.add_argument(
        "--systems",
        type=_choices(ALL_KEYS),
        default=ALL_KEYS,
        metavar="LIST",
        help=f"comma-separated, default all: {','.join(ALL_KEYS)}",
    )
    p.add_argument(
        "--backends",
        type=_choices(ALL_BACKENDS),
        default=BACKENDS,
        metavar="LIST",
        help="comma-separated from sqlite,postgres,mysql (MariaDB/MySQL); default sqlite,postgres",
    )
    p.add_argument(
        "--scaling",
        type=_numbers,
        nargs="?",
        const=(1, 2, 5, 16),
        metavar="PROCS",
        help="also a scaling table of kb-next and raw at these process counts "
        "(default when given without a value: 1,2,5,16)",
    )
    p.add_argument(
        "--scaling-tasks",
        type=_positive,
        metavar="N",
        help="tasks per scaling run (default --tasks)",
    )
    p.add_argument(
        "--backlog",
        type=_numbers,
        nargs="?",
        const=(1_000, 100_000),
        metavar="QUEUED",
        help="also a backlog table of kb-next and raw: the same number of completions "
        "(--backlog-tasks) with this many tasks queued (default: 1000,100000)",
    )
    p.add_argument(
        "--backlog-tasks",
        type=_positive,
        metavar="N",
        help="completions measured at each backlog (default: the smallest backlog)",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="a small preset that proves the bench works (CI): 50 tasks, 2 processes, "
        "scaling at 1,2 and backlog 50 vs 500 when asked for",
    )
    p.add_argument(
        "--repeat",
        type=_positive,
        default=1,
        metavar="N",
        help="run every measurement N times, interleaved, and report the median (default 1)",
    )
    p.add_argument(
        "--timeout", type=float, default=900.0, metavar="SECONDS", help="per run (default 900)"
    )
    p.add_argument("--pg-url", metavar="URL", help="PostgreSQL server and database name prefix")
    p.add_argument(
        "--mysql-url",
        metavar="URL",
        help=f"MariaDB/MySQL server and database name prefix (default {DEFAULT_MYSQL_URL}, "
        f"or ${MYSQL_URL_ENV}; the database used is NAME_PID, as for --pg-url)",
    )
    p.add_argument("--json", metavar="FILE", help="also write every row as JSON")
    p.add_argument("--chart", metavar="PNG", help="also draw the main table (needs matplotlib)")
    return p


def plan_from(args: argparse.Namespace) -> Plan:
    tiny = args.tiny
    tasks = args.tasks or (50 if tiny else 10_000)
    scaling = args.scaling or ()
    if tiny and args.scaling == (1, 2, 5, 16):
        scaling = (1, 2)
    backlog = args.backlog or ()
    if tiny and args.backlog == (1_000, 100_000):
        backlog = (50, 500)
    return Plan(
        tasks=tasks,
        procs=args.procs or (2 if tiny else 5),
        systems=args.systems,
        backends=args.backends,
        scaling=scaling,
        scaling_tasks=args.scaling_tasks or tasks,
        backlog=backlog,
        backlog_tasks=args.backlog_tasks or min(backlog, default=tasks),
        timeout=args.timeout,
        pg_url=args.pg_url or os.environ.get(PG_URL_ENV) or DEFAULT_PG_URL,
        repeat=args.repeat,
        mysql_url=args.mysql_url or os.environ.get(MYSQL_URL_ENV) or DEFAULT_MYSQL_URL,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    plan = plan_from(args)
    started = time.time()
    results: list[Result] = []
    skipped: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="kanban_bench_") as workdir:
        for backend in plan.backends:
            if backend == POSTGRES:
                try:
                    with postgres_database(plan.pg_url) as pg_url:
                        results += run_backend(plan, backend, Path(workdir), skipped, pg_url)
                except Exception as error:
                    if not _unreachable(error):
                        raise
                    reason = f"PostgreSQL unreachable at {_shown(plan.pg_url)}: {_line(error)}"
                    _say(f"skipped postgres: {reason}")
                    skipped.append({"system": "*", "backend": POSTGRES, "reason": reason})
            elif backend == MYSQL:
                results += run_mysql(plan, Path(workdir), skipped)
            else:
                results += run_backend(plan, backend, Path(workdir), skipped, None)
    add_ratios(results)
    print(render(results, skipped, plan))
    if args.json:
        write_json(args.json, plan, results, skipped, time.time() - started)
    if args.chart:
        message = chart(results, args.chart)
        if message:
            _say(message)
    own = [r for r in results if r.kind != "peer"]
    return 0 if all(r.exactly_once for r in own) else 1


def run_mysql(plan: Plan, workdir: Path, skipped: list[dict[str, str]]) -> list[Result]:
    """The MariaDB/MySQL column, in a database of its own (see --mysql-url)."""
    try:
        with mysql_database(plan.mysql_url) as url:
            return run_backend(plan, MYSQL, workdir, skipped, url)
    except sa.exc.OperationalError as error:
        reason = f"MariaDB/MySQL unreachable at {_shown(plan.mysql_url)}: {_line(error)}"
        _say(f"skipped mysql: {reason}")
        skipped.append({"system": "*", "backend": MYSQL, "reason": reason})
        return []


def _unreachable(error: BaseException) -> bool:
    import psycopg

    return isinstance(error, psycopg.OperationalError) and "connect" in str(error).lower()


def _shown(url: str) -> str:
    """A URL fit to print: the password masked."""
    return sa.make_url(url).render_as_string(hide_password=True)


def _line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:200]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_backend(
    plan: Plan, backend: str, workdir: Path, skipped: list[dict[str, str]], pg_url: str | None
) -> list[Result]:
    chosen: list[System] = []
    for key in plan.systems:
        if (key, backend) not in systems():
            continue
        found = system(key, backend)
        reason = found.unavailable()
        if reason:
            _say(f"skipped {key} on {backend}: {reason}")
            skipped.append({"system": key, "backend": backend, "reason": reason})
            continue
        chosen.append(found)

    def run(found: System, procs: int, queued: int, tasks: int, table: str) -> Result:
        _say(f"{backend:8} {found.key:13} {procs:2} procs  {tasks}/{queued} tasks ...")
        try:
            result = measure(
                found,
                procs=procs,
                queued=queued,
                tasks=tasks,
                workdir=workdir,
                pg_url=pg_url,
                timeout=plan.timeout,
                table=table,
            )
        except Exception as error:  # set-up or storage failed: a failed row, not a crash
            result = failed(found, procs, queued, tasks, table, f"run failed: {_line(error)}")
        rate = f"{result.rate:,.0f} tasks/s" if result.rate else "no rate"
        verdict = "exactly once" if result.exactly_once else "; ".join(result.problems)[:200]
        _say(f"{'':8} {'':13} -> {rate}, {verdict or 'FAILED'}")
        return result

    # Every distinct shape (system, procs, queued, tasks) runs once per repeat; a shape
    # two tables share (the scaling point at --procs is the main run) runs once.
    rows: list[tuple[str, Shape]] = [
        ("main", (f, plan.procs, plan.tasks, plan.tasks)) for f in chosen
    ]
    detail = [found for found in chosen if found.key in DETAIL_KEYS]
    rows += [
        ("scaling", (f, procs, plan.scaling_tasks, plan.scaling_tasks))
        for procs in plan.scaling
        for f in detail
    ]
    rows += [
        ("backlog", (f, plan.procs, queued, plan.backlog_tasks))
        for queued in plan.backlog
        for f in detail
    ]
    shapes = list(dict.fromkeys(shape for _, shape in rows))
    runs: dict[Shape, list[Result]] = {shape: [] for shape in shapes}
    for _ in range(plan.repeat):  # interleaved, so a burst of load hits every system alike
        for shape in shapes:
            found, procs, queued, tasks = shape
            first_table = next(table for table, s in rows if s == shape)
            runs[shape].append(run(found, procs, queued, tasks, first_table))
    return [dataclasses.replace(median(runs[shape]), table=table) for table, shape in rows]


def median(repeats: list[Result]) -> Result:
    """The run with the median rate, judged exactly-once only if every repeat was."""
    rated = sorted((r for r in repeats if r.rate), key=lambda r: r.rate or 0.0)
    chosen = rated[(len(rated) - 1) // 2] if rated else repeats[0]
    problems = list(dict.fromkeys(p for r in repeats for p in r.problems))
    return dataclasses.replace(
        chosen,
        exactly_once=all(r.exactly_once for r in repeats),
        duplicates=max(r.duplicates for r in repeats),
        lost=max(r.lost for r in repeats),
        problems=problems,
        rates=[r.rate for r in repeats],
    )


def failed(found: System, procs: int, queued: int, tasks: int, table: str, why: str) -> Result:
    return Result(
        system=found.key,
        label=found.label,
        kind=found.kind,
        backend=found.backend,
        procs=procs,
        queued=queued,
        tasks=min(tasks, queued),
        seconds=None,
        rate=None,
        exactly_once=False,
        duplicates=0,
        lost=0,
        problems=[why],
        note=found.note,
        table=table,
    )


def add_ratios(results: list[Result]) -> None:
    """Each row's rate over the raw baseline's, and over the lean kernel's, in the same
    table, backend and shape."""
    raw = {
        (r.table, r.backend, r.procs, r.queued): r.rate
        for r in results
        if r.system == RAW and r.rate
    }
    lean = {
        (r.table, r.backend, r.procs, r.queued): r.rate
        for r in results
        if r.system == LEAN and r.rate
    }
    for r in results:
        base = raw.get((r.table, r.backend, r.procs, r.queued))
        if base and r.rate:
            r.ratio = r.rate / base
        ceiling = lean.get((r.table, r.backend, r.procs, r.queued))
        if ceiling and r.rate:
            r.lean_ratio = r.rate / ceiling


def write_json(
    path: str, plan: Plan, results: list[Result], skipped: list[dict[str, str]], wall: float
) -> None:
    report: dict[str, Any] = {
        "plan": {
            **plan.__dict__,
            "pg_url": _shown(plan.pg_url),
            "mysql_url": _shown(plan.mysql_url),
        },
        "cpus": os.cpu_count(),
        "wall_seconds": wall,
        "results": [r.as_dict() for r in results],
        "targets": targets(results),
        "skipped": skipped,
    }
    Path(path).write_text(json.dumps(report, indent=2) + "\n")
