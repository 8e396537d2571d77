"""Engine set-up: URLs, SQLite pragmas and locking, sessions."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import db


def test_url_comes_from_argument_then_env_then_kanban_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(db.ENV_URL, raising=False)
    monkeypatch.setenv(db.ENV_HOME, str(tmp_path / "home"))
    assert kb.default_url() == f"sqlite:///{tmp_path / 'home' / 'kanban.db'}"
    engine = kb.create_engine()
    assert engine.url.database == str(tmp_path / "home" / "kanban.db")
    assert (tmp_path / "home").is_dir()  # created for the SQLite file

    monkeypatch.setenv(db.ENV_URL, f"sqlite:///{tmp_path / 'env.db'}")
    assert kb.create_engine().url.database == str(tmp_path / "env.db")
    assert kb.create_engine(f"sqlite:///{tmp_path / 'arg.db'}").url.database == str(
        tmp_path / "arg.db"
    )


def test_plain_postgresql_url_gets_psycopg_3() -> None:
    engine = kb.create_engine("postgresql://postgres@127.0.0.1:5432/nowhere")
    assert engine.dialect.driver == "psycopg"


def _pragmas(engine: sa.Engine) -> dict[str, object]:
    with engine.connect() as conn:
        return {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
        }


def test_sqlite_connections_use_wal_foreign_keys_busy_timeout(tmp_path: Path) -> None:
    engine = kb.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    assert _pragmas(engine) == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "busy_timeout": db.SQLITE_BUSY_TIMEOUT_MS,
        "synchronous": 1,  # NORMAL
    }


def test_sqlite_durability_is_one_setting_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = kb.create_engine(f"sqlite:///{tmp_path / 'a.db'}", synchronous="FULL")
    assert _pragmas(full)["synchronous"] == 2
    monkeypatch.setenv(db.ENV_SYNCHRONOUS, "full")
    monkeypatch.setenv(db.ENV_BUSY_TIMEOUT, "1234")
    from_env = kb.create_engine(f"sqlite:///{tmp_path / 'b.db'}")
    assert _pragmas(from_env)["synchronous"] == 2
    assert _pragmas(from_env)["busy_timeout"] == 1234
    with pytest.raises(ValueError, match="synchronous"):
        kb.create_engine(f"sqlite:///{tmp_path / 'c.db'}", synchronous="SOMETIMES")


@pytest.mark.parametrize("busy_timeout_ms", [-1, 1.5, "5", True, 2**31])
def test_a_busy_timeout_sqlite_cannot_use_is_refused(tmp_path: Path, busy_timeout_ms: Any) -> None:
    with pytest.raises(kb.ConfigError, match="busy_timeout_ms"):
        kb.create_engine(f"sqlite:///{tmp_path / 'a.db'}", busy_timeout_ms=busy_timeout_ms)


def test_a_refused_setting_leaves_the_engine_to_be_configured_again(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with pytest.raises(kb.ConfigError):
        kb.configure_engine(engine, synchronous="SOMETIMES")
    kb.configure_engine(engine, synchronous="FULL")
    assert _pragmas(engine)["synchronous"] == 2


def test_a_sqlite_path_under_the_home_directory_is_opened_where_it_was_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    kb.init_db("sqlite:///~/boards/kanban.db")
    assert (tmp_path / "boards" / "kanban.db").is_file()


def test_configure_engine_on_a_host_engine_is_idempotent(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'host.db'}")
    assert kb.configure_engine(engine) is engine
    assert kb.configure_engine(engine) is engine
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")  # one BEGIN per transaction, not two
    assert _pragmas(engine)["journal_mode"] == "wal"


def test_sqlite_writes_begin_immediate_and_reads_take_no_lock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    kb.upgrade(kb.create_engine(url))
    engine = kb.create_engine(
        url, busy_timeout_ms=50, retry=kb.RetryPolicy(max_attempts=2, max_total_seconds=0.2)
    )
    with Session(engine) as session:
        task_id = kb.create_task(session, title="seen by readers")
        holder = sqlite3.connect(tmp_path / "k.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            assert kb.get_task(session, task_id).title == "seen by readers"
            assert [t.id for t in kb.list_tasks(session)] == [task_id]
            session.rollback()
            with pytest.raises(kb.DatabaseBusy):
                kb.claim_task(session, task_id, claimer="w")
        finally:
            holder.rollback()
            holder.close()
        assert kb.claim_task(session, task_id, claimer="w") is not None


def test_connect_returns_sessions_whose_tasks_outlive_them(db_url: str) -> None:
    session = kb.connect(db_url)
    task_id = kb.create_task(session, title="t")
    task = kb.claim_task(session, task_id, claimer="w")
    session.close()
    assert task is not None
    assert (task.status, len(task.claim_lock or "")) == ("running", 32)
    assert kb.connect(db_url).get_bind() is kb.cached_engine(db_url)


def test_a_claim_gives_its_connection_back_to_the_pool_transactional(
    session: Session, engine: Engine
) -> None:
    # A claim on PostgreSQL runs in autocommit mode (one statement); the connection
    # must not keep that mode, or the next multi-statement transition would not be one.
    kb.create_task(session, title="t")
    assert kb.claim_next(session, claimer="w") is not None
    pooled = engine.raw_connection()
    try:
        autocommit = getattr(pooled.dbapi_connection, "autocommit", False)
        if callable(autocommit):  # MySQLdb's is a method; get_autocommit() answers
            autocommit = pooled.dbapi_connection.get_autocommit()
        assert autocommit is False
    finally:
        pooled.close()
