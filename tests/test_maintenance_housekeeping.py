"""The housekeeping thread and its KANBAN_RETENTION_* settings."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import config


def test_no_retention_setting_means_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DONE", "ARCHIVED", "EVENTS"):
        monkeypatch.delenv(f"KANBAN_RETENTION_{name}_DAYS", raising=False)
    keeper = kb.Housekeeper(url="sqlite://")
    assert not keeper.settings.enabled
    assert keeper.start() is False


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KANBAN_RETENTION_DONE_DAYS", "30")
    monkeypatch.setenv("KANBAN_RETENTION_EVENTS_DAYS", "0.5")
    monkeypatch.setenv("KANBAN_RETENTION_INTERVAL_SECONDS", "60")
    monkeypatch.setenv("KANBAN_RETENTION_BATCH", "200")
    assert config.retention_settings() == kb.RetentionSettings(
        done_after=timedelta(days=30),
        events_after=timedelta(hours=12),
        interval_seconds=60.0,
        batch=200,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KANBAN_RETENTION_DONE_DAYS", "soon"),
        ("KANBAN_RETENTION_DONE_DAYS", "-1"),
        ("KANBAN_RETENTION_ARCHIVED_DAYS", "nan"),
        ("KANBAN_RETENTION_EVENTS_DAYS", "1e9"),
        ("KANBAN_RETENTION_INTERVAL_SECONDS", "0"),
        ("KANBAN_RETENTION_BATCH", "0"),
        ("KANBAN_RETENTION_BATCH", "1.5"),
    ],
)
def test_a_bad_setting_is_a_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(kb.ConfigError, match=name):
        kb.Housekeeper(url="sqlite://")


def test_the_thread_prunes_on_its_schedule(db_url: str, session: Session) -> None:
    done = kb.create_task(session, title="done")
    kb.complete_task(session, done, force=True)
    live = kb.create_task(session, title="live")
    settings = kb.RetentionSettings(done_after=timedelta(0), interval_seconds=3600, batch=1)
    keeper = kb.Housekeeper(url=db_url, settings=settings)

    assert keeper.start() is True
    deadline = time.monotonic() + 30
    while keeper.last_result is None and time.monotonic() < deadline:
        time.sleep(0.02)
    keeper.stop(timeout=10)

    assert keeper.last_result is not None and keeper.last_result.tasks == 1
    assert keeper.last_error is None and keeper.runs == 1
    assert [t.id for t in kb.list_tasks(session)] == [live]


def test_a_worker_with_housekeeping_prunes_while_it_runs(
    db_url: str, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The task the worker finishes must stay younger than the cutoff: with a zero-day cutoff
    # a housekeeping pass that happens to run after it would prune it too.
    monkeypatch.setenv("KANBAN_RETENTION_DONE_DAYS", "1")
    old = kb.create_task(session, title="finished long ago")
    kb.complete_task(session, old, force=True)
    long_ago = datetime(2020, 1, 1)
    session.execute(update(kb.Task).where(kb.Task.id == old).values(completed_at=long_ago))
    session.commit()
    fresh = kb.create_task(session, title="work")

    worker = kb.Worker(lambda task: "ok", url=db_url, drain=True, housekeeping=True)
    assert worker.housekeeper is not None
    worker.run()

    assert worker.housekeeper.runs >= 1
    assert kb.get_task(session, fresh).status == "done"
    with pytest.raises(kb.TaskNotFound):
        kb.get_task(session, old)


def test_a_worker_without_housekeeping_has_no_housekeeper(db_url: str) -> None:
    assert kb.Worker(lambda task: "ok", url=db_url).housekeeper is None
