"""The fault scenarios at small size: a private PostgreSQL server restarted under the
workers (``restart``) and a SQLite file made read-only for them (``readonly``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stress.pgserver import Unavailable, bindir

from .test_stress import run_stress

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
