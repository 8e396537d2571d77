"""The fault scenarios at small size: a private PostgreSQL server restarted under the
workers (``restart``) and a SQLite file made read-only for them (``readonly``); and each
fault scenario's checker (restart, readonly, soak, partition) failing a broken run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import kanban_orm as kb
from stress.harness import Config, Outcome
from stress.pgserver import Unavailable, bindir
from stress.scenarios import partition, readonly, restart, soak

from .test_stress import _claim, _failed, _outcome, run_stress

pytestmark = pytest.mark.slow


def test_restart_scenario_holds_every_invariant(tmp_path: Path) -> None:
    try:
        bindir()
    except Unavailable as error:
        pytest.skip(str(error))
    code, report, output = run_stress(
        "restart", "--workers", "3", "--tasks", "60", "--work-ms", "1-10", "--seed", "3",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert code == 0, output
    assert report["ok"], output
    numbers = report["numbers"]
    assert numbers["restarts"] == 2 and numbers["raw_exceptions"] == 0
    assert numbers["terminations"] > 0
    assert report["completes"] == 60


def test_restart_scenario_never_restarts_a_server_it_did_not_start(tmp_path: Path) -> None:
    code, _, output = run_stress(
        "restart", "--db", "postgresql://postgres@127.0.0.1:5432/postgres", tmp_path=tmp_path
    )
    assert code == 1
    assert "takes no --db" in output


def test_readonly_scenario_holds_every_invariant(tmp_path: Path) -> None:
    code, report, output = run_stress(
        "readonly", "--workers", "3", "--tasks", "80", "--work-ms", "1-10", "--seed", "3",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert code == 0, output
    assert report["ok"], output
    numbers = report["numbers"]
    assert numbers["raw_exceptions"] == 0
    assert numbers["refused_while_read_only"] > 0
    assert numbers["reads_while_read_only"] > 0


# -- each fault scenario's checker fails a run whose guarantee broke ---------------------------
#
# Fed to the scenario's own checks (not a copy): logs and numbers as its workers and its
# disturber write them, and a board a broken kernel left behind.

RAW = "OperationalError: (psycopg.OperationalError) the database system is shutting down"


def _completed(session: Session, task_id: int, worker: str) -> list[dict[str, Any]]:
    _held, claimed = _claim(session, task_id, worker)
    kb.complete_task(session, task_id, claim_lock=claimed["claim_lock"])
    return [claimed, {**claimed, "kind": "completed"}]


def _complete_again(session: Session, task_id: int, run_id: int) -> None:
    """What a kernel replaying a COMMIT it could not confirm, unfenced, would leave."""
    session.add(kb.TaskEvent(task_id=task_id, run_id=run_id, kind="completed"))
    session.commit()


def test_restart_fails_a_double_completion_and_a_raw_driver_error(
    session: Session, db_url: str, tmp_path: Path
) -> None:
    task_id = kb.create_task(session, title="t")
    log = _completed(session, task_id, "worker-0")
    _complete_again(session, task_id, log[0]["run_id"])
    casualty = f"worker-1 died with exit code 1: {RAW} (db.py:600)"
    outcome = _outcome("restart", db_url, tmp_path, log, casualties=[casualty])

    failed = _failed(restart.checks(outcome, session))

    assert set(failed) == {"2", "4", "5", "9"}, failed
    assert failed["2"] == f"task {task_id}: 2 completed events"
    assert failed["9"] == casualty
    assert outcome.numbers["raw_exceptions"] == 1

    clean = _outcome("restart", db_url, tmp_path, log)
    assert set(_failed(restart.checks(clean, session))) == {"2", "4", "5"}  # the board alone


def test_readonly_fails_a_write_that_landed_and_a_refusal_that_was_not_typed(
    session: Session, db_url: str, tmp_path: Path
) -> None:
    task_id = kb.create_task(session, title="t")
    log = _completed(session, task_id, "worker-0")
    newest = sa.select(sa.func.max(kb.TaskEvent.id))
    before = session.scalar(newest)
    session.rollback()
    kb.add_comment(session, task_id, body="written while read-only", author="worker-1")
    after = session.scalar(newest)
    session.rollback()
    start = time.time() - 5
    refused = {"kind": "db_error", "worker": "worker-1", "task": task_id, "during": "complete",
               "type": "OperationalError", "seconds": 0.01, "at": start + 1,
               "error": "attempt to write a readonly database"}  # fmt: skip
    slow = {**refused, "type": "DatabaseReadOnly", "seconds": 30.0, "at": start + 2}
    read = {"kind": "read_ok", "worker": "worker-1", "left": 0, "at": start + 3}
    outcome = _outcome("readonly", db_url, tmp_path, [*log, refused, slow, read])
    outcome.numbers.update(
        read_only_from=start, read_only_until=time.time(),
        newest_event_at_read_only=before, newest_event_at_writable=after,
    )  # fmt: skip

    failed = _failed(readonly.checks(outcome, session))

    assert set(failed) == {"6", "7"}, failed
    assert "worker-1 complete: attempt to write a readonly database" in failed["6"]
    assert "worker-1 complete refused after 30.0 s" in failed["6"]
    assert failed["7"] == "1 events written while read-only"


def _soak_outcome(
    tmp_path: Path, rss_mb: tuple[float, float], rate: tuple[float, float], **extra: Any
) -> Outcome:
    """A 100-second soak of one worker: RSS from rss_mb[0] to [1] after the warm-up,
    cycles at rate[0] per second for the first half, rate[1] after."""
    config = Config(
        scenario="soak", db_url="sqlite://", workers=1, tasks=10, work_ms=(0.0, 0.0), seed=1,
        timeout=100 + soak.MARGIN_SECONDS, log_dir=str(tmp_path),
    )  # fmt: skip
    samples, cycles = [], 0.0
    for t in range(0, 105, 5):
        grown = 0.0 if t <= soak.WARM_UP_SECONDS else (rss_mb[1] - rss_mb[0]) * t / 100
        rss = rss_mb[0] + grown
        samples.append({"kind": soak.SAMPLE, "worker": "worker-0", "t": t, "cycles": int(cycles),
                        "rss_kb": int(rss * 1024)})  # fmt: skip
        cycles += 5 * (rate[0] if t < 50 else rate[1])
    return Outcome(config, {"worker-0": samples}, 100.0, **extra)


def test_soak_fails_memory_growth_a_slowdown_and_any_error(tmp_path: Path) -> None:
    # The soak's checks read nothing from the database: its numbers are the workers'.
    no_database = cast(Session, None)
    steady = _soak_outcome(tmp_path, (50, 51), (100, 100))
    assert _failed(soak.checks(steady, no_database)) == {}

    leaking = _soak_outcome(tmp_path, (50, 62), (100, 100))
    failed = _failed(soak.checks(leaking, no_database))
    assert set(failed) == {"1"}, failed
    assert failed["1"].startswith("max 12") and "MB over" in failed["1"]

    slowing = _soak_outcome(tmp_path, (50, 50), (100, 60))
    failed = _failed(soak.checks(slowing, no_database))
    assert set(failed) == {"2"}, failed
    assert failed["2"] == "100.0/s first, 60.0/s last"

    casualty = f"worker-0 died with exit code 1: {RAW} (soak.py:70)"
    erring = _soak_outcome(tmp_path, (50, 50), (100, 100), casualties=[casualty])
    typed = {"kind": "db_error", "worker": "worker-0", "t": 50, "during": "cycle",
             "error": "DatabaseBusy: locked"}  # fmt: skip
    erring.logs["worker-0"].append(typed)
    failed = _failed(soak.checks(erring, no_database))
    assert set(failed) == {"3"}, failed
    assert failed["3"] == f"{casualty}; worker-0: DatabaseBusy: locked"


def test_partition_fails_a_late_completion_that_landed(
    session: Session, db_url: str, tmp_path: Path
) -> None:
    task_id = kb.create_task(session, title="t")
    cut_at = time.time() - 2  # the link went down; the claim below is the cut-off worker's
    log = _completed(session, task_id, "worker-0")  # its completion got through after all
    held = [[task_id, log[0]["run_id"], log[0]["claim_lock"]]]
    outcome = _outcome("partition", db_url, tmp_path, log)
    outcome.numbers.update(cut_at=cut_at, held_at_cut=held)

    failed = _failed(partition.checks(outcome, session))

    assert set(failed) == {"5", "6"}, failed
    assert failed["5"] == f"task {task_id}: run {log[0]['run_id']} ended completed"
    assert failed["6"] == "0 refused"
    assert outcome.numbers["victim_claims"] == 1

    # A cut that caught nobody holding a claim proves nothing either.
    nobody = _outcome("partition", db_url, tmp_path, log)
    nobody.numbers.update(cut_at=cut_at, held_at_cut=[])
    assert {"5", "6"} <= set(_failed(partition.checks(nobody, session)))


def test_the_soak_chart_draws_every_backends_curves(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from stress import soak_chart

    numbers = {"minutes": 2, "window_s": 24, "throughput_curve_per_s": [[0, 90.0], [24, 80.0]],
               "rss_curve_kb": {"worker-0": [[0, 60000], [120, 61000]]},
               "db_size_mb": [[0, 1.0], [120, 3.0]],
               "db_parts_mb": {"wal": [[0, 0.5]]}}  # fmt: skip
    reports = [tmp_path / "sqlite.json", tmp_path / "mysql.json"]
    for path in reports:
        report = {"backend": path.stem, "workers": 1, "numbers": numbers}
        path.write_text(json.dumps(report))
    load = tmp_path / "load.txt"
    load.write_text("13:56:21 2.56 1.21 0.52 8/182 1\n13:57:21 3.1 1.3 0.6 1/190 9\n")
    out = tmp_path / "soak.png"

    code = soak_chart.main([*map(str, reports), "--load", str(load), "--out", str(out)])

    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert soak_chart.load_samples(str(load)) == [(0.0, 2.56), (1.0, 3.1)]
