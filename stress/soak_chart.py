"""The soak's curves as one PNG: ``python -m stress.soak_chart REPORT.json ... --out PNG``.

Each REPORT is the ``--json`` of a ``python -m stress soak`` run (one per backend, run side
by side). Three panels against minutes into the run: throughput (cycles per second, per
window), each worker's resident memory, and the database's size (SQLite's WAL dashed).
``--load FILE`` adds the machine's load average: lines of ``TIME load1 load5 load15 ...``
(a timestamp, then /proc/loadavg), taken every minute from the soak's start.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .bench.report import no_chart, pyplot

TITLES = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MariaDB"}


def load_samples(path: str) -> list[tuple[float, float]]:
    """(minute, 1-minute load average) per line, minutes counted from the first line."""
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    return [(float(i), float(row[1])) for i, row in enumerate(rows)]


def _minutes(points: list[list[float]]) -> tuple[list[float], list[float]]:
    return [p[0] / 60 for p in points], [p[1] for p in points]


def draw(reports: list[dict[str, Any]], out: str, load: list[tuple[float, float]]) -> str | None:
    """Draw the chart to ``out``; a message instead when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return no_chart()
    panels = 4 if load else 3
    figure, axes = plt.subplots(panels, 1, figsize=(10, 2.6 * panels + 0.6), sharex=True)
    for report in reports:
        _draw_one(axes, report)
    if load:
        axes[3].plot([m for m, _ in load], [v for _, v in load], color="black")
        axes[3].set_ylabel("load average\n(1 min, 2 cores)")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("cycles/s\n(claim, complete, create)")
    axes[1].set_ylabel("RSS per worker (MB)")
    axes[2].set_ylabel("database size (MB)")
    axes[2].set_yscale("log")
    axes[-1].set_xlabel("minutes into the soak")
    for axis in axes[:3]:
        axis.legend(fontsize=7, loc="best")
        axis.grid(alpha=0.3)
    minutes = max(r["numbers"].get("minutes", 0) for r in reports)
    workers = reports[0]["workers"] if reports else 0
    figure.suptitle(f"soak: {minutes:g} minutes, {workers} workers per backend, side by side")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return None


def _draw_one(axes: Any, report: dict[str, Any]) -> None:
    numbers = report["numbers"]
    name = TITLES.get(report["backend"], report["backend"])
    curve = numbers.get("throughput_curve_per_s", [])
    (line,) = axes[0].plot(
        [(t + numbers["window_s"] / 2) / 60 for t, _ in curve],
        [rate for _, rate in curve],
        marker=".",
        label=name,
    )
    color = line.get_color()
    for i, (worker, points) in enumerate(sorted(numbers.get("rss_curve_kb", {}).items())):
        minutes, kb = _minutes(points)
        axes[1].plot(
            minutes,
            [k / 1024 for k in kb],
            color=color,
            linestyle=("-", "--", ":", "-.")[i % 4],
            label=f"{name} {worker}",
        )
    minutes, size = _minutes(numbers.get("db_size_mb", []))
    axes[2].plot(minutes, size, color=color, label=f"{name} total")
    wal = numbers.get("db_parts_mb", {}).get("wal")
    if wal:
        minutes, size = _minutes(wal)
        axes[2].plot(minutes, size, color=color, linestyle="--", label=f"{name} WAL")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stress.soak_chart", description=__doc__)
    p.add_argument("reports", nargs="+", metavar="REPORT.json", help="soak --json reports")
    p.add_argument("--out", required=True, metavar="PNG")
    p.add_argument("--load", metavar="FILE", help="load-average samples, one a minute")
    args = p.parse_args(argv)
    reports = [json.loads(Path(path).read_text()) for path in args.reports]
    problem = draw(reports, args.out, load_samples(args.load) if args.load else [])
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
