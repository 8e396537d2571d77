"""A process killed at any instant, even inside a commit, leaves no half-written transition."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import kanban_orm as kb

from . import workers
from .helpers import board_violations

pytestmark = pytest.mark.slow

SPAWN = mp.get_context("spawn")


def test_sigkill_mid_transaction_leaves_a_consistent_board(
    db_url: str, session: Session, backend: str
) -> None:
    for i in range(400):
        kb.create_task(session, title=f"t{i}")
    rng = random.Random(7)
    kills = 0
    for _round in range(6):
        proc = SPAWN.Process(target=workers.churn, args=(db_url, f"victim-{_round}"))
        proc.start()
        # Let it get into its loop (imports take most of a second), then kill it at a
        # random instant: inside a statement, between statements or inside COMMIT.
        time.sleep(1.0 + rng.random() * 0.5)
        assert proc.pid is not None and proc.is_alive()
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        kills += proc.exitcode == -signal.SIGKILL

        if backend == "sqlite":
            path = sa.make_url(db_url).database
            with sa.create_engine(f"sqlite:///{path}").connect() as raw:
                assert raw.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        assert board_violations(session) == []
        # The dead worker's lease can only be healed by time: expire and reap it.
        session.execute(sa.text("UPDATE kanban_tasks SET claim_expires = created_at"))
        session.commit()
        kb.release_stale_claims(session)
        assert board_violations(session) == []
    assert kills == 6
    assert kb.board_stats(session)["by_status"]["running"] == 0
