"""One network namespace of workers is cut off for longer than the lease.

Run by hand, as root (it creates network namespaces): ``python -m stress partition``.
The scenario creates three network namespaces, each joined to the host by a veth pair
with a private /30 of its own (10.213.N.0/30: host side .1, namespace side .2), and
starts a private PostgreSQL server (see :mod:`stress.pgserver`) listening on the three
host-side addresses; nothing routes between the namespaces, only to the host. Worker
``i`` joins namespace ``i % 3`` (``setns``) and reaches the server at its namespace's
host address, with TCP timeouts of a couple of seconds (``tcp_user_timeout``), so a
dead link fails a call instead of hanging it for minutes.

Workers claim with TTL_SECONDS, work, heartbeat, work and complete. When CUT_AT of the
tasks are done the parent takes namespace 0's link down (host side) for CUT_SECONDS,
well past the lease, then brings it back. Checks: every claim namespace 0 held at the
cut was reclaimed by another worker, in about the TTL (reported against it); its
workers' late heartbeats and completions were refused with ClaimLost and none of their
writes with those tokens landed; every task done exactly once. Everything it created
is removed at the end: namespaces (with their veths) and the server.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.orm import Session

import kanban_orm as kb

from .. import invariants as inv
from ..harness import DB_ERROR, DB_ERRORS, Check, Config, Outcome, WorkerContext, one_line
from ..pgserver import PrivateServer
from .mixed import CLAIM_LOST, KANBAN_ERROR, all_done, replay_check, unfinished

DESCRIPTION = (
    "(PostgreSQL, root, by hand) cut one of three network namespaces of workers off "
    "for longer than the lease: its tasks are reclaimed, its late writes get ClaimLost"
)
NAMESPACES = 3
TTL_SECONDS = 3.0
CUT_AT = 0.3
CUT_SECONDS = 3 * TTL_SECONDS
SUBNET = "10.213"
#: libpq options: a dead link fails a call within seconds instead of TCP's minutes.
TIMEOUTS = (
    "connect_timeout=2&tcp_user_timeout=2000&keepalives=1&keepalives_idle=1"
    "&keepalives_interval=1&keepalives_count=2"
)
#: After the cut, writes already at the server have committed by then.
SETTLE_SECONDS = 0.5
CLONE_NEWNET = 0x40000000
CUT, RESTORED = "cut", "restored"
_server: PrivateServer | None = None


def _names() -> list[tuple[str, str, str]]:
    """(namespace, host veth, namespace veth) per namespace, unique to this run."""
    tag = os.getpid() % 100000
    return [(f"kbpart{tag}n{i}", f"kbh{tag}n{i}", f"kbp{tag}n{i}") for i in range(NAMESPACES)]


def _host_address(i: int) -> str:
    return f"{SUBNET}.{i}.1"


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True, timeout=30)


def _cleanup(names: list[tuple[str, str, str]]) -> None:
    for namespace, host_veth, _ in names:
        with suppress(subprocess.CalledProcessError):
            _ip("link", "del", host_veth)  # deletes its peer too
        with suppress(subprocess.CalledProcessError):
            _ip("netns", "del", namespace)


@contextmanager
def database(db_url: str | None, keep: bool) -> Iterator[str]:
    """Three namespaces wired to the host and a private server listening on them."""
    global _server
    if db_url:
        raise kb.InvalidInput("the partition scenario starts a private server; it takes no --db")
    if os.geteuid() != 0:
        raise kb.InvalidInput("the partition scenario creates network namespaces: run as root")
    names = _names()
    try:
        for i, (namespace, host_veth, ns_veth) in enumerate(names):
            _ip("netns", "add", namespace)
            _ip("link", "add", host_veth, "type", "veth", "peer", "name", ns_veth)
            _ip("link", "set", ns_veth, "netns", namespace)
            _ip("addr", "add", f"{_host_address(i)}/30", "dev", host_veth)
            _ip("link", "set", host_veth, "up")
            inside = ("netns", "exec", namespace, "ip")
            _ip(*inside, "addr", "add", f"{SUBNET}.{i}.2/30", "dev", ns_veth)
            _ip(*inside, "link", "set", ns_veth, "up")
            _ip(*inside, "link", "set", "lo", "up")
        listen = ",".join(["127.0.0.1", *(_host_address(i) for i in range(NAMESPACES))])
        with PrivateServer(listen=listen, trust=(f"{SUBNET}.0.0/16",)) as server:
            kb.init_db(server.url)
            _server = server
            try:
                yield server.url
            finally:
                _server = None
                kb.dispose_engines()
    finally:
        _cleanup(names)


def setup(session: Session, config: Config) -> None:
    for i in range(config.tasks):
        kb.create_task(session, title=f"partition #{i}")


# -- in the parent ------------------------------------------------------------------------


class Disturber:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.host_veth = _names()[0][1]
        self.engine = sa.create_engine(config.db_url, poolclass=sa.pool.NullPool)
        self.phase = "before"
        self.cut_at = 0.0
        self.numbers: dict[str, Any] = {"ttl_s": TTL_SECONDS, "cut_s": CUT_SECONDS}

    def step(self) -> None:
        if self.phase == "before":
            with self.engine.connect() as conn:
                done = conn.execute(
                    select(sa.func.count()).where(kb.Task.status == kb.Status.DONE.value)
                ).scalar_one()
            if done >= CUT_AT * self.config.tasks:
                _ip("link", "set", self.host_veth, "down")
                self.cut_at = time.time()
                self.numbers["cut_at"] = self.cut_at
                self.phase = CUT
        elif self.phase == CUT and "held_at_cut" not in self.numbers:
            # A write that reached the server before the cut commits within moments;
            # what is still open after that is what the cut-off workers hold.
            if time.time() - self.cut_at >= SETTLE_SECONDS:
                self.numbers["held_at_cut"] = self._held()
        elif self.phase == CUT and time.time() - self.cut_at >= CUT_SECONDS:
            _ip("link", "set", self.host_veth, "up")
            self.numbers["restored_at"] = time.time()
            self.phase = RESTORED

    def _held(self) -> list[list[Any]]:
        """(task, run, token) of every claim namespace 0's workers held at the cut."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    kb.TaskRun.task_id, kb.TaskRun.id, kb.TaskRun.claim_lock, kb.TaskRun.claimer
                ).where(kb.TaskRun.outcome.is_(None))
            ).all()
        return [
            [r.task_id, r.id, r.claim_lock]
            for r in rows
            if int(r.claimer.rsplit("-", 1)[1]) % NAMESPACES == 0
        ]

    def close(self) -> None:
        if self.phase == CUT:
            _ip("link", "set", self.host_veth, "up")
        self.engine.dispose()
        kb.dispose_engines()


def disturber(config: Config) -> Disturber:
    return Disturber(config)


# -- in a worker --------------------------------------------------------------------------


def _join_namespace(namespace: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace} failed")
    finally:
        os.close(fd)


def work(worker: WorkerContext) -> None:
    # The namespaces are named after the parent's pid: this worker's parent.
    mine = worker.index % NAMESPACES
    _join_namespace(f"kbpart{os.getppid() % 100000}n{mine}")
    url = sa.make_url(worker.config.db_url).set(host=_host_address(mine))
    url = url.update_query_string(TIMEOUTS)
    engine = kb.create_engine(url, retry=kb.RetryPolicy(unavailable_seconds=5.0))
    session = kb.session_factory(engine)()
    try:
        while not worker.out_of_time():
            try:
                task = kb.claim_next(session, claimer=worker.name, ttl_seconds=TTL_SECONDS)
            except DB_ERRORS as error:
                worker.log(
                    DB_ERROR, during="claim", type=type(error).__name__, error=one_line(error)
                )
                time.sleep(0.2)
                continue
            if task is None:
                try:
                    if unfinished(session) == 0:
                        return
                except DB_ERRORS:
                    pass
                time.sleep(0.05)
                continue
            token = str(task.claim_lock)
            worker.log("claimed", task=task.id, run_id=task.current_run_id, claim_lock=token)
            _finish(worker, session, task.id, token, task.current_run_id)
    finally:
        session.close()
        engine.dispose()


def _fenced(worker: WorkerContext, op: str, call: Any, fields: dict[str, Any]) -> bool | None:
    """True: done; False: ClaimLost; None: a database error (the lease decides)."""
    try:
        call()
    except kb.ClaimLost as error:
        worker.log(CLAIM_LOST, op=op, error=str(error), **fields)
        return False
    except DB_ERRORS as error:
        worker.log(DB_ERROR, during=op, type=type(error).__name__, error=one_line(error), **fields)
        return None
    except kb.KanbanError as error:
        worker.log(KANBAN_ERROR, during=op, error=one_line(error), **fields)
        return False
    return True


def _finish(
    worker: WorkerContext, session: Session, task_id: int, token: str, run_id: int | None
) -> None:
    fields = {"task": task_id, "run_id": run_id, "claim_lock": token}
    worker.work_pause()
    beat = lambda: kb.heartbeat(  # noqa: E731
        session, task_id, claim_lock=token, ttl_seconds=TTL_SECONDS
    )
    if _fenced(worker, "heartbeat", beat, fields) is False:
        return
    worker.work_pause()
    complete = lambda: kb.complete_task(session, task_id, claim_lock=token)  # noqa: E731
    for _ in range(20):  # through the cut and past it: the late completion is refused
        done = _fenced(worker, "completed", complete, fields)
        if done:
            worker.log("completed", **fields)
            return
        if done is False:
            return
        time.sleep(0.5)


# -- invariants ---------------------------------------------------------------------------


def _epoch(moment: datetime) -> float:
    return moment.replace(tzinfo=UTC).timestamp()


def checks(outcome: Outcome, session: Session) -> list[Check]:
    board = inv.board_violations(session)
    events = inv.load_events(session)
    runs = inv.load_runs(session)
    tasks = session.execute(select(kb.Task.id, kb.Task.status)).all()
    session.rollback()
    numbers = outcome.numbers
    held = numbers.get("held_at_cut", [])
    cut_at = numbers.get("cut_at")
    rows = session.execute(
        select(kb.TaskEvent.run_id, kb.TaskEvent.kind, kb.TaskEvent.created_at).where(
            kb.TaskEvent.kind.in_(("reclaimed", "completed"))
        )
    ).all()
    session.rollback()
    by_run = {row.run_id: row for row in rows if row.kind == "reclaimed"}
    # A completion the server was already running when the link went down (a loaded
    # machine can take longer than SETTLE_SECONDS over it): its event's time (the
    # server's clock_timestamp()) is before the cut. Not a late write.
    landed_before = {
        row.run_id
        for row in rows
        if row.kind == "completed" and cut_at and _epoch(row.created_at) <= cut_at
    }
    reclaim_s = []
    not_reclaimed = []
    before = [entry for entry in held if entry[1] in landed_before]
    held = [entry for entry in held if entry[1] not in landed_before]
    for task_id, run_id, _token in held:
        run = runs.get(run_id)
        reclaim = by_run.get(run_id)
        if run is None or run.outcome != "reclaimed" or reclaim is None or cut_at is None:
            outcome_ = None if run is None else run.outcome
            not_reclaimed.append(f"task {task_id}: run {run_id} ended {outcome_}")
            continue
        reclaim_s.append(round(_epoch(reclaim.created_at) - cut_at, 2))
    tokens = {token for _, _, token in held}
    refused = [e for e in outcome.entries(CLAIM_LOST) if e["claim_lock"] in tokens]
    twice = inv.completed_once(events, [t.id for t in tasks])
    false_lost = inv.refusals_after_reclaim(list(outcome.entries(CLAIM_LOST)), runs)
    kernel = [f"{e['worker']} {e['during']}: {e['error']}" for e in outcome.entries(KANBAN_ERROR)]
    numbers.update(
        {
            "victim_claims": len(held),
            "completed_before_the_cut": len(before),
            "cut_to_reclaim_s": sorted(reclaim_s),
            "cut_to_reclaim_max_s": max(reclaim_s, default=None),
            "late_writes_refused": len(refused),
            "typed_errors": sum(1 for _ in outcome.entries(DB_ERROR)),
            "raw_exceptions": len(outcome.casualties),
        }
    )
    return [
        all_done(tasks, outcome.config.tasks, "1."),
        Check("2. each task completed exactly once", not twice, inv.sample(twice)),
        Check("3. board consistent", not board, inv.sample(board)),
        replay_check(events, "4."),
        Check(
            "5. the cut-off namespace held claims, and every one was reclaimed",
            bool(held) and not not_reclaimed,
            inv.sample(not_reclaimed) or f"{len(held)} claims; cut→reclaim {reclaim_s} s",
        ),
        Check(
            "6. its late writes were refused (ClaimLost); every ClaimLost was for a reclaimed run",
            bool(refused) and not false_lost,
            inv.sample(false_lost) or f"{len(refused)} refused",
        ),
        Check(
            "7. no raw driver error reached a worker; no other kernel error",
            not outcome.casualties and not kernel,
            "; ".join([*outcome.casualties, *kernel[:2]]),
        ),
    ]
