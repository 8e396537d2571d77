"""SQLite: the WAL stays bounded while writers never pause (kanban_orm.backends.sqlite.WalBound).

SQLite only: the WAL is SQLite's; PostgreSQL and MariaDB recycle their logs themselves.
Two real processes writing back to back starve SQLite's own checkpoints of the moment
they need to restart the WAL, which then grows by every commit.
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import time
from pathlib import Path

import pytest

import kanban_orm as kb
from kanban_orm.backends import sqlite

from . import workers

SPAWN = mp.get_context("spawn")
BOUND = 256 * 1024


def _wal_bytes(db: Path) -> int:
    wal = Path(f"{db}-wal")
    return wal.stat().st_size if wal.exists() else 0


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "kanban.db"
    kb.init_db(f"sqlite:///{path}")
    return path


def test_back_to_back_writers_in_two_processes_keep_the_wal_bounded(
    db: Path, tmp_path: Path
) -> None:
    url, count = f"sqlite:///{db}", 1500
    barrier = SPAWN.Barrier(3)
    outs = [tmp_path / f"writer-{i}.json" for i in range(2)]
    procs = [
        SPAWN.Process(target=workers.write_back_to_back, args=(url, count, BOUND, barrier, str(o)))
        for o in outs
    ]
    for proc in procs:
        proc.start()
    barrier.wait(timeout=120)
    largest = 0
    while any(proc.is_alive() for proc in procs):
        largest = max(largest, _wal_bytes(db))
        time.sleep(0.005)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert all(o.exists() for o in outs)
    # Unbounded, 3000 commits leave a WAL of ~10 MB or more (every commit's pages); the
    # bound allows a few commits' lag past it (a checkpoint busy with another's).
    assert largest < 8 * BOUND, f"the WAL reached {largest / 2**20:.1f} MB"
    assert _wal_bytes(db) < 8 * BOUND
    with kb.connect(url) as session:
        assert len(kb.list_tasks(session, limit=None)) == 2 * count


def test_a_long_read_delays_the_bound_but_never_fails_a_commit(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "WAL_BOUND_BYTES", BOUND)
    monkeypatch.setattr(sqlite, "WAL_CHECK_SECONDS", 0.0)
    kb.dispose_engines()  # new connections, with the bound as journal_size_limit
    url = f"sqlite:///{db}"
    reader = sqlite3.connect(db, isolation_level=None)
    body = "x" * 3000
    with kb.connect(url) as session:
        kb.create_task(session, title="before the read", body=body)
        # A reader on the WAL's frames: no checkpoint may restart the WAL under it.
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM kanban_tasks").fetchone()
        while _wal_bytes(db) <= 2 * BOUND:
            kb.create_task(session, title="during the read", body=body)
        reader.execute("COMMIT")
        # The next commit's checkpoint lets the WAL restart; the commit after it
        # rewrites the WAL from its start and cuts the file back to the bound.
        kb.create_task(session, title="after the read", body=body)
        kb.create_task(session, title="after the read, again", body=body)
        assert _wal_bytes(db) <= BOUND
        assert all(t.title for t in kb.list_tasks(session))
    reader.close()
