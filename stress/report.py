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
    busy = max((e["t"] for e in outcome.entries("completed")), default=None)
    return {
        "scenario": config.scenario,
        "backend": sa.make_url(config.db_url).get_backend_name(),
        # Casualties fail the run even if a scenario's checks forgot to look at them.
        "ok": all(c.ok for c in checks) and not outcome.casualties,
        "invariants": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
        "workers": config.workers,
        "tasks": config.tasks,
        "work_ms": list(config.work_ms),
        "seed": config.seed,
        "claims": sum(1 for _ in outcome.entries("claimed")),
        "completes": completes,
        "lost_races": sum(1 for _ in outcome.entries("lost_claim_race")),
        "elapsed_seconds": round(outcome.elapsed, 3),
        "seconds_to_last_completion": round(busy, 3) if busy is not None else None,
        "throughput_tasks_per_second": round(completes / busy, 1) if busy else None,
        "per_worker_completions": {
            w: per_worker.get(w, 0) for w in sorted(outcome.logs, key=_worker_number)
        },
        "casualties": outcome.casualties,
        # What the scenario measured, and the chaos the parent caused (if any).
        "numbers": outcome.numbers,
        "kills": len(outcome.kills),
        "terminations": len(outcome.terminations),
        "kill_log": outcome.kills,
        "termination_log": outcome.terminations,
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
    # Casualties a scenario's checks did not already name get lines of their own.
    unmentioned = [
        c for c in report["casualties"] if not any(c in i["detail"] for i in report["invariants"])
    ]
    lines += [f"✘ {c}" for c in unmentioned]
    lines += [
        "",
        f"claims:      {report['claims']}",
        f"completes:   {report['completes']}",
        f"lost races:  {report['lost_races']} (contention, not errors)",
        f"elapsed:     {report['elapsed_seconds']:.2f} s ({_to_last(report)})",
        f"throughput:  {_throughput(report)}",
        "per-worker completions: "
        + ", ".join(f"{w} {n}" for w, n in report["per_worker_completions"].items()),
    ]
    if report["kills"] or report["terminations"]:
        lines.append(
            f"chaos:       {report['kills']} workers SIGKILLed, "
            f"{report['terminations']} backends terminated"
        )
    lines += [
        f"{name + ':':<12} {_number(value)}"
        for name, value in report["numbers"].items()
        if not _is_detail(value)
    ]
    lines += [
        "",
        "ALL INVARIANTS HELD" if report["ok"] else "INVARIANTS VIOLATED",
    ]
    return "\n".join(lines)


def _is_detail(value: Any) -> bool:
    """Per-item detail (a list, or a dict of lists: curves): the JSON report only."""
    if isinstance(value, dict):
        return any(isinstance(v, list) for v in value.values())
    return isinstance(value, list)


def _number(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
    return str(value)


def _to_last(report: dict[str, Any]) -> str:
    busy = report["seconds_to_last_completion"]
    return "no completions" if busy is None else f"{busy:.2f} s to the last completion"


def _throughput(report: dict[str, Any]) -> str:
    rate = report["throughput_tasks_per_second"]
    return "n/a" if rate is None else f"{rate} tasks/s"


def write_json(report: dict[str, Any], path: str) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n")
