"""The throughput bench at a tiny size: it runs, and every system completes every task
exactly once. Nothing here asserts a time or a ratio: CI proves the bench works, the
numbers come from a real run on a quiet machine."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from stress.__main__ import main as stress_main
from stress.bench import kanban
from stress.bench.cli import DETAIL_KEYS
from stress.bench.core import POSTGRES, Result, Target, Verdict, analyze, judge, postgres_database
from stress.bench.report import render
from stress.bench.systems import KANBAN_KEYS, RAW, system

from .conftest import mysql_url_or_skip, postgres_url_or_skip

OWN_KEYS = (*KANBAN_KEYS, RAW)


def _bench_url(postgres_url: str) -> str:
    """A database of the bench's own, so it never drops the shared test database."""
    name = f"kanban_bench_t_{uuid.uuid4().hex[:10]}"
    return sa.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)


def _run(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "bench.json"
    code = stress_main(["bench", "--tiny", "--json", str(out), *args])
    return code, json.loads(out.read_text())


def _check_rows(report: dict[str, Any], backend: str) -> list[dict[str, Any]]:
    rows = [r for r in report["results"] if r["backend"] == backend and r["table"] == "main"]
    ran = {r["system"] for r in rows}
    skipped = {s["system"] for s in report["skipped"] if s["backend"] == backend}
    assert set(OWN_KEYS) <= ran, f"missing rows: {set(OWN_KEYS) - ran}"
    for row in rows:
        assert row["exactly_once"], row
        assert (row["duplicates"], row["lost"], row["problems"]) == (0, 0, []), row
        assert row["tasks"] == 50 and row["procs"] == 2
        assert row["rate"] and row["rate"] > 0
        assert row["kind"] == "peer" or row["ratio"] is not None
    # every peer of this backend either ran or was skipped with a reason
    peers = {key for (key, b) in _peer_keys() if b == backend}
    assert peers <= ran | skipped
    return rows


def _peer_keys() -> list[tuple[str, str]]:
    from stress.bench.systems import systems

    return [(s.key, s.backend) for s in systems().values() if s.kind == "peer"]


@pytest.mark.slow
@pytest.mark.sqlite
def test_bench_sqlite_every_system_exactly_once(tmp_path: Path) -> None:
    code, report = _run(tmp_path, "--backends", "sqlite")
    assert code == 0
    _check_rows(report, "sqlite")


@pytest.mark.slow
@pytest.mark.postgres
def test_bench_postgres_every_system_exactly_once(tmp_path: Path) -> None:
    url = _bench_url(postgres_url_or_skip())
    code, report = _run(tmp_path, "--backends", "postgres", "--pg-url", url)
    assert code == 0
    assert not [s for s in report["skipped"] if s["system"] == "*"], report["skipped"]
    rows = _check_rows(report, "postgres")
    assert "raw-steps" in {r["system"] for r in rows}  # the step-by-step raw variant
    admin = sa.create_engine(sa.make_url(url).set(database="postgres"))
    with admin.connect() as conn:  # the bench dropped its database (NAME_PID) again
        prefix = f"{sa.make_url(url).database}%"
        left = conn.execute(
            sa.text("SELECT datname FROM pg_database WHERE datname LIKE :p"), {"p": prefix}
        ).all()
    admin.dispose()
    assert left == []


@pytest.mark.slow
@pytest.mark.mysql
def test_bench_mysql_every_own_system_exactly_once(tmp_path: Path) -> None:
    """The MariaDB/MySQL column: kanban_orm's rows and the raw mysqlclient baseline."""
    name = f"kanban_bench_t_{uuid.uuid4().hex[:10]}"
    url = sa.make_url(mysql_url_or_skip()).set(database=name)
    code, report = _run(
        tmp_path,
        "--backends",
        "mysql",
        "--mysql-url",
        url.render_as_string(hide_password=False),
    )
    assert code == 0
    assert not [s for s in report["skipped"] if s["system"] == "*"], report["skipped"]
    rows = _check_rows(report, "mysql")
    assert "raw" in {r["system"] for r in rows}
    assert [t["target"] for t in report["targets"]] == ["MariaDB claim_next >= 0.9x raw"]
    admin = sa.create_engine(url.set(database=""))
    with admin.connect() as conn:  # the bench dropped its database (NAME_PID) again
        left = conn.execute(sa.text("SHOW DATABASES LIKE :p"), {"p": f"{name}%"}).all()
    admin.dispose()
    assert left == []


@pytest.mark.postgres
def test_bench_analyzes_only_the_tables_that_hold_rows() -> None:
    """As autovacuum leaves a new database: the empty run table never analyzed, so the
    planner treats it as one that may grow (a generic plan made on statistics that say
    "empty" would scan the growing run table at every completion)."""
    with postgres_database(_bench_url(postgres_url_or_skip())) as url:
        target = Target(POSTGRES, url)
        kanban.seed(target, 20)
        analyze(target)
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            if conn.dialect.server_version_info < (14,):
                pytest.skip("PostgreSQL 13 and older show never-analyzed and empty alike")
            reltuples = dict(
                conn.execute(
                    sa.text(
                        "SELECT relname, reltuples FROM pg_class"
                        " WHERE relname IN ('kanban_tasks', 'kanban_task_runs')"
                    )
                ).all()
            )
        engine.dispose()
    assert reltuples == {"kanban_tasks": 20, "kanban_task_runs": -1}  # -1: never analyzed


@pytest.mark.slow
@pytest.mark.sqlite
def test_bench_scaling_and_backlog_tables(tmp_path: Path) -> None:
    code, report = _run(
        tmp_path,
        *("--backends", "sqlite", "--systems", "kb-next,raw", "--repeat", "2"),
        *("--scaling", "--backlog"),
    )
    assert code == 0
    rows = report["results"]
    scaling = Counter((r["system"], r["procs"]) for r in rows if r["table"] == "scaling")
    assert scaling == {(key, procs): 1 for key in DETAIL_KEYS for procs in (1, 2)}
    backlog = [r for r in rows if r["table"] == "backlog"]
    assert sorted((r["system"], r["queued"]) for r in backlog) == sorted(
        (key, queued) for key in DETAIL_KEYS for queued in (50, 500)
    )
    assert all(r["tasks"] == 50 and r["exactly_once"] for r in rows)
    assert all(len(r["rates"]) == 2 and r["rate"] in r["rates"] for r in rows)
    # the issue's backlog target is judged (whether met is the lead's run to say)
    assert any("within 1.2x" in t["target"] and t["value"] for t in report["targets"])


def test_bench_arguments_behind_the_root_db_option() -> None:
    from stress.bench.cli import bench_argv

    pg = "postgresql+psycopg://u@h/kb"
    assert bench_argv(["bench", "--tiny"]) == ["--tiny"]
    assert bench_argv(["--db", pg, "bench", "--tiny"]) == ["--pg-url", pg, "--tiny"]
    assert bench_argv(["--db", "sqlite:///k.db", "bench"]) == []
    assert bench_argv(["--db", pg, "bench", "--pg-url", "x"]) == ["--pg-url", "x"]
    assert bench_argv(["claims", "--tasks", "5"]) is None
    assert bench_argv(["--db", pg, "claims"]) is None


def test_judge_marks_double_delivery_and_loss() -> None:
    # storage says task 2 completed twice; a consumer reported task 3 twice; 4 never done
    verdict = Verdict({1: 1, 2: 2, 3: 1})
    duplicates, lost, problems = judge(verdict, Counter({1: 1, 2: 1, 3: 2}), expected=4)
    assert (duplicates, lost, problems) == (2, 1, [])
    # a completion the storage does not know of is a disagreement, not a success
    _, lost, problems = judge(Verdict({1: 1}), Counter({1: 1, 2: 1}), expected=2)
    assert lost == 1 and problems and "disagree" in problems[0]


def test_table_shows_a_failed_system() -> None:
    from stress.bench.cli import Plan

    bad = Result(
        system="huey",
        label="huey",
        kind="peer",
        backend="sqlite",
        procs=2,
        queued=50,
        tasks=50,
        seconds=0.1,
        rate=500.0,
        exactly_once=False,
        duplicates=3,
        lost=0,
        problems=[],
        note="",
    )
    plan = Plan(50, 2, ("huey",), ("sqlite",), (), 50, (), 50, 60.0, "postgresql://x/y")
    assert "3 DOUBLE-DELIVERED" in render([bad], [], plan)


def test_every_own_system_exists_on_both_backends() -> None:
    for key in OWN_KEYS:
        for backend in ("sqlite", "postgres"):
            assert system(key, backend).kind in ("kanban_orm", "raw")


def test_chart_is_drawn_or_explains_why(tmp_path: Path) -> None:
    from stress.bench.report import chart

    row = Result(
        system="raw",
        label="raw driver baseline",
        kind="raw",
        backend="sqlite",
        procs=2,
        queued=50,
        tasks=50,
        seconds=0.1,
        rate=500.0,
        exactly_once=True,
        duplicates=0,
        lost=0,
        problems=[],
        note="",
    )
    png = tmp_path / "bench.png"
    message = chart([row], str(png))
    if message is None:
        assert png.read_bytes().startswith(b"\x89PNG")
    else:  # matplotlib is in the bench extra, not the test extra
        assert "matplotlib" in message and not png.exists()


def test_the_targets_table_names_its_baselines_not_an_issue() -> None:
    from rich.console import Console

    from stress.bench.cli import Plan
    from stress.bench.report import targets_table

    plan = Plan(
        tasks=10_000,
        procs=5,
        systems=(),
        backends=(),
        scaling=(),
        scaling_tasks=0,
        backlog=(),
        backlog_tasks=0,
        timeout=1.0,
        pg_url="",
    )
    judged = [
        {"target": "SQLite claim_next >= 0.6x raw", "minimum": 0.6, "value": 0.7, "met": True}
    ]
    console = Console(width=160, record=True, color_system=None)
    with console.capture() as capture:
        console.print(targets_table(judged, plan))
    text = " ".join(capture.get().split())  # the title wraps over the narrow table
    assert "vs the raw driver and the lean kernel" in text
    assert "issue" not in text.lower()
