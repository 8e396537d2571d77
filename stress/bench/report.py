"""The bench's tables (rich) and its optional chart (matplotlib)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from kanban_orm.db import install_command

from .core import MYSQL, POSTGRES, SQLITE, Result

if TYPE_CHECKING:
    from .cli import Plan


def _rate(r: Result) -> str:
    return f"{r.rate:,.0f}" if r.rate else "-"


def _ratio(r: Result) -> str:
    return f"{r.ratio:.2f}x" if r.ratio is not None else "-"


def _lean_ratio(r: Result) -> str:
    return f"{r.lean_ratio:.2f}x" if r.lean_ratio is not None else "-"


def _verdict(r: Result) -> str:
    if r.exactly_once:
        return "[green]yes[/]"
    parts = []
    if r.duplicates:
        parts.append(f"{r.duplicates} DOUBLE-DELIVERED")
    if r.lost:
        parts.append(f"{r.lost} LOST")
    parts += r.problems[:2]
    return "[red bold]NO[/] " + "; ".join(parts)


def main_table(results: list[Result], plan: Plan) -> Table:
    table = Table(
        title=f"Zero-work claim -> complete: {plan.tasks:,} tasks, {plan.procs} processes",
        caption="x raw: rate over the raw-driver baseline on the same backend; x lean: over "
        "the lean SQLite kernel (raw loop, minimal schema)",
    )
    for name, justify in [
        ("backend", "left"),
        ("system", "left"),
        ("tasks/s", "right"),
        ("x raw", "right"),
        ("x lean", "right"),
        ("seconds", "right"),
        ("exactly once", "left"),
        ("API / notes", "left"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in results:
        seconds = f"{r.seconds:.2f}" if r.seconds else "-"
        table.add_row(
            r.backend,
            r.label,
            _rate(r),
            _ratio(r),
            _lean_ratio(r),
            seconds,
            _verdict(r),
            r.note,
        )
    return table


def scaling_table(results: list[Result]) -> Table:
    procs = sorted({r.procs for r in results})
    table = Table(title="Scaling: tasks/s by consumer processes (x raw at the same count)")
    table.add_column("backend")
    table.add_column("system")
    for p in procs:
        table.add_column(f"{p} proc{'s' if p > 1 else ''}", justify="right")
    for backend, label in dict.fromkeys((r.backend, r.label) for r in results):
        cells = []
        for p in procs:
            row = next(
                (r for r in results if (r.backend, r.label, r.procs) == (backend, label, p)), None
            )
            cells.append(_cell(row))
        table.add_row(backend, label, *cells)
    return table


def backlog_table(results: list[Result]) -> Table:
    queued = sorted({r.queued for r in results})
    tasks = results[0].tasks if results else 0
    table = Table(
        title=f"Backlog: tasks/s completing {tasks:,} tasks with this many queued "
        "(last column: largest backlog's rate over the smallest's)"
    )
    table.add_column("backend")
    table.add_column("system")
    for q in queued:
        table.add_column(f"{q:,} queued", justify="right")
    table.add_column("large/small", justify="right")
    for backend, label in dict.fromkeys((r.backend, r.label) for r in results):
        rows = [
            next(
                (r for r in results if (r.backend, r.label, r.queued) == (backend, label, q)), None
            )
            for q in queued
        ]
        first, last = rows[0], rows[-1]
        trend = (
            f"{last.rate / first.rate:.2f}"
            if first and last and first.rate and last.rate and len(rows) > 1
            else "-"
        )
        table.add_row(backend, label, *(_cell(r) for r in rows), trend)
    return table


def _cell(r: Result | None) -> str:
    if r is None:
        return "-"
    mark = "" if r.exactly_once else " [red bold]NOT EXACTLY ONCE[/]"
    ratio = f" ({r.ratio:.2f}x)" if r.ratio is not None and r.system != "raw" else ""
    return f"{_rate(r)}{ratio}{mark}"


#: The performance targets judged on the main table, each a ratio of kanban_orm's rate to a
#: baseline's: the raw driver baseline (hand-written SQL on the bare driver) or the lean
#: kernel. (PostgreSQL claim_many(10) >= 1.5x pgqueuer was retired for the Worker's
#: end-to-end targets; pgqueuer stays in the table as a peer.)
#: (target, backend, system, baseline, minimum ratio).
TARGETS = (
    ("SQLite claim_next >= 0.6x raw", SQLITE, "kb-next", "raw", 0.6),
    ("SQLite claim_many(50) >= 2x raw single claim", SQLITE, "kb-many50", "raw", 2.0),
    ("PostgreSQL claim_next >= 0.95x raw", POSTGRES, "kb-next", "raw", 0.95),
    ("MariaDB claim_next >= 0.9x raw", MYSQL, "kb-next", "raw", 0.9),
    ("SQLite Worker, no-op >= 0.5x the lean kernel", SQLITE, "kb-worker", "lean", 0.5),
    ("PostgreSQL Worker, no-op >= 0.9x raw", POSTGRES, "kb-worker", "raw", 0.9),
    # The same targets for the Worker with prefetch, whose batches commit together.
    ("SQLite Worker, prefetch >= 0.5x the lean kernel", SQLITE, "kb-worker-prefetch", "lean", 0.5),
    ("PostgreSQL Worker, prefetch >= 0.9x raw", POSTGRES, "kb-worker-prefetch", "raw", 0.9),
)
#: Claim cost must not grow with backlog: the largest backlog's rate within 1.2x of the
#: smallest's.
BACKLOG_SLOWDOWN = 1.2


def targets(results: list[Result]) -> list[dict[str, Any]]:
    """Each performance target (see :data:`TARGETS`) that this run can judge: the measured ratio and
    whether it is met (None when a row is missing or failed its exactly-once check)."""
    main = {(r.backend, r.system): r for r in results if r.table == "main"}
    judged: list[dict[str, Any]] = []

    def add(name: str, mine: Result | None, base: Result | None, minimum: float) -> None:
        if mine is None or base is None:
            return
        good = mine.exactly_once and base.exactly_once and mine.rate and base.rate
        value = mine.rate / base.rate if good and mine.rate and base.rate else None
        met = None if value is None else value >= minimum
        judged.append({"target": name, "minimum": minimum, "value": value, "met": met})

    for name, backend, key, base_key, minimum in TARGETS:
        add(name, main.get((backend, key)), main.get((backend, base_key)), minimum)
    for backend in (SQLITE, POSTGRES):
        shape = ("backlog", backend, "kb-next")
        rows = sorted(
            (r for r in results if (r.table, r.backend, r.system) == shape), key=lambda r: r.queued
        )
        if len(rows) >= 2:
            small, large = rows[0], rows[-1]
            name = (
                f"{'SQLite' if backend == SQLITE else 'PostgreSQL'} claim_next at "
                f"{large.queued:,} queued within {BACKLOG_SLOWDOWN}x of {small.queued:,}"
            )
            add(name, large, small, 1 / BACKLOG_SLOWDOWN)
    return judged


def targets_table(judged: list[dict[str, Any]], plan: Plan) -> Table:
    shape = "5 processes, 10,000 tasks"
    this = f"{plan.procs} processes, {plan.tasks:,} tasks"
    table = Table(
        title="Targets: kanban_orm's rate vs the raw driver and the lean kernel",
        caption=f"set for {shape}; this run: {this}"
        + ("" if this == shape else " (indicative only)"),
    )
    table.add_column("target")
    table.add_column("measured", justify="right")
    table.add_column("met")
    for t in judged:
        value = "-" if t["value"] is None else f"{t['value']:.2f}x"
        met = {None: "-", True: "[green]yes[/]", False: "[red]no[/]"}[t["met"]]
        table.add_row(t["target"], value, met)
    return table


def render(results: list[Result], skipped: list[dict[str, str]], plan: Plan) -> str:
    parts: list[Any] = [main_table([r for r in results if r.table == "main"], plan)]
    scaling = [r for r in results if r.table == "scaling"]
    if scaling:
        parts.append(scaling_table(scaling))
    backlog = [r for r in results if r.table == "backlog"]
    if backlog:
        parts.append(backlog_table(backlog))
    judged = targets(results)
    if judged:
        parts.append(targets_table(judged, plan))
    if skipped:
        parts += [Text(_skip_line(s)) for s in skipped]  # not markup: "[bench]" is text
    console = Console(width=160, record=True, force_terminal=False, color_system=None)
    with console.capture() as capture:
        console.print(Group(*parts))
    return capture.get()


def _skip_line(skip: dict[str, str]) -> str:
    what = skip["backend"] if skip["system"] == "*" else f"{skip['system']} on {skip['backend']}"
    return f"skipped {what}: {skip['reason']}"


def pyplot() -> Any:
    """matplotlib.pyplot drawing to files (Agg), or None when matplotlib is missing.

    Imported by name: matplotlib is in the optional bench extra only, and the type check
    must pass (the same) with or without it installed."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        return importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return None


def no_chart() -> str:
    """What a chart command says when :func:`pyplot` found no matplotlib."""
    return f"no chart: matplotlib is not installed ({install_command('bench')})"


def chart(results: list[Result], path: str) -> str | None:
    """A bar chart of the main table's tasks/s; a message instead when it cannot."""
    plt = pyplot()
    if plt is None:
        return no_chart()
    rows = [r for r in results if r.table == "main" and r.rate]
    if not rows:
        return "no chart: no rates to draw"
    figure, axis = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
    labels = [f"{r.backend}: {r.label}" for r in rows]
    colors = [
        {"kanban_orm": "tab:blue", "raw": "tab:gray", "peer": "tab:orange"}[r.kind] for r in rows
    ]
    bars = axis.barh(labels, [r.rate or 0 for r in rows], color=colors)
    values = [
        f" {r.rate or 0:,.0f}" + ("" if r.exactly_once else "  NOT EXACTLY ONCE") for r in rows
    ]
    axis.bar_label(bars, labels=values, fontsize=8)
    axis.margins(x=0.25)
    axis.invert_yaxis()
    axis.set_xlabel("tasks/s (zero-work claim -> complete)")
    procs = rows[0].procs
    axis.set_title(f"{rows[0].tasks:,} tasks, {procs} processes")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None
