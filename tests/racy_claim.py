"""Deliberately broken claims, to prove the stress suite's checker and harness catch them.

Each is passed to ``python -m stress --claim-impl tests.racy_claim:NAME`` and called by
the workers instead of ``kb.claim_task``.

``claim_task``, the racy one, checks the task's state in one transaction and then, a
moment later, writes the claim with an UPDATE that does not repeat the check (no
``status = 'ready' AND claim_lock IS NULL`` guard): the check-then-act race the kernel's
compare-and-swap exists to prevent. The check is a plain read, so on SQLite it takes no
write lock and nothing serialises it with the act; the act goes through the kernel's
retry layer, so a busy SQLite yields double claims rather than only lock errors. Two
workers can both see the task ready and both "win"; the later one silently takes the
claim over (closing the earlier run, since the schema allows one open run per task).
"""

from __future__ import annotations

import os
import time
import uuid

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

import kanban_orm as kb
from kanban_orm import queries as q
from kanban_orm import steps
from kanban_orm.clock import utcnow
from kanban_orm.db import run_write
from kanban_orm.driver import Tx

CLOSE_ANY_OPEN_RUN = (
    update(q.runs)
    .where(q.runs.c.task_id == bindparam("run_task_id"), q.runs.c.ended_at.is_(None))
    .values(ended_at=utcnow(), outcome="reclaimed")
)
TAKE_UNGUARDED = (
    update(q.tasks)
    .where(q.tasks.c.id == bindparam("task_id"))  # BROKEN: no status / claim_lock guard
    .values(status="running", claim_lock=bindparam("token"), attempts=q.tasks.c.attempts + 1)
)
OPEN_RUN = (
    insert(q.runs).values(started_at=utcnow(), last_heartbeat_at=utcnow()).returning(q.runs.c.id)
)
SET_RUN = (
    update(q.tasks)
    .where(q.tasks.c.id == bindparam("task_id"))
    .values(current_run_id=bindparam("run_id"))
)


def claim_task(
    session: Session, task_id: int, *, claimer: str, ttl_seconds: float | None = None
) -> kb.Task | None:
    status = session.scalar(select(q.tasks.c.status).where(q.tasks.c.id == task_id))
    session.commit()
    if status != "ready":
        return None
    time.sleep(0.003)  # widen the window between the check and the act
    token = uuid.uuid4().hex

    def unguarded(s: Tx) -> kb.Task:
        s.execute(CLOSE_ANY_OPEN_RUN, {"run_task_id": task_id})
        s.execute(TAKE_UNGUARDED, {"task_id": task_id, "token": token})
        run_id = s.execute(
            OPEN_RUN,
            {"task_id": task_id, "attempt": 1, "claimer": claimer, "claim_lock": token},
        ).scalar()
        s.execute(SET_RUN, {"task_id": task_id, "run_id": run_id})
        s.execute(
            q.INSERT_EVENT,
            {"task_id": task_id, "run_id": run_id, "kind": "claimed", "payload": None},
        )
        return steps.load_task(s, task_id)

    return run_write(session, unguarded)


def die_on_first_claim(
    session: Session, task_id: int, *, claimer: str, ttl_seconds: float | None = None
) -> kb.Task | None:
    """Kill the worker process at its first claim (the harness must name the dead worker)."""
    os._exit(9)


def hang_on_claim(
    session: Session, task_id: int, *, claimer: str, ttl_seconds: float | None = None
) -> kb.Task | None:
    """Never return (the harness's timeout must end the run and name the hung worker)."""
    while True:
        time.sleep(60)
