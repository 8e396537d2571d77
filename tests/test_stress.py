"""The stress suite runs, holds its invariants on both backends, and catches a broken claim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from .conftest import REPO_ROOT, fresh_postgres_database, postgres_url_or_skip

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgres"])
def stress_db(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """``--db`` arguments: none for the default temporary SQLite, else a fresh PostgreSQL."""
    if request.param == "sqlite":
        yield []
    else:
        for url in fresh_postgres_database(postgres_url_or_skip()):
            yield ["--db", url]


def run_stress(*args: str, tmp_path: Path) -> tuple[int, dict[str, Any], str]:
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "stress", *args, "--json", str(report)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    data = json.loads(report.read_text()) if report.exists() else {}
    return done.returncode, data, done.stdout + done.stderr


def test_claims_holds_every_invariant(stress_db: list[str], tmp_path: Path) -> None:
    code, report, output = run_stress(
        "claims",
        *stress_db,
        "--workers",
        "3",
        "--tasks",
        "40",
        "--work-ms",
        "0-3",
        "--seed",
        "7",
        tmp_path=tmp_path,
    )
    assert code == 0, output
    assert report["ok"] and all(check["ok"] for check in report["invariants"])
    assert len(report["invariants"]) == 6
    assert report["claims"] == report["completes"] == 40
    assert sum(report["per_worker_completions"].values()) == 40
    assert report["backend"] == ("sqlite" if not stress_db else "postgresql")
    assert "✔ 1. no task claimed by two workers" in output
    assert "ALL INVARIANTS HELD" in output


def test_the_checker_catches_a_claim_without_a_guard(stress_db: list[str], tmp_path: Path) -> None:
    code, report, output = run_stress(
        "claims",
        *stress_db,
        "--workers",
        "5",
        "--tasks",
        "60",
        "--work-ms",
        "0-2",
        "--seed",
        "3",
        "--claim-impl",
        "tests.racy_claim:claim_task",
        tmp_path=tmp_path,
    )
    assert code == 1, output
    failed = {check["name"]: check["detail"] for check in report["invariants"] if not check["ok"]}
    assert "1. no task claimed by two workers" in failed, output
    assert "by ['worker-" in failed["1. no task claimed by two workers"]
    assert "✘ 1. no task claimed by two workers" in output
    assert "INVARIANTS VIOLATED" in output


def test_a_dead_worker_is_named_and_fails_the_run(tmp_path: Path) -> None:
    code, report, output = run_stress(
        "claims",
        "--workers",
        "2",
        "--tasks",
        "10",
        "--work-ms",
        "0-1",
        "--claim-impl",
        "tests.racy_claim:die_on_first_claim",
        tmp_path=tmp_path,
    )
    assert code == 1, output
    dead = [c for c in report["casualties"] if c.endswith("died with exit code 9")]
    assert dead and all(c.startswith("worker-") for c in dead), output
    assert dead[0] in output
    assert "✘ 6." in output


def test_a_hung_worker_is_killed_at_the_timeout(tmp_path: Path) -> None:
    code, report, output = run_stress(
        "claims",
        "--workers",
        "1",
        "--tasks",
        "3",
        "--timeout",
        "1",
        "--claim-impl",
        "tests.racy_claim:hang_on_claim",
        tmp_path=tmp_path,
    )
    assert code == 1, output
    assert report["casualties"] == ["worker-0 hung past the timeout and was killed"], output


def test_a_run_past_its_timeout_stops_and_says_so(tmp_path: Path) -> None:
    # One worker, 200 tasks of 20 ms: about 4 s of work against a 1 s limit.
    code, report, output = run_stress(
        "--workers", "1", "--tasks", "200", "--work-ms", "20-20", "--timeout", "1",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert code == 1, output
    expected = "run timed out after 1 s; stopped by the timeout: worker-0"
    assert report["casualties"] == [expected], output
    assert 0 < report["completes"] < 200
    assert report["elapsed_seconds"] < 30


@pytest.mark.parametrize(
    "args",
    [
        ["--work-ms", "5-1"],
        ["--workers", "0"],
        ["--timeout", "0"],
        ["nonsense"],
        ["--claim-impl", "tests.no_such_module:claim_task"],
        ["--claim-impl", "tests.racy_claim:no_such_function"],
    ],
)
def test_bad_options_are_usage_errors(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from stress.__main__ import main

    monkeypatch.syspath_prepend(str(REPO_ROOT))  # where --claim-impl modules are imported
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2, args
    assert "error:" in capsys.readouterr().err


def test_keep_db_prints_the_path_of_a_database_that_holds_the_run(tmp_path: Path) -> None:
    code, _report, output = run_stress(
        "--tasks", "5", "--workers", "2", "--work-ms", "0-1", "--keep-db", tmp_path=tmp_path
    )
    assert code == 0, output
    path = next(line.split(" at ", 1)[1] for line in output.splitlines() if "kept at" in line)
    with sa.create_engine(f"sqlite:///{path}").connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM kanban_tasks").scalar() == 5
