"""Attachments: stored with their task, size-capped, names that never escape, on every
backend; shown by ``kanban-orm show``."""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm.attachments import sanitize_name
from kanban_orm.cli import main


def test_attach_list_and_read_back(session: Session) -> None:
    task_id = kb.create_task(session, title="report")
    data = bytes(range(256)) * 40
    stored = kb.attach(session, task_id, name="report.bin", data=data)
    assert (stored.task_id, stored.name, stored.size) == (task_id, "report.bin", len(data))
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    kb.attach(session, task_id, name="notes.txt", data="naïve ✓")

    assert [a.name for a in kb.list_attachments(session, task_id)] == ["report.bin", "notes.txt"]
    assert kb.read_attachment(session, task_id, "report.bin") == data
    assert kb.read_attachment(session, task_id, "notes.txt").decode() == "naïve ✓"
    attached = [e for e in kb.list_events(session, task_id=task_id) if e.kind == "attached"]
    assert [e.payload["name"] for e in attached] == ["report.bin", "notes.txt"]  # type: ignore[index]


def test_the_newest_of_a_name_is_read_and_runs_are_linked(session: Session) -> None:
    task_id = kb.create_task(session, title="retried")
    task = kb.claim_task(session, task_id, claimer="w")
    assert task is not None and task.current_run_id is not None
    kb.attach(session, task_id, name="out.txt", data=b"first", run_id=task.current_run_id)
    kb.attach(session, task_id, name="out.txt", data=b"second")
    assert kb.read_attachment(session, task_id, "out.txt") == b"second"
    runs = [a.run_id for a in kb.list_attachments(session, task_id)]
    assert runs == [task.current_run_id, None]


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("../../etc/passwd", "passwd"),
        ("/abs/path/file.txt", "file.txt"),
        ("C:\\Users\\me\\evil.bat", "evil.bat"),
        ("a\x00b\nc.txt", "a_b_c.txt"),
        ('what?<is>"this".md', "what__is__this_.md"),
        (".env", ".env"),
        ("x" * 300 + ".tar", "x" * 251 + ".tar"),
    ],
)
def test_names_are_sanitised_so_a_path_never_escapes(given: str, kept: str) -> None:
    assert sanitize_name(given) == kept


@pytest.mark.parametrize("name", ["", "  ", ".", "..", "dir/", "../..", "a/..", 7])
def test_a_name_with_no_file_name_is_refused(session: Session, name: object) -> None:
    task_id = kb.create_task(session, title="t")
    with pytest.raises(kb.InvalidInput):
        kb.attach(session, task_id, name=name, data=b"x")  # type: ignore[arg-type]
    assert kb.list_attachments(session, task_id) == []


def test_the_size_cap_refuses_and_writes_nothing(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = kb.create_task(session, title="big")
    monkeypatch.setenv("KANBAN_MAX_ATTACHMENT_BYTES", "10")
    kb.attach(session, task_id, name="fits", data=b"0123456789")
    with pytest.raises(kb.InvalidInput, match="KANBAN_MAX_ATTACHMENT_BYTES"):
        kb.attach(session, task_id, name="too-big", data=b"0123456789A")
    assert [a.name for a in kb.list_attachments(session, task_id)] == ["fits"]
    for bad in ("lots", "-1", str(2**40)):
        monkeypatch.setenv("KANBAN_MAX_ATTACHMENT_BYTES", bad)
        with pytest.raises(kb.ConfigError, match="KANBAN_MAX_ATTACHMENT_BYTES"):
            kb.attach(session, task_id, name="any", data=b"")


def test_the_default_cap_is_25_mib(session: Session) -> None:
    task_id = kb.create_task(session, title="big")
    with pytest.raises(kb.InvalidInput, match="26214400"):
        kb.attach(session, task_id, name="huge", data=b"\0" * (25 * 1024 * 1024 + 1))


def test_missing_things_raise_library_errors(session: Session) -> None:
    with pytest.raises(kb.TaskNotFound):
        kb.attach(session, 404, name="a", data=b"")
    with pytest.raises(kb.TaskNotFound):
        kb.list_attachments(session, 404)
    with pytest.raises(kb.TaskNotFound):
        kb.read_attachment(session, 404, "a")
    task_id = kb.create_task(session, title="t")
    other = kb.create_task(session, title="other")
    claimed = kb.claim_task(session, other, claimer="w")
    assert claimed is not None
    with pytest.raises(kb.AttachmentNotFound, match="no attachment named 'nope'"):
        kb.read_attachment(session, task_id, "nope")
    with pytest.raises(kb.InvalidInput, match="not a run of task"):
        kb.attach(session, task_id, name="a", data=b"", run_id=claimed.current_run_id)
    with pytest.raises(kb.InvalidInput):
        kb.attach(session, task_id, name="a", data=12)  # type: ignore[arg-type]
    assert kb.list_attachments(session, task_id) == []


def test_show_lists_attachments(db_url: str, session: Session) -> None:
    task_id = kb.create_task(session, title="shown")
    kb.attach(session, task_id, name="../result.json", data=b'{"ok": true}')
    runner = CliRunner()
    plain = runner.invoke(main, ["--db", db_url, "show", str(task_id)])
    assert plain.exit_code == 0, plain.output
    assert "attachments (1):" in plain.output and "result.json" in plain.output
    as_json = runner.invoke(main, ["--db", db_url, "show", str(task_id), "--json"])
    shown = json.loads(as_json.output)["attachments"]
    assert [(a["name"], a["size"]) for a in shown] == [("result.json", 12)]
