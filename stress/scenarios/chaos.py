"""Workers die at random; the board must heal within the lease and lose nothing.

Workers claim with a 1.5 s TTL (even ones with ``claim_next``, odd ones with
``claim_many``), work (heartbeating halfway) and complete. There is no reaper: expired
leases are healed by the claimers taking them over. The parent (the harness's
:class:`~stress.harness.Chaos`) SIGKILLs about 20% of the workers, alternately inside a
database call and inside their work, and starts a replacement for each; on PostgreSQL
it also terminates random worker backends (``pg_terminate_backend``) mid-statement or
mid-transaction. Workers survive a lost connection: the kernel's retry layer replays
the transaction, and an error that still escapes is logged, the session rolled back
(or replaced) and the call retried or the task left to its lease.

At the end every task is done exactly once, every run is closed, and each victim's
leases were reclaimed and claimed again within the TTL plus polling.
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

import kanban_orm as kb

from .. import invariants as inv
from ..harness import (
    DB_ERROR,
    DB_ERRORS,
    TRANSACTION,
    WORKING,
    Chaos,
    Check,
    Config,
    Outcome,
    StallWatch,
    WorkerContext,
    one_line,
    read,
)
from .mixed import CLAIM_LOST, KANBAN_ERROR, STALLED, all_done, replay_check, unfinished

DESCRIPTION = (
    "SIGKILL ~20% of the workers mid-call and mid-work (and terminate PostgreSQL "
    "backends) while replacements start: every task done once, nothing lost"
)
TENANT = "chaos"
TTL_SECONDS = 1.5
#: A dead worker's lease is claimed again within the TTL plus this: claimers take
#: expired leases over at least once a second, and a loaded machine adds a little.
HEAL_SLACK_SECONDS = 3.0
CHAOS = Chaos(kill_fraction=0.2, kill_between=(0.05, 0.8), stage_wait=2.0, terminations=8)
BATCH = 2
#: A fenced call that met a database error is tried this many times in all.
TRIES = 3
IDLE_MS = (5.0, 20.0)
STALL_SECONDS = 30.0
#: Log kinds: a ClaimLost for a claim whose run had in fact completed (the kernel
#: reported a landed completion as lost), and a replaced session.
FALSE_CLAIM_LOST, RECONNECTED = "false_claim_lost", "reconnected"


def setup(session: Session, config: Config) -> None:
    for i in range(config.tasks):
        kb.create_task(session, title=f"chaos #{i}", tenant=TENANT)


class Worker:
    """One chaos worker: its session survives (is replaced after) a lost connection."""

    def __init__(self, worker: WorkerContext) -> None:
        self.worker = worker
        self.session = kb.connect(worker.config.db_url)
        #: How many tasks the last claim() took.
        self.held = 0

    def recover(self, during: str, task: int | None, error: BaseException) -> None:
        self.worker.log(DB_ERROR, task=task, during=during, error=one_line(error))
        try:
            self.session.rollback()
        except DB_ERRORS:
            self.session.close()
            self.session = kb.connect(self.worker.config.db_url)
            self.worker.log(RECONNECTED, task=task)

    def run(self) -> None:
        worker = self.worker
        progress = StallWatch(STALL_SECONDS)
        while not worker.out_of_time():
            for task in self.claim():
                self.finish(task)
            if self.held:
                continue
            try:
                left = unfinished(self.session)
            except DB_ERRORS as error:
                self.recover("poll", None, error)
                continue
            if not left:
                return
            if progress.stalled(left):
                worker.log(STALLED, left=left, seconds=STALL_SECONDS)
                return
            time.sleep(worker.random.uniform(*IDLE_MS) / 1000)

    def claim(self) -> list[tuple[int, str, int | None]]:
        worker = self.worker
        self.held = 0
        try:
            with worker.stage(TRANSACTION):
                if worker.index % 2 == 0:
                    one = kb.claim_next(self.session, claimer=worker.name, ttl_seconds=TTL_SECONDS)
                    tasks = [one] if one is not None else []
                else:
                    tasks = kb.claim_many(
                        self.session, claimer=worker.name, limit=BATCH, ttl_seconds=TTL_SECONDS
                    )
        except DB_ERRORS as error:
            self.recover("claim", None, error)
            return []
        except kb.KanbanError as error:
            self.session.rollback()
            worker.log(KANBAN_ERROR, task=None, during="claim", error=one_line(error))
            return []
        claimed = [(t.id, str(t.claim_lock), t.current_run_id) for t in tasks]
        for task_id, token, run_id in claimed:
            worker.log("claimed", task=task_id, run_id=run_id, claim_lock=token)
        self.held = len(claimed)
        return claimed

    def finish(self, held: tuple[int, str, int | None]) -> None:
        task_id, token, run_id = held
        worker = self.worker
        with worker.stage(WORKING, task_id):
            worker.work_pause()
        if not self.fenced("heartbeat", task_id, token, run_id):
            return
        with worker.stage(WORKING, task_id):
            worker.work_pause()
        self.fenced("completed", task_id, token, run_id)

    def fenced(self, kind: str, task_id: int, token: str, run_id: int | None) -> bool:
        """Heartbeat or complete with the claim's token, retrying after a database
        error; a ClaimLost is checked against the run's real outcome."""
        worker = self.worker
        errors = 0
        for _ in range(TRIES):
            try:
                with worker.stage(TRANSACTION, task_id):
                    if kind == "heartbeat":
                        kb.heartbeat(
                            self.session, task_id, claim_lock=token, ttl_seconds=TTL_SECONDS
                        )
                    else:
                        kb.complete_task(
                            self.session, task_id, claim_lock=token, result=f"by {worker.name}"
                        )
            except kb.ClaimLost as error:
                self.session.rollback()
                landed = self.run_outcome(token) == "completed" and kind == "completed"
                fields = {"task": task_id, "run_id": run_id, "claim_lock": token}
                if landed and errors:  # our earlier try's COMMIT landed unseen
                    worker.log(kind, **fields, after_error=True)
                    return True
                worker.log(
                    FALSE_CLAIM_LOST if landed else CLAIM_LOST,
                    **fields,
                    op=kind,
                    error=one_line(error),
                )
                return False
            except DB_ERRORS as error:
                errors += 1
                self.recover(kind, task_id, error)
                continue
            except kb.KanbanError as error:
                self.session.rollback()
                worker.log(KANBAN_ERROR, task=task_id, during=kind, error=one_line(error))
                return False
            if kind == "completed":
                worker.log(kind, task=task_id, run_id=run_id, claim_lock=token)
            return True
        return False  # left to its lease: it expires and is taken over

    def run_outcome(self, token: str) -> str | None:
        try:
            query = select(kb.TaskRun.outcome).where(kb.TaskRun.claim_lock == token)
            outcome = read(self.session, lambda s: s.scalar(query))
        except DB_ERRORS as error:
            self.recover("run lookup", None, error)
            return None
        return outcome


def work(worker: WorkerContext) -> None:
    chaos_worker = Worker(worker)
    try:
        chaos_worker.run()
    finally:
        chaos_worker.session.close()


# -- invariants -------------------------------------------------------------------------


def _epoch(moment: datetime) -> float:
    return moment.replace(tzinfo=UTC).timestamp()


def healing(outcome: Outcome, session: Session) -> list[dict[str, Any]]:
    """For each reclaimed lease of a killed worker: seconds from the kill to the
    reclaim and to the task's next claim (wall clock vs. the events' created_at)."""
    rows = session.execute(
        select(
            kb.TaskEvent.id,
            kb.TaskEvent.task_id,
            kb.TaskEvent.run_id,
            kb.TaskEvent.kind,
            kb.TaskEvent.created_at,
        ).order_by(kb.TaskEvent.id)
    ).all()
    runs = inv.load_runs(session)
    heals = []
    for kill in outcome.kills:
        for reclaim in rows:
            run = runs.get(reclaim.run_id) if reclaim.run_id is not None else None
            if reclaim.kind != "reclaimed" or run is None or run.claimer != kill["worker"]:
                continue
            next_claim = next(
                (
                    e
                    for e in rows
                    if e.id > reclaim.id and e.task_id == reclaim.task_id and e.kind == "claimed"
                ),
                None,
            )
            heals.append(
                {
                    "worker": kill["worker"],
                    "stage": kill["stage"],
                    "task": reclaim.task_id,
                    "to_reclaim": round(_epoch(reclaim.created_at) - kill["at"], 3),
                    "to_claim": None
                    if next_claim is None
                    else round(_epoch(next_claim.created_at) - kill["at"], 3),
                }
            )
    return heals


def checks(outcome: Outcome, session: Session) -> list[Check]:
    board = inv.board_violations(session) + integrity(session)
    events = inv.load_events(session)
    runs = inv.load_runs(session)
    tasks = session.execute(select(kb.Task.id, kb.Task.status)).all()
    session.rollback()
    heals = healing(outcome, session)
    killed = {k["worker"] for k in outcome.kills}
    to_claim = [h["to_claim"] for h in heals if h["to_claim"] is not None]
    bound = TTL_SECONDS + HEAL_SLACK_SECONDS
    db_errors = list(outcome.entries(DB_ERROR))
    outcome.numbers.update(
        {
            "kills": len(outcome.kills),
            "kills_by_stage": _by(outcome.kills, "stage"),
            "backend_terminations": len(outcome.terminations),
            "reclaims": sum(1 for e in events if e.kind == "reclaimed"),
            "victim_leases_reclaimed": len(heals),
            "kills_holding_no_lease": sum(
                1 for k in outcome.kills if not any(h["worker"] == k["worker"] for h in heals)
            ),
            "kill_to_claimed_again_s": _spread(to_claim),
            "kill_to_reclaimed_s": _spread([h["to_reclaim"] for h in heals]),
            "db_errors_survived": len(db_errors),
            "reconnects": sum(1 for _ in outcome.entries(RECONNECTED)),
            "heals": heals,
        }
    )
    open_runs = [f"run {r.id} of task {r.task_id} is open" for r in runs.values() if not r.outcome]
    victims = [
        f"{k['worker']} (killed at {k['t']:.2f} s) still holds run {r.id}"
        for k in outcome.kills
        for r in runs.values()
        if r.claimer == k["worker"] and r.outcome is None
    ]
    slow = [
        f"task {h['task']} of {h['worker']} claimed again {h['to_claim']} s after the kill"
        if h["to_claim"] is not None
        else f"task {h['task']} of {h['worker']} never claimed again"
        for h in heals
        if h["to_claim"] is None or h["to_claim"] > bound
    ]
    holder = inv.completions_by_holders(
        events,
        runs,
        list(outcome.entries("claimed")),
        list(outcome.entries("completed")),
        unlogged_ok=frozenset(killed),
    )
    false_lost = [
        f"task {e['task']}: {e['worker']} got ClaimLost though run {e['run_id']} completed"
        for e in outcome.entries(FALSE_CLAIM_LOST)
    ]
    false_lost += inv.refusals_after_reclaim(list(outcome.entries(CLAIM_LOST)), runs)
    kernel = [
        f"{e['worker']} {e['during']}: {e['error']}" for e in outcome.entries(KANBAN_ERROR)
    ] + [f"{e['worker']} stalled with {e['left']} tasks left" for e in outcome.entries(STALLED)]
    return [
        all_done(tasks, outcome.config.tasks, "1."),
        Check(
            "2. each task completed exactly once",
            not inv.completed_once(events, [t.id for t in tasks]),
            inv.sample(inv.completed_once(events, [t.id for t in tasks])),
        ),
        Check("3. every run closed with an outcome", not open_runs, inv.sample(open_runs)),
        Check(
            "4. board consistent: current_run_id iff one open run, claim_lock iff running"
            " (SQLite: PRAGMA integrity_check ok)",
            not board,
            inv.sample(board),
        ),
        replay_check(events, "5."),
        Check(
            "6. every completion came from its claim holder (a killed worker's may be unlogged)",
            not holder,
            inv.sample(holder),
        ),
        Check(
            f"7. workers were killed and every victim's lease healed within {bound:g} s",
            bool(outcome.kills) and not victims and not slow,
            "nobody was killed" if not outcome.kills else inv.sample(victims + slow),
        ),
        Check(
            "8. every ClaimLost refused a reclaimed claim, none a completion that landed",
            not false_lost,
            inv.sample(false_lost),
        ),
        Check(
            "9. no kernel error escaped; every surviving worker finished",
            not kernel and not outcome.casualties,
            "; ".join(
                [*outcome.casualties, inv.sample(kernel, 2)] if kernel else outcome.casualties
            ),
        ),
    ]


def integrity(session: Session) -> list[str]:
    """SQLite only: the file survived writers SIGKILLed mid-commit."""
    if session.get_bind().dialect.name != "sqlite":
        return []
    verdict = session.execute(text("PRAGMA integrity_check")).scalars().all()
    session.rollback()
    return [] if verdict == ["ok"] else [f"PRAGMA integrity_check: {'; '.join(verdict)}"]


def _by(entries: list[dict[str, Any]], key: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in entries:
        counts[str(entry[key])] = counts.get(str(entry[key]), 0) + 1
    return counts


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "n": len(values),
        "min": min(values),
        "median": round(statistics.median(values), 3),
        "max": max(values),
    }
