"""What got in a new user's way, each with the command that now behaves."""

from __future__ import annotations

import os
import pydoc
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.cli import main
from kanban_orm.db import ENV_HOME, ENV_URL
from kanban_orm.errors import InvalidInput

from .conftest import POSTGRES_ENV, REPO_ROOT


@pytest.fixture(autouse=True)
def _no_ambient_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV_URL, raising=False)
    monkeypatch.setenv(ENV_HOME, str(tmp_path / "home"))


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- db upgrade creates the file, not missing folders -------------------------------------


@pytest.mark.sqlite
def test_upgrade_does_not_create_a_missing_folder_at_the_root() -> None:
    result = run("--db", "sqlite:////nonexistent-dir/x.db", "db", "upgrade")
    assert error_line(result) == (
        "error: no folder /nonexistent-dir for the database /nonexistent-dir/x.db: create it,"
        " or pass --create-dirs"
    )
    assert not Path("/nonexistent-dir").exists()


@pytest.mark.sqlite
def test_a_mistyped_relative_path_names_the_outermost_missing_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("--db", "sqlite:///dtaa/sub/kanban.db", "db", "upgrade")
    assert f"no folder {tmp_path / 'dtaa'} for the database" in error_line(result)
    assert not (tmp_path / "dtaa").exists()

    created = run("--db", "sqlite:///dtaa/sub/kanban.db", "db", "upgrade", "--create-dirs")
    assert created.exit_code == 0, created.output
    assert (tmp_path / "dtaa" / "sub" / "kanban.db").is_file()
    assert (tmp_path / "dtaa").stat().st_mode & 0o777 == 0o700


def test_a_bad_url_is_still_one_error_line_for_upgrade() -> None:
    result = run("--db", "not a url", "db", "upgrade")
    assert error_line(result) == "error: not a database URL: 'not a url'"


@pytest.mark.sqlite
def test_the_default_home_is_created_without_asking(tmp_path: Path) -> None:
    result = run("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "home" / "kanban.db").is_file()


# -- postgres:// ----------------------------------------------------------------------------


def test_postgres_scheme_is_postgresql() -> None:
    engine = kb.create_engine("postgres://user@db.example/kanban")
    assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg")
    assert engine.url.database == "kanban"
    engine = kb.create_engine("postgres+psycopg://u@h/k")
    assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg")


@pytest.mark.postgres
def test_postgres_scheme_reaches_the_database(postgres_url: str) -> None:
    url = sa.make_url(postgres_url).set(drivername="postgres")
    result = run("--db", url.render_as_string(hide_password=False), "db", "current")
    assert result.exit_code == 0, result.output


# -- install commands that work from PyPI and from a checkout -------------------------------


def test_a_missing_driver_names_the_command_that_installs_it() -> None:
    with pytest.raises(InvalidInput) as raised:
        kb.create_engine("postgresql+pg8000://u@h/k")  # a driver this venv does not have
    message = str(raised.value)
    assert "pip install 'kanban-orm[postgres]'" in message
    assert "pip install -e '.[postgres]'" in message


def test_the_bench_skip_line_keeps_its_brackets() -> None:
    from stress.bench.cli import Plan
    from stress.bench.peers import _missing
    from stress.bench.report import render

    reason = _missing("a_module_that_is_not_there")()
    assert reason is not None
    plan = Plan(10, 1, (), (), (), 0, (), 0, 1.0, "")
    text = render([], [{"system": "huey", "backend": "sqlite", "reason": reason}], plan)
    assert "pip install 'kanban-orm[bench]'" in text
    assert "pip install -e '.[bench]'" in text


# -- the stress suite's help lists the bench --------------------------------------------------


def test_stress_help_lists_bench(capsys: pytest.CaptureFixture[str]) -> None:
    from stress.__main__ import main as stress_main

    with pytest.raises(SystemExit) as exited:
        stress_main(["--help"])
    assert exited.value.code == 0
    assert "python -m stress bench" in capsys.readouterr().out

    result = run("stress", "--help")
    assert result.exit_code == 0
    assert "bench" in result.stdout


# -- the board ---------------------------------------------------------------------------------


def test_board_at_80_columns_shows_the_claimer_and_whole_counts(
    db_url: str, session: Session
) -> None:
    task_id = kb.create_task(session, title="deploy", assignee="ops")
    kb.claim_task(session, task_id, claimer="w7")
    result = run("--db", db_url, "board", "--width", "80")
    assert result.exit_code == 0, result.output
    assert "by w7" in result.stdout
    assert "running" in result.stdout and "runn…" not in result.stdout
    assert all(len(line) <= 80 for line in result.stdout.splitlines())


# -- work --drain says when a failed task comes back -----------------------------------------


def test_work_drain_logs_when_a_failed_task_is_retried(db_url: str, session: Session) -> None:
    task_id = kb.create_task(session, title="flaky")
    result = run("--db", db_url, "work", "--drain", "--", "false")
    assert result.exit_code == 0, result.output
    task = kb.get_task(session, task_id)
    assert task.run_at is not None
    line = next(line for line in result.stderr.splitlines() if "failed" in line)
    assert f"task {task_id}: failed: command exited with status 1" in line
    assert f"will be retried after {task.run_at.isoformat()}Z" in line
    assert line.endswith("which this drain does not wait for")


# -- complete says what is really wrong ------------------------------------------------------


def test_complete_force_on_a_done_task_says_it_is_done(db_url: str, session: Session) -> None:
    task_id = kb.create_task(session, title="t")
    kb.complete_task(session, task_id, force=True)
    result = run("--db", db_url, "complete", str(task_id), "--force")
    assert error_line(result) == f"error: task {task_id} is already 'done'"


def test_complete_with_a_lock_on_a_ready_task_says_it_is_not_running(
    db_url: str, session: Session
) -> None:
    task_id = kb.create_task(session, title="t")
    result = run("--db", db_url, "complete", str(task_id), "--claim-lock", "X")
    assert error_line(result) == (
        f"error: task {task_id} is 'ready', not running: no claim holds it, so no claim_lock can"
    )


# -- db current agrees with db check -----------------------------------------------------------


@pytest.mark.sqlite
def test_db_current_on_a_missing_file_agrees_with_db_check(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    current, check = run("--db", url, "db", "current"), run("--db", url, "db", "check")
    assert error_line(current) == error_line(check)
    assert not (tmp_path / "none.db").exists()


# -- --db before or after the command ------------------------------------------------------------


def test_db_is_accepted_after_the_command(db_url: str, session: Session) -> None:
    kb.create_task(session, title="found")
    listed = run("list", "--db", db_url)
    assert listed.exit_code == 0, listed.output
    assert "found" in listed.stdout
    assert run("db", "current", "--db", db_url).stdout == f"{kb.head()}\n"
    assert run("db", "--db", db_url, "current").stdout == f"{kb.head()}\n"
    assert run("--db", "sqlite:////nonexistent-dir/x.db", "list", "--db", db_url).exit_code == 0


# -- help(kb) ------------------------------------------------------------------------------------


def test_help_of_the_package_is_not_session_s_manual() -> None:
    text = pydoc.render_doc(kb, renderer=pydoc.plaintext)
    # 4,106 lines when KeepingSession pulled in Session's manual; 2,701 with the
    # operations, attachments and fault errors added to the API since; 3,062 with the
    # combined completion, wait_for_ready, the worker registry and the status tallies.
    assert len(text.splitlines()) < 3400
    keeping = pydoc.render_doc(kb.KeepingSession, renderer=pydoc.plaintext)
    assert len(keeping.splitlines()) < 200
    assert "Session" in keeping  # it still names what it is
    assert "execute" in dir(kb.connect("sqlite://", keep_connection=True))


# -- pytest -ra: one line per skip reason --------------------------------------------------------


@pytest.mark.slow
def test_skips_for_a_missing_postgresql_are_one_summary_line() -> None:
    env = {k: v for k, v in os.environ.items() if k not in (POSTGRES_ENV, "CI")}
    env = {k: v for k, v in env.items() if not k.startswith("PYTEST")}
    pytest_ra = [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [*pytest_ra, "tests/test_board.py", "tests/test_cli.py"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1, skipped
    assert f"{POSTGRES_ENV} is not set" in skipped[0]
    count = int(skipped[0].split("[")[1].split("]")[0])
    assert count > 1
