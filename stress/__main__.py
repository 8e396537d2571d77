"""``python -m stress [scenario] [options]`` (``kanban-orm stress`` from a wheel)."""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import sqlalchemy as sa

import kanban_orm as kb

from . import harness, report
from .scenarios import SCENARIOS


def _work_ms(text: str) -> tuple[float, float]:
    low, sep, high = text.partition("-")
    try:
        bounds = (float(low), float(high if sep else low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX milliseconds, not {text!r}") from None
    if not 0 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 0 <= MIN <= MAX, not {text!r}")
    return bounds


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _claim_impl(text: str) -> str:
    """Import it now: a typo is a usage error, not five workers dying at start-up."""
    try:
        harness.resolve(text)
    except (ImportError, AttributeError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"cannot use {text!r}: {error}") from None
    return text


def _prog() -> str:
    # The same code ships in the wheel as kanban_orm._stress, run as `kanban-orm stress`.
    if __package__ != "stress" or Path(sys.argv[0]).name == "kanban-orm":
        return "kanban-orm stress"
    return "python -m stress"


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _paragraphs(*texts: str) -> str:
    width = min(shutil.get_terminal_size().columns, 100) - 2
    return "\n\n".join(textwrap.fill(t, width, break_on_hyphens=False) for t in texts)


def parser() -> argparse.ArgumentParser:
    prog = _prog()
    p = argparse.ArgumentParser(
        prog=prog,
        # Wrapped here, without breaking "kanban-orm" at its hyphen as argparse would.
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_paragraphs(
            "Prove kanban_orm's guarantees with real worker processes. Scenarios: "
            + "; ".join(f"{n}: {m.DESCRIPTION}" for n, m in SCENARIOS.items()),
            f"{prog} bench [OPTIONS]: the throughput benchmark, kanban_orm against the raw "
            f"driver baseline and peer queues (its options: {prog} bench --help).",
        ),
        epilog=_paragraphs(
            "--db points at a database the stress suite may wipe: every row of its "
            "kanban_* tables is deleted before the run (other tables are left alone)."
        ),
    )
    p.add_argument(
        "scenario", nargs="?", default="claims", choices=sorted(SCENARIOS), help="default: claims"
    )
    p.add_argument(
        "--db",
        metavar="URL",
        help="database to run against; its kanban tables are WIPED first "
        "(default: a fresh temporary SQLite file)",
    )
    p.add_argument(
        "--workers", type=_positive, default=5, metavar="N", help="worker processes (default 5)"
    )
    p.add_argument(
        "--tasks", type=_positive, default=100, metavar="N", help="tasks to seed (default 100)"
    )
    p.add_argument(
        "--work-ms",
        type=_work_ms,
        default=(1.0, 50.0),
        metavar="MIN-MAX",
        help="simulated work per task, uniform in milliseconds (default 1-50)",
    )
    p.add_argument(
        "--seed", type=int, metavar="N", help="seed the workers' random choices (reproducible)"
    )
    p.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=300.0,
        metavar="SECONDS",
        help="seconds the workers may run after the start (default 300); then they stop, "
        f"stragglers are killed {harness.GRACE_SECONDS:g} s later and the run fails",
    )
    p.add_argument(
        "--minutes",
        type=_positive_seconds,
        metavar="M",
        help="soak only: how long the workers run (default 60)",
    )
    p.add_argument(
        "--api",
        choices=("sync", "async"),
        default="sync",
        help="claims only: the workers call kanban_orm (sync, the default) or kanban_orm.aio "
        "(async: each worker an event loop, the async drivers)",
    )
    p.add_argument("--json", metavar="FILE", help="also write a machine-readable report")
    p.add_argument("--keep-db", action="store_true", help="keep the temporary SQLite database")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # Testing only: workers call this instead of kb.claim_task (tests/racy_claim.py).
    p.add_argument("--claim-impl", type=_claim_impl, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from .bench.cli import bench_argv

    if (bench := bench_argv(argv)) is not None:  # the throughput benchmark's own options
        from .bench import main as bench_main

        return bench_main(bench)
    args = parser().parse_args(argv)
    scenario = SCENARIOS[args.scenario]
    seed = args.seed if args.seed is not None else random.randrange(1, 2**31)
    timeout = args.timeout
    if args.scenario == "soak":
        from .scenarios import soak

        timeout = (args.minutes or 60.0) * 60 + soak.MARGIN_SECONDS
    elif args.minutes is not None:
        parser().error("--minutes is for the soak scenario")
    if args.api == "async" and not getattr(scenario, "ASYNC", False):
        parser().error(f"--api async is for the claims scenario, not {args.scenario}")
    if args.api == "async" and args.claim_impl:
        parser().error("--claim-impl replaces the sync claim: not with --api async")
    try:
        # A scenario that brings its own database (a private server it may restart)
        # says so with a database(db, keep) of its own.
        database = getattr(scenario, "database", harness.database)
        with (
            database(args.db, args.keep_db) as url,
            tempfile.TemporaryDirectory(prefix="kanban_stress_logs_") as log_dir,
        ):
            config = harness.Config(
                scenario=args.scenario,
                db_url=url,
                workers=args.workers,
                tasks=args.tasks,
                work_ms=args.work_ms,
                seed=seed,
                timeout=timeout,
                log_dir=log_dir,
                claim_impl=args.claim_impl,
                api=args.api,
            )
            outcome = harness.run(scenario, config, progress=not args.no_progress)
            with kb.connect(url) as session:
                checks = scenario.checks(outcome, session)
            result = report.summary(outcome, checks)
    except (kb.KanbanError, sa.exc.SQLAlchemyError, OSError) as error:
        # An unreachable or unusable database: one line, not a traceback.
        print(f"error: {harness.one_line(error, 500)}", file=sys.stderr)
        return 1
    print(report.render(result))
    if args.json:
        report.write_json(result, args.json)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
