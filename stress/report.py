"""The report: one line per invariant, then the numbers; optionally as JSON."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .harness import Check, Outcome


def summary(outcome: Outcome, checks: list[Check]) -> dict[str, Any]:
    config = outcome.config
    per_worker = Counter(e["worker"] for e in outcome.entries("completed"))
    completes = sum(per_worker.values())
    # Throughput counts up to the last completion, not the workers' idle polls after it.
    busy = max((e["t"] for e in outcome.entries("completed")), default=outcome.elapsed)
    return {
        "scenario": config.scenario,
        "backend": sa.make_url(config.db_url).get_backend_name(),
        "ok": all(c.ok for c in checks),
        "invariants": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
        "workers": config.workers,
        "tasks": config.tasks,
        "work_ms": list(config.work_ms),
        "seed": config.seed,
        "claims": sum(1 for _ in outcome.entries("claimed")),
        "completes": completes,
        "lost_races": sum(1 for _ in outcome.entries("lost_claim_race")),
        "elapsed_seconds": round(outcome.elapsed, 3),
        "seconds_to_last_completion": round(busy, 3),
        "throughput_tasks_per_second": round(completes / busy, 1) if busy else None,
        "per_worker_completions": {
            w: per_worker.get(w, 0) for w in sorted(outcome.logs, key=_worker_number)
        },
        "casualties": outcome.casualties,
    }


def _worker_number(name: str) -> int:
    return int(name.rpartition("-")[2])


def render(report: dict[str, Any]) -> str:
    lines = [
        f"{report['scenario']} on {report['backend']}: "
        f"{report['workers']} workers, {report['tasks']} tasks, "
        f"work {report['work_ms'][0]:g}-{report['work_ms'][1]:g} ms, seed {report['seed']}",
        "",
    ]
    for check in report["invariants"]:
        mark = "✔" if check["ok"] else "✘"
        detail = f" — {check['detail']}" if check["detail"] else ""
        lines.append(f"{mark} {check['name']}{detail}")
    lines += [
        "",
        f"claims:      {report['claims']}",
        f"completes:   {report['completes']}",
        f"lost races:  {report['lost_races']} (contention, not errors)",
        f"elapsed:     {report['elapsed_seconds']:.2f} s "
        f"({report['seconds_to_last_completion']:.2f} s to the last completion)",
        f"throughput:  {report['throughput_tasks_per_second']} tasks/s",
        "per-worker completions: "
        + ", ".join(f"{w} {n}" for w, n in report["per_worker_completions"].items()),
        "",
        "ALL INVARIANTS HELD" if report["ok"] else "INVARIANTS VIOLATED",
    ]
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n")
