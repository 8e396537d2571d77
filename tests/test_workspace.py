"""``kanban-orm work --workspace/--git/--log-dir`` and ``kanban-orm logs``, on every backend:
a directory per run, a log per run (a file, and a copy attached to the run), outputs
attached on completion, git worktrees removed on success and kept on failure."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.cli import main

# The command every test runs: it reports where it ran and what it was given, writes
# into $KANBAN_OUTPUT, and fails when the task's title says so.
SCRIPT = """
import json, os, pathlib, sys
card = json.loads(os.environ["KANBAN_TASK_JSON"])
here = pathlib.Path.cwd()
if os.environ.get("KANBAN_WORKSPACE"):  # else cwd is the test run's: leave it alone
    (here / "made-here.txt").write_text("x")
out = pathlib.Path(os.environ["KANBAN_OUTPUT"])
(out / "report.txt").write_text("report of " + card["title"])
(out / "sub").mkdir()
(out / "sub" / "data.bin").write_bytes(bytes([0, 1, 2]))
print("progress on stderr", file=sys.stderr, flush=True)
if card["title"].startswith("fail"):
    sys.exit(3)
print(json.dumps({"cwd": str(here), "workspace": os.environ.get("KANBAN_WORKSPACE"),
                  "id": card["id"]}))
"""


def work(db_url: str, *args: str) -> Result:
    return CliRunner().invoke(
        main, ["--db", db_url, "work", "--drain", "-q", *args, "--", sys.executable, "-c", SCRIPT]
    )


def test_each_run_gets_a_workspace_a_log_and_its_outputs_attached(
    db_url: str, session: Session, tmp_path: Path
) -> None:
    task_id = kb.create_task(session, title="build")
    result = work(db_url, "--workspace", str(tmp_path / "ws"), "--log-dir", str(tmp_path / "logs"))
    assert result.exit_code == 0, result.output
    task = kb.get_task(session, task_id)
    assert task.status == "done"
    run = kb.latest_run(session, task_id)
    assert run is not None
    reported = json.loads(task.result or "")
    workdir = tmp_path / "ws" / f"{task_id}-{run.id}"
    assert reported == {"cwd": str(workdir), "workspace": str(workdir), "id": task_id}
    assert not workdir.exists()  # removed on success: what it produced is attached

    files = {a.name: a for a in kb.list_attachments(session, task_id)}
    assert set(files) == {"report.txt", "sub__data.bin", f"run-{run.id}.log"}
    assert all(a.run_id == run.id for a in files.values())
    assert kb.read_attachment(session, task_id, "report.txt") == b"report of build"
    log_text = (tmp_path / "logs" / f"{task_id}-{run.id}.log").read_text()
    assert "progress on stderr" in log_text and '"cwd"' in log_text
    assert kb.read_attachment(session, task_id, f"run-{run.id}.log").decode() == log_text

    shown = CliRunner().invoke(
        main, ["--db", db_url, "logs", str(task_id), "--log-dir", str(tmp_path / "logs")]
    )
    assert shown.exit_code == 0 and shown.output == log_text
    # Another machine has no file: the attached copy is shown.
    elsewhere = CliRunner().invoke(
        main, ["--db", db_url, "logs", str(task_id), "--run", str(run.id), "--log-dir", "/nope"]
    )
    assert elsewhere.exit_code == 0 and elsewhere.output == log_text
    followed = CliRunner().invoke(
        main, ["--db", db_url, "logs", str(task_id), "-f", "--log-dir", str(tmp_path / "logs")]
    )
    assert followed.exit_code == 0 and followed.output == log_text


def test_a_failed_run_keeps_its_log_and_attaches_no_outputs(
    db_url: str, session: Session, tmp_path: Path
) -> None:
    task_id = kb.create_task(session, title="fail loudly", max_attempts=1)
    result = work(db_url, "--log-dir", str(tmp_path / "logs"))
    assert result.exit_code == 0, result.output
    run = kb.latest_run(session, task_id)
    assert run is not None and run.outcome == "failed"
    assert "exited with status 3" in (run.error or "")
    assert "progress on stderr" in (run.error or "")
    assert [a.name for a in kb.list_attachments(session, task_id)] == [f"run-{run.id}.log"]


def test_logs_names_what_is_missing(db_url: str, session: Session) -> None:
    task_id = kb.create_task(session, title="never run")
    result = CliRunner().invoke(main, ["--db", db_url, "logs", str(task_id)])
    assert result.exit_code == 1 and "has no runs yet" in result.output
    kb.claim_task(session, task_id, claimer="w")
    result = CliRunner().invoke(main, ["--db", db_url, "logs", str(task_id), "--run", "999"])
    assert result.exit_code == 1 and "has no run 999" in result.output
    result = CliRunner().invoke(main, ["--db", db_url, "logs", str(task_id), "--log-dir", "/x"])
    assert result.exit_code == 1 and "no log for run" in result.output


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    path = tmp_path / "repo"
    path.mkdir()
    for args in (
        ["init", "-q", "-b", "main"],
        ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "0"],
    ):
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)
    return path


def branches(repo: Path) -> set[str]:
    listed = subprocess.run(
        ["git", "-C", str(repo), "branch", "--format=%(refname:short)"],
        check=True,
        capture_output=True,
        text=True,
    )
    return set(listed.stdout.split())


def test_git_worktrees_are_removed_on_success_and_kept_on_failure(
    db_url: str, session: Session, tmp_path: Path, repo: Path
) -> None:
    good = kb.create_task(session, title="good", priority=1)
    bad = kb.create_task(session, title="fail here", max_attempts=1)
    where = tmp_path / "trees"
    result = work(db_url, "--git", str(repo), "--workspace", str(where), "--log-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    good_run = kb.latest_run(session, good)
    bad_run = kb.latest_run(session, bad)
    assert good_run is not None and bad_run is not None
    assert good_run.outcome == "completed" and bad_run.outcome == "failed"
    assert json.loads(kb.get_task(session, good).result or "")["cwd"] == str(
        where / f"{good}-{good_run.id}"
    )
    assert not (where / f"{good}-{good_run.id}").exists()
    kept = where / f"{bad}-{bad_run.id}"
    assert (kept / "made-here.txt").exists() and (kept / ".git").exists()
    assert {
        f"kanban/task-{good}-run-{good_run.id}",
        f"kanban/task-{bad}-run-{bad_run.id}",
    } <= branches(repo)


def test_git_needs_a_repository(db_url: str, tmp_path: Path) -> None:
    result = work(db_url, "--git", str(tmp_path))
    assert result.exit_code == 1 and "not a git repository" in result.output
