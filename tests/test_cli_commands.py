"""The task commands of ``kanban-orm``, in-process through click's CliRunner on both
backends; ``events --follow`` and ``board --watch`` run as real processes stopped by a
signal."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.cli import main
from kanban_orm.db import ENV_HOME, ENV_URL

TASK_KEYS = {
    "id",
    "title",
    "body",
    "status",
    "priority",
    "assignee",
    "tenant",
    "created_by",
    "attempts",
    "max_attempts",
    "max_runtime",
    "claim_lock",
    "claim_expires",
    "current_run_id",
    "run_at",
    "idempotency_key",
    "result",
    "block_reason",
    "version",
    "created_at",
    "updated_at",
    "started_at",
    "completed_at",
}
RUN_KEYS = {
    "id",
    "task_id",
    "attempt",
    "claimer",
    "claim_lock",
    "started_at",
    "last_heartbeat_at",
    "ended_at",
    "outcome",
    "summary",
    "metadata",
    "error",
}
EVENT_KEYS = {"id", "task_id", "run_id", "kind", "payload", "created_at"}


@pytest.fixture(autouse=True)
def _no_ambient_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.delenv(ENV_URL, raising=False)
    monkeypatch.setenv(ENV_HOME, str(tmp_path_factory.mktemp("kanban_home")))


@pytest.fixture
def cli(db_url: str) -> Any:
    """``cli(*args)`` runs ``kanban-orm --db URL *args`` in-process."""

    def run(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(main, ["--db", db_url, *args], input=input)

    return run


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def ok_json(result: Result) -> Any:
    return json.loads(ok(result))


def one_line_error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    return lines[0]


def claim(cli: Any, *args: str) -> tuple[int, str]:
    task_id, lock = ok(cli("claim", *args)).split()
    return int(task_id), lock


def expire_leases(session: Session) -> None:
    session.execute(sa.text("UPDATE kanban_tasks SET claim_expires = created_at"))
    session.commit()


# -- create / list / show -----------------------------------------------------------------


def test_create_prints_the_id_and_stores_every_option(cli: Any, session: Session) -> None:
    parent = int(ok(cli("create", "--title", "parent")))
    out = ok(
        cli(
            "create",
            "--title",
            "child",
            "--body",
            "details",
            "--assignee",
            "alice",
            "--tenant",
            "acme",
            "--priority",
            "7",
            "--parent",
            str(parent),
            "--idempotency-key",
            "k1",
            "--max-attempts",
            "2",
            "--created-by",
            "me",
        )
    )
    child = int(out)
    task = kb.get_task(session, child)
    assert (task.title, task.body, task.assignee, task.tenant) == (
        "child",
        "details",
        "alice",
        "acme",
    )
    assert (task.priority, task.max_attempts, task.created_by) == (7, 2, "me")
    assert task.status == "todo"  # waits for its parent
    again = cli("create", "--title", "dup", "--tenant", "acme", "--idempotency-key", "k1")
    assert int(ok(again)) == child


def test_create_json_and_triage(cli: Any) -> None:
    task = ok_json(cli("create", "--title", "idea", "--triage", "--json"))
    assert set(task) == TASK_KEYS
    assert task["status"] == "triage"
    assert task["created_at"].endswith("Z")


def test_create_rejects_bad_input_with_one_line(cli: Any) -> None:
    assert "title" in one_line_error(cli("create", "--title", "   "))
    assert "does not exist" in one_line_error(cli("create", "--title", "x", "--parent", "99"))
    usage = cli("create")
    assert usage.exit_code == 2 and "--title" in usage.stderr


def test_list_plain_json_and_filters(cli: Any) -> None:
    ok(cli("create", "--title", "one", "--assignee", "alice", "--tenant", "a"))
    ok(cli("create", "--title", "two", "--assignee", "bob", "--tenant", "b", "--priority", "3"))
    ok(cli("create", "--title", "three"))
    claim(cli, "--assignee", "bob")

    lines = ok(cli("list")).splitlines()
    assert [line.split()[0] for line in lines] == ["1", "2", "3"]
    assert lines[1].split()[:4] == ["2", "running", "3", "bob"]
    assert lines[2].split()[3:] == ["-", "three"]

    everything = ok_json(cli("list", "--json"))
    assert [t["id"] for t in everything] == [1, 2, 3]
    assert all(set(t) == TASK_KEYS for t in everything)
    assert [t["id"] for t in ok_json(cli("list", "--status", "running", "--json"))] == [2]
    assert [t["id"] for t in ok_json(cli("list", "--assignee", "alice", "--json"))] == [1]
    assert [t["id"] for t in ok_json(cli("list", "--tenant", "b", "--json"))] == [2]
    assert [t["id"] for t in ok_json(cli("list", "--limit", "1", "--json"))] == [1]
    assert ok_json(cli("list", "--status", "archived", "--json")) == []
    assert cli("list", "--status", "bogus").exit_code == 2


def test_show_json_has_task_runs_events_comments_and_links(cli: Any) -> None:
    parent = int(ok(cli("create", "--title", "parent")))
    child = int(ok(cli("create", "--title", "child", "--parent", str(parent))))
    task_id, lock = claim(cli)
    assert task_id == parent
    ok(cli("comment", str(parent), "--body", "looks good", "--author", "ana"))
    ok(cli("complete", str(parent), "--claim-lock", lock, "--result", "42"))

    shown = ok_json(cli("show", str(parent), "--json"))
    assert set(shown) == {
        "task",
        "runs",
        "events",
        "comments",
        "attachments",
        "parents",
        "children",
    }
    assert shown["attachments"] == []
    assert set(shown["task"]) == TASK_KEYS
    assert (shown["task"]["status"], shown["task"]["result"]) == ("done", "42")
    assert [set(r) for r in shown["runs"]] == [RUN_KEYS]
    assert shown["runs"][0]["outcome"] == "completed"
    assert shown["runs"][0]["claim_lock"] == lock
    assert all(set(e) == EVENT_KEYS for e in shown["events"])
    assert [e["kind"] for e in shown["events"]] == ["created", "claimed", "commented", "completed"]
    assert [(c["author"], c["body"]) for c in shown["comments"]] == [("ana", "looks good")]
    assert (shown["parents"], shown["children"]) == ([], [child])
    assert ok_json(cli("show", str(child), "--json"))["parents"] == [parent]


def test_show_plain(cli: Any) -> None:
    ok(cli("create", "--title", "write it", "--body", "line one\nline two", "--assignee", "al"))
    task_id, lock = claim(cli)
    ok(cli("fail", str(task_id), "--claim-lock", lock, "--error", "boom"))
    out = ok(cli("show", str(task_id)))
    assert out.startswith("#1 write it\n")
    assert "  status         ready\n" in out
    assert "  assignee       al\n" in out
    assert "  line one\n  line two\n" in out
    assert "runs (1):" in out and "failed" in out and "      boom" in out
    assert "events (3):" in out and " failed run 1 " in out


def test_show_unknown_task_is_one_error_line(cli: Any) -> None:
    assert one_line_error(cli("show", "999")) == "error: task 999 does not exist"


# -- claims and outcomes --------------------------------------------------------------------


def test_claim_prints_id_and_lock_or_nothing(cli: Any, session: Session) -> None:
    ok(cli("create", "--title", "low"))
    ok(cli("create", "--title", "high", "--priority", "5"))
    task_id, lock = claim(cli, "--claimer", "me", "--ttl", "60")
    assert task_id == 2
    task = kb.get_task(session, 2)
    assert task.claim_lock == lock
    assert kb.latest_run(session, 2).claimer == "me"  # type: ignore[union-attr]

    claimed = ok_json(cli("claim", "--json"))
    assert set(claimed) == TASK_KEYS
    assert claimed["id"] == 1 and claimed["status"] == "running" and claimed["claim_lock"]

    for args in ((), ("--json",)):
        empty = cli("claim", *args)
        assert empty.exit_code == 0
        assert empty.stdout == ""
        assert empty.stderr == "nothing claimable\n"


def test_claim_filters_by_assignee_and_tenant(cli: Any) -> None:
    ok(cli("create", "--title", "a", "--assignee", "alice", "--tenant", "x"))
    ok(cli("create", "--title", "b", "--assignee", "bob", "--tenant", "y"))
    assert claim(cli, "--tenant", "y")[0] == 2
    assert cli("claim", "--assignee", "bob").stdout == ""
    assert claim(cli, "--assignee", "alice")[0] == 1


def test_complete_with_lock_or_force(cli: Any, session: Session) -> None:
    ok(cli("create", "--title", "a"))
    ok(cli("create", "--title", "b"))
    task_id, lock = claim(cli)
    assert ok(cli("complete", str(task_id), "--claim-lock", lock, "--result", "r")) == (
        f"task {task_id}: done\n"
    )
    assert kb.get_task(session, task_id).result == "r"
    # a lock that no longer holds the task
    assert "claim_lock" in one_line_error(cli("complete", str(task_id), "--claim-lock", lock))
    done = ok_json(cli("complete", "2", "--force", "--summary", "by hand", "--json"))
    assert done["status"] == "done"
    assert kb.latest_run(session, 2) is None


@pytest.mark.parametrize("args", [(), ("--claim-lock", "x", "--force")])
def test_complete_needs_exactly_one_of_lock_and_force(cli: Any, args: tuple[str, ...]) -> None:
    ok(cli("create", "--title", "a"))
    result = cli("complete", "1", *args)
    assert result.exit_code == 2
    assert "exactly one of --claim-lock and --force" in result.stderr


def test_fail_retries_then_no_retry_blocks(cli: Any, session: Session) -> None:
    ok(cli("create", "--title", "a"))
    task_id, lock = claim(cli)
    retried = ok_json(cli("fail", str(task_id), "--claim-lock", lock, "--error", "e1", "--json"))
    assert retried["status"] == "ready" and retried["run_at"] is not None
    session.execute(sa.text("UPDATE kanban_tasks SET run_at = NULL"))
    session.commit()
    task_id, lock = claim(cli)
    out = ok(cli("fail", str(task_id), "--claim-lock", lock, "--error", "fatal", "--no-retry"))
    assert out == f"task {task_id}: blocked (fatal)\n"
    assert [r.outcome for r in kb.list_runs(session, task_id=task_id)] == ["failed", "failed"]
    assert cli("fail", "1", "--claim-lock", lock).exit_code == 2  # --error is required


def test_block_unblock_and_blocking_a_running_task(cli: Any) -> None:
    ok(cli("create", "--title", "a"))
    assert ok(cli("block", "1", "--reason", "waiting on legal")) == (
        "task 1: blocked (waiting on legal)\n"
    )
    assert "is already 'blocked'" in one_line_error(cli("block", "1", "--reason", "again"))
    assert ok_json(cli("unblock", "1", "--json"))["status"] == "ready"
    assert "blocked" in one_line_error(cli("unblock", "1"))
    task_id, lock = claim(cli)
    one_line_error(cli("block", str(task_id), "--reason", "no lock"))
    assert ok(cli("block", str(task_id), "--reason", "r", "--claim-lock", lock)).startswith(
        "task 1: blocked"
    )


def test_release_and_heartbeat(cli: Any, session: Session) -> None:
    ok(cli("create", "--title", "a"))
    task_id, lock = claim(cli, "--ttl", "5")
    before = kb.get_task(session, task_id).claim_expires
    assert before is not None
    beat = ok_json(cli("heartbeat", str(task_id), "--claim-lock", lock, "--ttl", "600", "--json"))
    assert beat["id"] == task_id
    assert beat["claim_expires"] > before.isoformat()
    assert ok(cli("heartbeat", str(task_id), "--claim-lock", lock)).startswith(
        f"task {task_id}: lease until 20"
    )
    released = ok(cli("release", str(task_id), "--claim-lock", lock, "--reason", "lunch"))
    assert released == f"task {task_id}: ready\n"
    assert kb.latest_run(session, task_id).outcome == "released"  # type: ignore[union-attr]
    assert "claim_lock" in one_line_error(cli("heartbeat", str(task_id), "--claim-lock", lock))
    assert "claim_lock" in one_line_error(cli("release", str(task_id), "--claim-lock", lock))


def test_reap_reclaims_expired_leases(cli: Any, session: Session) -> None:
    for title in ("a", "b", "c"):
        ok(cli("create", "--title", title))
    claim(cli)
    claim(cli)
    assert ok(cli("reap")) == "reclaimed 0\n"
    expire_leases(session)
    assert ok_json(cli("reap", "--json")) == {"reclaimed": 2}
    assert [t.status for t in kb.list_tasks(session)] == ["ready", "ready", "ready"]


# -- workflow commands ----------------------------------------------------------------------


def test_link_unlink_specify_review_reopen_archive_edit(cli: Any, session: Session) -> None:
    a = int(ok(cli("create", "--title", "a")))
    b = int(ok(cli("create", "--title", "b")))
    assert ok(cli("link", str(a), str(b))) == f"task {b}: todo\n"
    assert "cycle" in one_line_error(cli("link", str(b), str(a)))
    assert ok_json(cli("unlink", str(a), str(b), "--json"))["status"] == "ready"

    idea = int(ok(cli("create", "--title", "idea", "--triage")))
    assert ok(cli("specify", str(idea))) == f"task {idea}: ready\n"

    task_id, lock = claim(cli)
    assert ok(cli("submit", str(task_id), "--claim-lock", lock, "--result", "draft")) == (
        f"task {task_id}: review\n"
    )
    assert ok(cli("request-changes", str(task_id), "--reason", "typo", "--reviewer", "r")) == (
        f"task {task_id}: ready\n"
    )
    task_id, lock = claim(cli)
    ok(cli("submit", str(task_id), "--claim-lock", lock))
    assert ok_json(cli("approve", str(task_id), "--json"))["status"] == "done"
    assert ok(cli("reopen", str(task_id), "--reason", "regressed")) == f"task {task_id}: ready\n"

    edited = ok_json(
        cli("edit", str(b), "--title", "B", "--assignee", "zed", "--priority", "4", "--json")
    )
    assert (edited["title"], edited["assignee"], edited["priority"]) == ("B", "zed", 4)
    assert ok_json(cli("edit", str(b), "--unassign", "--json"))["assignee"] is None
    assert cli("edit", str(b)).exit_code == 2
    assert cli("edit", str(b), "--unassign", "--assignee", "x").exit_code == 2

    assert ok(cli("archive", str(b))) == f"task {b}: archived\n"
    assert b not in [t["id"] for t in ok_json(cli("list", "--json"))]
    task_id, _lock = claim(cli)
    one_line_error(cli("archive", str(task_id)))
    assert ok_json(cli("archive", str(task_id), "--force", "--json"))["status"] == "archived"


def test_comment(cli: Any) -> None:
    ok(cli("create", "--title", "a"))
    assert ok(cli("comment", "1", "--body", "hi")) == "comment 1 on task 1\n"
    added = ok_json(cli("comment", "1", "--body", "again", "--author", "bo", "--json"))
    assert set(added) == {"id", "task_id", "author", "body", "created_at"}
    assert (added["author"], added["body"]) == ("bo", "again")
    assert "comments (2):" in ok(cli("show", "1"))
    one_line_error(cli("comment", "9", "--body", "x"))


# -- events, stats, board -------------------------------------------------------------------


def test_events_plain_json_task_and_after(cli: Any) -> None:
    ok(cli("create", "--title", "a"))
    ok(cli("create", "--title", "b"))
    task_id, lock = claim(cli)
    ok(cli("complete", str(task_id), "--claim-lock", lock))

    every = [json.loads(line) for line in ok(cli("events", "--json")).splitlines()]
    assert [(e["task_id"], e["kind"]) for e in every] == [
        (1, "created"),
        (2, "created"),
        (1, "claimed"),
        (1, "completed"),
    ]
    assert all(set(e) == EVENT_KEYS for e in every)
    assert [e["id"] for e in every] == sorted(e["id"] for e in every)
    mine = ok(cli("events", "--task", "2", "--json")).splitlines()
    assert [json.loads(line)["kind"] for line in mine] == ["created"]
    later = ok(cli("events", "--after", str(every[1]["id"]), "--json")).splitlines()
    assert [json.loads(line)["kind"] for line in later] == ["claimed", "completed"]
    plain = ok(cli("events")).splitlines()
    assert len(plain) == 4
    assert plain[2].split()[2:6] == ["task", "1", "claimed", "run"]


def test_stats(cli: Any) -> None:
    ok(cli("create", "--title", "a", "--assignee", "alice"))
    ok(cli("create", "--title", "b", "--assignee", "alice", "--tenant", "t"))
    ok(cli("create", "--title", "c"))
    ok(cli("create", "--title", "d", "--triage"))
    task_id, lock = claim(cli)
    ok(cli("complete", str(task_id), "--claim-lock", lock))

    figures = ok_json(cli("stats", "--json"))
    assert set(figures) == {"by_status", "by_assignee", "oldest_ready_age_seconds"}
    assert figures["by_status"] == {
        "triage": 1,
        "todo": 0,
        "ready": 2,
        "running": 0,
        "review": 0,
        "blocked": 0,
        "done": 1,
        "archived": 0,
    }
    assert figures["by_assignee"] == [
        {"assignee": "alice", "count": 1},
        {"assignee": None, "count": 2},
    ]
    assert figures["oldest_ready_age_seconds"] >= 0
    scoped = ok_json(cli("stats", "--tenant", "t", "--json"))
    assert scoped["by_status"]["ready"] == 1 and scoped["by_status"]["done"] == 0

    plain = ok(cli("stats"))
    assert "  ready      2\n" in plain
    assert "  (unassigned)   2\n" in plain
    assert "oldest ready task: " in plain


def test_stats_on_an_empty_board(cli: Any) -> None:
    figures = ok_json(cli("stats", "--json"))
    assert figures["by_assignee"] == [] and figures["oldest_ready_age_seconds"] is None
    assert ok(cli("stats")).endswith("oldest ready task: -\n")


def test_board_draws_the_columns_at_the_width_asked(cli: Any) -> None:
    ok(cli("create", "--title", "first card", "--assignee", "alice", "--priority", "2"))
    ok(cli("create", "--title", "second card", "--tenant", "other"))
    ok(cli("create", "--title", "parked", "--triage"))
    claim(cli, "--ttl", "600")
    out = ok(cli("board", "--width", "120"))
    lines = out.splitlines()
    assert {len(line) for line in lines} == {120}
    assert "kanban board: 3 tasks" in lines[0]
    header = lines[2]
    assert header.index("triage 1") < header.index("ready 1") < header.index("running 1")
    assert "first card" in out and "second card" in out
    assert "9m left @alice" in out or "10m left @alice" in out

    scoped = ok(cli("board", "--width", "100", "--tenant", "other"))
    assert "tenant other" in scoped and "second card" in scoped and "first card" not in scoped
    one = ok(cli("board", "--width", "100", "--max-cards", "1"))
    assert "ready 1" in one
    ok(cli("create", "--title", "third card", "--priority", "9"))
    capped = ok(cli("board", "--width", "100", "--max-cards", "1"))
    assert "ready 2" in capped and "third card" in capped and "+1 more" in capped
    assert "second card" not in capped


def test_missing_tables_say_to_upgrade(tmp_path: Any) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()  # a database without the kanban tables
    result = CliRunner().invoke(main, ["--db", f"sqlite:///{path}", "list"])
    line = one_line_error(result)
    assert "no such table" in line and "kanban-orm db upgrade" in line


@pytest.mark.parametrize("command", [["list"], ["claim"], ["db", "check"], ["stats"]])
def test_a_mistyped_sqlite_path_is_an_error_and_creates_nothing(
    tmp_path: Any, command: list[str]
) -> None:
    path = tmp_path / "typo" / "kanban.db"
    result = CliRunner().invoke(main, ["--db", f"sqlite:///{path}", *command])
    line = one_line_error(result)
    assert line == f"error: no database at {path} (run `kanban-orm db upgrade` to create one)"
    assert not path.parent.exists()
    current = CliRunner().invoke(main, ["--db", f"sqlite:///{path}", "db", "current"])
    assert one_line_error(current) == line  # agrees with db check
    assert not path.parent.exists()
    upgraded = CliRunner().invoke(main, ["--db", f"sqlite:///{path}", "db", "upgrade"])
    assert one_line_error(upgraded) == (
        f"error: no folder {path.parent} for the database {path}: create it, or pass --create-dirs"
    )
    assert not path.parent.exists()
    upgraded = CliRunner().invoke(
        main, ["--db", f"sqlite:///{path}", "db", "upgrade", "--create-dirs"]
    )
    assert upgraded.exit_code == 0 and path.exists()


_SUPPORTED = "SQLite, PostgreSQL and MariaDB/MySQL"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("bogus://x", f"error: kanban_orm runs on {_SUPPORTED}, not 'bogus'"),
        ("mssql://u@h/db", f"error: kanban_orm runs on {_SUPPORTED}, not 'mssql'"),
        ("not a url", "error: not a database URL: 'not a url'"),
    ],
)
def test_a_url_kanban_orm_cannot_use_is_one_error_line(url: str, message: str) -> None:
    result = CliRunner().invoke(main, ["--db", url, "list"])
    assert one_line_error(result) == message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KANBAN_SQLITE_SYNCHRONOUS", "sometimes"),
        ("KANBAN_SQLITE_BUSY_TIMEOUT_MS", "soon"),
        ("KANBAN_CLAIM_TTL_SECONDS", "inf"),
    ],
)
def test_a_bad_setting_in_the_environment_is_one_error_line(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    kb.init_db(url)
    kb.dispose_engines()
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(main, ["--db", url, "claim"])
    line = one_line_error(result)
    assert line.startswith("error: ") and variable in line


def test_the_environment_names_the_database(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_URL, db_url)
    assert CliRunner().invoke(main, ["create", "--title", "env"]).stdout == "1\n"


# -- live commands, in real processes -----------------------------------------------------


def spawn(db_url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kanban_orm.cli", "--db", db_url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def read_lines(proc: subprocess.Popen[str], count: int, timeout: float = 20.0) -> list[str]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while len(lines) < count:
        assert time.monotonic() < deadline, f"got only {lines}"
        line = proc.stdout.readline()
        assert line, (
            f"stdout closed after {lines}; stderr: {proc.stderr.read() if proc.stderr else ''}"
        )
        lines.append(line)
    return lines


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_events_follow_tails_new_events_until_a_signal(
    db_url: str, session: Session, signum: int
) -> None:
    kb.create_task(session, title="before")
    proc = spawn(db_url, "events", "--follow", "--json", "--interval", "0.1")
    try:
        first = json.loads(read_lines(proc, 1)[0])
        assert (first["task_id"], first["kind"]) == (1, "created")
        task_id = kb.create_task(session, title="after")
        task = kb.claim_task(session, task_id, claimer="w")
        assert task is not None
        tailed = [json.loads(line) for line in read_lines(proc, 2)]
        assert [(e["task_id"], e["kind"]) for e in tailed] == [(2, "created"), (2, "claimed")]
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert out == ""


def test_a_signal_while_the_stop_event_is_locked_still_stops_the_command() -> None:
    """--follow and --watch wait on an Event and a signal sets it: the handler runs in
    the waiting thread, maybe while Event.wait holds the lock Event.set takes. Seen as
    a `board --watch` that never exited after Ctrl-C."""
    script = textwrap.dedent(
        """
        import os, signal, threading
        from kanban_orm.cli import _stop_signals
        stop = threading.Event()
        with _stop_signals(lambda count: stop.set()):
            with stop._cond:  # where Event.wait holds it, between its checks
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(10_000):  # the handler runs in here, in this thread
                    pass
            print("stopped" if stop.wait(10) else "not stopped")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.stdout == "stopped\n", result.stderr


def test_board_watch_redraws_in_place_until_a_signal(db_url: str, session: Session) -> None:
    # On a terminal (a pseudo-terminal here) rich.live draws at once and then redraws
    # in place; the test waits for two frames, adds a card, waits for it, then Ctrl-C.
    kb.create_task(session, title="watched")
    controller, terminal = pty.openpty()
    argv = ["board", "--watch", "--interval", "0.1", "--width", "100"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "kanban_orm.cli", "--db", db_url, *argv],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(terminal)
    seen = ""

    def wait_for(text: str) -> None:
        nonlocal seen
        deadline = time.monotonic() + 60  # generous: a loaded CI machine starts slowly
        while text not in seen:
            assert time.monotonic() < deadline, seen[-2000:]
            if select.select([controller], [], [], 0.2)[0]:
                seen += os.read(controller, 65536).decode(errors="replace")

    try:
        wait_for("watched")
        kb.create_task(session, title="added")
        wait_for("added")
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "\x1b[" in seen  # cursor movement: redrawn in place, not appended
