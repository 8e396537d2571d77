"""Dependencies under load: a DAG built piece by piece while workers claim and finish it.

worker-0 is the creator: it builds the graph in small pieces, interleaved at random
(seeded) with short pauses, while the other workers claim (even ones with
``claim_next``, odd ones with ``claim_many``) and complete; when the graph is built the
creator works like the rest. The shapes, scaled by ``--tasks N`` (N=100 gives the
issue's: fan-out 50, fan-in 50, chains of 20, and two diamonds):

- an hourglass: a root, W children (fan-out W) and a sink waiting for all W (fan-in W).
  The creator holds the root (assigned to itself and claimed) while it adds the
  children, then completes it, so one completion promotes all W; the sink is created
  once some of those W are done, while the rest are being claimed and finished (a
  child created mid-finish).
- two chains of L: one grown with ``create_task(parents=[previous])``, often only once
  the previous task is done (so it must be ready at once), one with
  ``create_task(triage=True)``, ``link_tasks(previous, new)`` and ``specify_task(new)``,
  often once the previous task is running (specify races its completion).
- diamonds top -> left, right -> bottom; the bottom is created with both parents, or
  (odd diamonds) once left is done, right is added and the bottom is created with
  ``[left]`` alone and linked to right straight after: a claim racing the link either
  wins (the link lands on a claimed child, which it never gated) or loses (the bottom
  goes back to todo and waits for right).

The checks replay the event log in id order. That order is safe for "was the parent
done when the child was claimed": a claim reads committed parent state, so a parent's
``completed`` event (inserted before its commit) has a lower id than the ``claimed``
event of any claim that saw it done.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

import kanban_orm as kb

from ..harness import (
    DB_ERROR,
    DB_ERRORS,
    Check,
    Config,
    Outcome,
    StallWatch,
    WorkerContext,
    one_line,
)
from ..invariants import board_violations

DESCRIPTION = "a DAG (fan-out, fan-in, diamonds, chains) built while workers claim and complete"

#: Everything lives in this tenant; workers claim the creator's graph by this assignee,
#: and the tasks the creator holds itself are assigned to CREATOR so nobody else can.
TENANT, ASSIGNEE, CREATOR = "deps", "dag", "creator"
CHAINS = 2
#: Children the creator adds to the hourglass per piece, and its pause between pieces.
PIECE = (3, 8)
BUILD_PAUSE_MS = (0.0, 4.0)
#: How many pieces a builder waits for a parent to finish before going on regardless.
WAIT_PIECES = 40
#: A worker with nothing to claim sleeps this long before looking again.
IDLE_MS = (2.0, 10.0)
#: No new event on the board for this long: the run has stalled; workers give up.
STALL_SECONDS = 15.0
#: Batch size of the claim_many workers.
BATCH = (2, 4)

#: Log kinds: the creator's shapes and failures, a claim taken away, other kernel
#: errors, and a worker that stopped because the board could make no more progress.
SHAPE, BUILT, BUILD_ERROR = "shape", "built", "build_error"
CLAIM_LOST, KANBAN_ERROR, STUCK, STALLED = "claim_lost", "kanban_error", "stuck", "stalled"
FINISHED = ("done", "archived")


@dataclass(frozen=True)
class Plan:
    """The graph's dimensions for ``--tasks N``: ``total`` is N for N >= 18; a smaller N
    gets the smallest graph (fan-out 2, chains of 2 or 3, two diamonds: 16-18 tasks)."""

    width: int
    chain_length: int
    diamonds: int

    @property
    def total(self) -> int:
        return 2 + self.width + CHAINS * self.chain_length + 4 * self.diamonds

    @property
    def links(self) -> int:
        return 2 * self.width + CHAINS * (self.chain_length - 1) + 4 * self.diamonds


def plan(tasks: int) -> Plan:
    length = max(2, tasks // 5)
    diamonds = max(2, tasks // 50)
    width = max(2, tasks - 2 - CHAINS * length - 4 * diamonds)
    return Plan(width=width, chain_length=length, diamonds=diamonds)


def setup(session: Session, config: Config) -> None:
    """Nothing up front: the graph is built while the workers run."""


# -- the workers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    task: int
    claim_lock: str
    run_id: int | None


def work(worker: WorkerContext) -> None:
    session = kb.connect(worker.config.db_url)
    try:
        if worker.index == 0:
            build(worker, session)
        drain(worker, session, plan(worker.config.tasks).total)
    finally:
        session.close()


def drain(worker: WorkerContext, session: Session, expected: int) -> None:
    """Claim and complete until every planned task is done (or the board cannot move)."""
    progress = StallWatch(STALL_SECONDS)
    while not worker.out_of_time():
        held = claim(worker, session)
        for claimed in held:
            worker.work_pause()
            finish(worker, session, claimed)
        if held:
            continue
        try:
            counts, newest = board(session)
        except DB_ERRORS as error:
            worker.log(DB_ERROR, task=None, during="board poll", error=one_line(error))
            counts, newest = Counter(), progress.last
        if counts["done"] >= expected:
            return
        if _stuck(counts, expected):
            try:
                todo = list(session.scalars(WAITING).all())
            except DB_ERRORS:
                todo = []
            session.rollback()
            worker.log(STUCK, todo=todo, counts=dict(counts))
            return
        if progress.stalled(newest):
            worker.log(STALLED, counts=dict(counts), seconds=STALL_SECONDS)
            return
        time.sleep(worker.random.uniform(*IDLE_MS) / 1000)


WAITING = select(kb.Task.id).where(kb.Task.tenant == TENANT, kb.Task.status == "todo")


def _stuck(counts: Counter[str], expected: int) -> bool:
    """Every task exists, none is ready, running or in triage, yet some wait in todo.

    Then some waiting task has every parent finished (follow unfinished parents up the
    DAG: they are all waiting too, and it has a top), so a promotion was missed. One
    statement's counts are one snapshot, so no in-flight completion can fake this.
    """
    busy = counts["ready"] + counts["running"] + counts["triage"]
    return counts.total() >= expected and counts["todo"] > 0 and busy == 0


def board(session: Session) -> tuple[Counter[str], int]:
    try:
        counts = Counter(
            {
                status: n
                for status, n in session.execute(
                    select(kb.Task.status, func.count())
                    .where(kb.Task.tenant == TENANT)
                    .group_by(kb.Task.status)
                )
            }
        )
        newest = session.scalar(select(func.max(kb.TaskEvent.id))) or 0
    finally:
        session.rollback()  # end the read: no snapshot held between polls
    return counts, newest


def claim(worker: WorkerContext, session: Session) -> list[Held]:
    batch = worker.index % 2 == 1
    via = "claim_many" if batch else "claim_next"
    try:
        if batch:
            tasks = kb.claim_many(
                session,
                claimer=worker.name,
                limit=worker.random.randint(*BATCH),
                assignee=ASSIGNEE,
                tenant=TENANT,
            )
        else:
            one = kb.claim_next(session, claimer=worker.name, assignee=ASSIGNEE, tenant=TENANT)
            tasks = [one] if one is not None else []
    except DB_ERRORS as error:
        session.rollback()
        worker.log(DB_ERROR, task=None, during=via, error=one_line(error))
        return []
    except kb.KanbanError as error:
        session.rollback()
        worker.log(KANBAN_ERROR, task=None, during=via, error=one_line(error))
        return []
    # Read the tokens now: the Task objects are live and a later call may refresh them.
    held = [Held(t.id, t.claim_lock or "", t.current_run_id) for t in tasks]
    for h in held:
        worker.log("claimed", task=h.task, run_id=h.run_id, claim_lock=h.claim_lock, via=via)
    return held


def finish(worker: WorkerContext, session: Session, held: Held) -> bool:
    try:
        kb.complete_task(
            session,
            held.task,
            claim_lock=held.claim_lock,
            result=f"done by {worker.name}",
            metadata={"worker": worker.name, "run_id": held.run_id},
        )
    except kb.ClaimLost as error:  # nobody reclaims in this scenario: always a finding
        session.rollback()
        worker.log(CLAIM_LOST, task=held.task, claim_lock=held.claim_lock, error=one_line(error))
        return False
    except DB_ERRORS as error:
        session.rollback()
        worker.log(DB_ERROR, task=held.task, during="complete", error=one_line(error))
        return False
    except kb.KanbanError as error:
        session.rollback()
        worker.log(KANBAN_ERROR, task=held.task, during="complete", error=one_line(error))
        return False
    worker.log("completed", task=held.task, run_id=held.run_id, claim_lock=held.claim_lock)
    return True


# -- the creator ------------------------------------------------------------------------


class BuildFailed(Exception):
    """A builder could not go on (logged, and that shape is left unfinished)."""


Piece = Iterator[None]


@dataclass
class Builder:
    worker: WorkerContext
    session: Session
    edges: list[tuple[int, int]] = field(default_factory=list)

    def create(self, title: str, *, parents: Sequence[int] = (), **kw: Any) -> int:
        kw.setdefault("assignee", ASSIGNEE)
        task_id = kb.create_task(
            self.session, title=title, tenant=TENANT, parents=parents, created_by="creator", **kw
        )
        self.edges += [(p, task_id) for p in parents]
        return task_id

    def link(self, parent: int, child: int) -> None:
        kb.link_tasks(self.session, parent=parent, child=child)
        self.edges.append((parent, child))

    def finished(self, task_id: int) -> bool:
        try:
            return self.session.scalar(select(kb.Task.status).where(kb.Task.id == task_id)) in (
                FINISHED
            )
        finally:
            self.session.rollback()

    def count(self, ids: Sequence[int], statuses: Sequence[str]) -> int:
        try:
            found = self.session.scalar(
                select(func.count()).where(kb.Task.id.in_(ids), kb.Task.status.in_(statuses))
            )
            return int(found or 0)
        finally:
            self.session.rollback()

    def wait_until(self, ids: Sequence[int], statuses: Sequence[str], at_least: int = 1) -> Piece:
        """Yield (let other builders run) until ``at_least`` of ``ids`` are in one of
        ``statuses``, for a while (then go on regardless)."""
        for _ in range(WAIT_PIECES):
            if self.count(ids, statuses) >= at_least:
                return
            yield

    def shape(self, name: str, tasks: list[int], **fields: Any) -> None:
        edges, self.edges = self.edges, []
        self.worker.log(SHAPE, shape=name, tasks=tasks, edges=edges, **fields)


def build(worker: WorkerContext, session: Session) -> None:
    """Run every shape's builder, a piece at a time, in a seeded random interleaving."""
    p = plan(worker.config.tasks)
    began = time.monotonic()
    builders: list[tuple[str, Builder, Piece]] = []

    def add(name: str, make: Callable[[Builder], Piece]) -> None:
        b = Builder(worker, session)
        builders.append((name, b, make(b)))

    add("hourglass", lambda b: hourglass(b, p.width))
    add("chain 0", lambda b: chain_by_parents(b, 0, p.chain_length))
    add("chain 1", lambda b: chain_by_links(b, 1, p.chain_length))
    for i in range(p.diamonds):
        add(f"diamond {i}", partial(diamond, index=i))
    while builders:
        entry = worker.random.choice(builders)
        name, b, piece = entry
        try:
            next(piece)
        except StopIteration:
            builders.remove(entry)
        except (BuildFailed, kb.KanbanError, *DB_ERRORS) as error:
            session.rollback()
            worker.log(BUILD_ERROR, shape=name, error=one_line(error), edges=b.edges)
            builders.remove(entry)
        if worker.out_of_time():
            worker.log(BUILD_ERROR, shape="all", error="out of time while building", edges=[])
            return
        time.sleep(worker.random.uniform(*BUILD_PAUSE_MS) / 1000)
    worker.log(BUILT, seconds=round(time.monotonic() - began, 3))


def hourglass(b: Builder, width: int) -> Piece:
    root = b.create("hourglass root", assignee=CREATOR)
    task = kb.claim_task(b.session, root, claimer=b.worker.name)
    if task is None or task.claim_lock is None:
        raise BuildFailed(f"the creator could not claim its own hourglass root {root}")
    held = Held(root, task.claim_lock, task.current_run_id)
    b.worker.log(
        "claimed", task=root, run_id=held.run_id, claim_lock=held.claim_lock, via="claim_task"
    )
    yield
    middle: list[int] = []
    while len(middle) < width:
        for _ in range(min(b.worker.random.randint(*PIECE), width - len(middle))):
            middle.append(b.create(f"hourglass child {len(middle)}", parents=[root]))
        yield
    if not finish(b.worker, b.session, held):
        raise BuildFailed(f"the creator could not complete its hourglass root {root}")
    yield
    # The sink comes while its parents finish: after some of them, often most.
    yield from b.wait_until(middle, FINISHED, at_least=b.worker.random.randint(1, width))
    sink = b.create("hourglass sink", parents=middle)
    b.shape("hourglass", [root, *middle, sink], root=root, sink=sink, width=width)


def chain_by_parents(b: Builder, index: int, length: int) -> Piece:
    tasks: list[int] = []
    for i in range(length):
        if tasks and b.worker.random.random() < 0.5:
            yield from b.wait_until(tasks[-1:], FINISHED)
        tasks.append(b.create(f"chain {index} link {i}", parents=tasks[-1:]))
        yield
    b.shape("chain", tasks, mode="parents", length=length)


def chain_by_links(b: Builder, index: int, length: int) -> Piece:
    tasks: list[int] = []
    for i in range(length):
        new = b.create(f"chain {index} link {i}", triage=True)
        yield
        if tasks:
            b.link(tasks[-1], new)
            yield
            if b.worker.random.random() < 0.5:
                # Specify while the parent runs: the move out of triage races its completion.
                yield from b.wait_until(tasks[-1:], ("running", *FINISHED))
        kb.specify_task(b.session, new)
        tasks.append(new)
        yield
    b.shape("chain", tasks, mode="link", length=length)


def diamond(b: Builder, index: int) -> Piece:
    top = b.create(f"diamond {index} top")
    yield
    left = b.create(f"diamond {index} left", parents=[top])
    if index % 2 == 0:
        right = b.create(f"diamond {index} right", parents=[top])
        yield
        bottom = b.create(f"diamond {index} bottom", parents=[left, right])
        mode = "parents"
    else:
        # Once left is done: a fresh right, and a bottom created with [left] alone (so
        # ready) and linked to right at once. A claim of the bottom races the link.
        yield from b.wait_until([left], FINISHED)
        right = b.create(f"diamond {index} right", parents=[top])
        bottom = b.create(f"diamond {index} bottom", parents=[left])
        b.link(right, bottom)
        mode = "late link"
    b.shape("diamond", [top, left, right, bottom], mode=mode)


# -- invariants -------------------------------------------------------------------------

Entry = dict[str, Any]
NEVER = float("inf")


@dataclass
class Replay:
    """The event log replayed in id order: each task's parents and status over time."""

    done_at: dict[int, float]  # task -> id of its first completed/archived event
    created_at: dict[int, int] = field(default_factory=dict)
    claimed_at: dict[int, int] = field(default_factory=dict)
    early_claims: list[str] = field(default_factory=list)
    wrong_state: list[str] = field(default_factory=list)
    status: dict[int, str] = field(default_factory=dict)
    moved: dict[int, tuple[str, int]] = field(default_factory=dict)  # last event that set it
    parents: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    promoted_by: Counter[int] = field(default_factory=Counter)
    ready_at_creation: int = 0  # created with parents, all already done
    edges_onto: Counter[str] = field(default_factory=Counter)  # parent's state at link time
    sent_back: int = 0  # links that made a ready child wait again
    late_links: int = 0  # links that landed on a child already claimed

    def state_of(self, task: int, at: int) -> str:
        if self.done_at.get(task, NEVER) < at:
            return "done"
        if self.claimed_at.get(task, at) < at:
            return "running"
        return "waiting or ready"

    def unfinished(self, task: int, at: int) -> list[int]:
        return [p for p in self.parents[task] if self.done_at.get(p, NEVER) > at]


def replay(events: Sequence[Any]) -> Replay:
    r = Replay(
        done_at={e.task_id: e.id for e in reversed(events) if e.kind in ("completed", "archived")}
    )
    for e in events:
        t, payload = e.task_id, e.payload or {}
        before = r.status.get(t)
        if e.kind == "created":
            r.created_at[t] = e.id
            new = list(payload.get("parents") or [])
            r.edges_onto.update(r.state_of(p, e.id) for p in new)
            r.parents[t] += new
            waiting = r.unfinished(t, e.id)
            status = payload.get("status")
            expected = "triage" if status == "triage" else ("todo" if waiting else "ready")
            if status != expected:
                r.wrong_state.append(_decided_wrong(t, "created", e.id, payload, waiting))
            r.ready_at_creation += bool(new) and status == "ready"
            r.status[t] = str(status)
        elif e.kind == "linked":
            parent = int(payload["parent_id"])
            r.edges_onto[r.state_of(parent, e.id)] += 1
            r.parents[t].append(parent)
            if r.status.get(t) in ("running", "done"):
                r.late_links += 1
            elif r.status.get(t) == "ready" and r.done_at.get(parent, NEVER) > e.id:
                r.status[t] = "todo"
                r.sent_back += 1
        elif e.kind == "specified":
            waiting = r.unfinished(t, e.id)
            expected = "todo" if waiting else "ready"
            if payload.get("status") != expected:
                r.wrong_state.append(_decided_wrong(t, "specified", e.id, payload, waiting))
            r.status[t] = str(payload.get("status"))
        elif e.kind == "promoted":
            r.promoted_by[int(payload.get("parent_id", 0))] += 1
            waiting = r.unfinished(t, e.id)
            if r.status.get(t) != "todo" or waiting:
                r.wrong_state.append(
                    f"task {t} promoted (event {e.id}) from {r.status.get(t)}"
                    + (f" with parents {waiting} unfinished" if waiting else "")
                )
            r.status[t] = "ready"
        elif e.kind == "claimed":
            r.claimed_at.setdefault(t, e.id)
            r.early_claims += [
                f"task {t} claimed (event {e.id}) before parent {p} finished "
                + (f"(event {r.done_at[p]:.0f})" if p in r.done_at else "(never)")
                for p in r.unfinished(t, e.id)
            ]
            if r.status.get(t) != "ready":
                r.wrong_state.append(f"task {t} claimed (event {e.id}) while {r.status.get(t)}")
            r.status[t] = "running"
        elif e.kind == "completed":
            if r.status.get(t) != "running":
                r.wrong_state.append(f"task {t} completed (event {e.id}) while {r.status.get(t)}")
            r.status[t] = "done"
        else:
            r.wrong_state.append(f"task {t}: unexpected {e.kind} event {e.id} in this scenario")
        if r.status.get(t) != before:
            r.moved[t] = (e.kind, e.id)
    end = max((e.id for e in events), default=0) + 1
    r.wrong_state += [
        f"task {t} still waits in todo (since {r.moved[t][0]} event {r.moved[t][1]}) though "
        f"every parent finished (the last at event "
        f"{max(r.done_at[p] for p in r.parents[t]):.0f}): a promotion was missed"
        for t, s in r.status.items()
        if s == "todo" and r.parents[t] and not r.unfinished(t, end)
    ]
    return r


def _decided_wrong(
    task: int, verb: str, event: int, payload: dict[str, Any], waiting: list[int]
) -> str:
    why = f"parents {waiting} were unfinished" if waiting else "every parent was done"
    return f"task {task} {verb} {payload.get('status')} (event {event}) though {why}"


def checks(outcome: Outcome, session: Session) -> list[Check]:
    events = session.execute(
        select(
            kb.TaskEvent.id,
            kb.TaskEvent.task_id,
            kb.TaskEvent.run_id,
            kb.TaskEvent.kind,
            kb.TaskEvent.payload,
        ).order_by(kb.TaskEvent.id)
    ).all()
    tasks = session.execute(
        select(kb.Task.id, kb.Task.status, kb.Task.claim_lock, kb.Task.current_run_id)
    ).all()
    runs = session.execute(
        select(
            kb.TaskRun.id,
            kb.TaskRun.task_id,
            kb.TaskRun.claimer,
            kb.TaskRun.claim_lock,
            kb.TaskRun.ended_at,
            kb.TaskRun.outcome,
        )
    ).all()
    links = {
        tuple(row) for row in session.execute(select(kb.TaskLink.parent_id, kb.TaskLink.child_id))
    }
    session.rollback()
    r = replay(events)
    return [
        graph_built(outcome, r, events, links, len(tasks)),
        no_claim_before_parents(r),
        claims_from_ready(r),
        done_exactly_once(outcome, tasks, events),
        runs_closed(outcome, runs),
        board_consistent(session),
        no_escaped_errors(outcome),
    ]


def _sample(items: list[str], n: int = 3) -> str:
    shown = "; ".join(items[:n])
    return shown + (f" … ({len(items)} in all)" if len(items) > n else "")


def graph_built(
    outcome: Outcome, r: Replay, events: Sequence[Any], links: set[Any], total: int
) -> Check:
    """The creator built every planned shape, while the workers were already working,
    the links table holds exactly the edges it made, and the root's completion promoted
    all of the fan-out at once."""
    p = plan(outcome.config.tasks)
    shapes = list(outcome.entries(SHAPE))
    problems = [f"{e['shape']} not built: {e['error']}" for e in outcome.entries(BUILD_ERROR)]
    made = {
        (int(a), int(b)) for e in [*shapes, *outcome.entries(BUILD_ERROR)] for a, b in e["edges"]
    }
    if made != links:
        problems.append(
            f"links table differs from the edges made: {len(links - made)} extra, "
            f"{len(made - links)} missing"
        )
    if (total, len(links)) != (p.total, p.links):
        problems.append(f"{total} tasks and {len(links)} links, {p.total} and {p.links} planned")
    kinds = Counter(e["shape"] for e in shapes)
    expected = {"hourglass": 1, "chain": CHAINS, "diamond": p.diamonds}
    if kinds != expected:
        problems.append(f"shapes built {dict(kinds)}, planned {expected}")
    hourglass = next((e for e in shapes if e["shape"] == "hourglass"), None)
    fanned = r.promoted_by[hourglass["root"]] if hourglass else 0
    if hourglass and fanned != p.width:
        problems.append(f"the root's completion promoted {fanned} of its {p.width} children")
    sink_done = (
        sum(
            r.done_at.get(m, NEVER) < r.created_at[hourglass["sink"]]
            for m in r.parents[hourglass["sink"]]
        )
        if hourglass and hourglass["sink"] in r.created_at
        else 0
    )
    first_claim = min(r.claimed_at.values(), default=None)
    last_create = max((e.id for e in events if e.kind == "created"), default=None)
    if first_claim is None or last_create is None or last_create < first_claim:
        problems.append("no task was created after the first claim: not built while running")
    onto = ", ".join(f"{n} onto {state} parents" for state, n in sorted(r.edges_onto.items()))
    summary = (
        f"fan-out 1→{p.width} ({fanned} promoted by one completion), fan-in {p.width}→1 "
        f"(sink created with {sink_done} of its parents done), "
        f"{kinds['diamond']} diamonds, {kinds['chain']} chains of {p.chain_length}; "
        f"{total} tasks, {len(links)} links ({onto}); {r.ready_at_creation} created ready "
        f"with parents already done; late links: {r.sent_back} sent a ready child back to "
        f"todo, {r.late_links} landed on a child already claimed"
    )
    detail = _sample(problems) + " — " + summary if problems else summary
    return Check("1. the DAG was built while workers ran, as planned", not problems, detail)


def no_claim_before_parents(r: Replay) -> Check:
    """Event log: every parent linked before a claim has its completed event before it."""
    return Check(
        "2. no task claimed while a parent was unfinished",
        not r.early_claims,
        _sample(r.early_claims),
    )


def claims_from_ready(r: Replay) -> Check:
    """Replay: created/specified ready iff every parent was done, promoted only from todo
    with every parent done, claimed only when ready, completed only when running."""
    return Check(
        "3. claimed only when ready; ready exactly when every parent was done",
        not r.wrong_state,
        _sample(r.wrong_state),
    )


def done_exactly_once(outcome: Outcome, tasks: Sequence[Any], events: Sequence[Any]) -> Check:
    """Database and logs: every task done and released, one claimed and one completed
    event each, each completion logged once by a worker."""
    # First, what the workers saw: no task could ever move again.
    stuck = list(outcome.entries(STUCK))
    todo = sorted({t for e in stuck for t in e["todo"]})
    problems = (
        [
            f"the board got stuck with {len(todo)} tasks in todo for good (first {todo[0]}), "
            f"seen by {', '.join(sorted(e['worker'] for e in stuck))}"
        ]
        if todo
        else []
    )
    problems += [
        f"task {t.id} status={t.status} claim_lock={t.claim_lock} current_run_id={t.current_run_id}"
        for t in tasks
        if t.status != "done" or t.claim_lock is not None or t.current_run_id is not None
    ]
    per_kind = {
        kind: Counter(e.task_id for e in events if e.kind == kind)
        for kind in ("claimed", "completed")
    }
    for t in tasks:
        for kind, seen in per_kind.items():
            if seen[t.id] != 1:
                problems.append(f"task {t.id} has {seen[t.id]} {kind} events")
    logged = Counter(e["task"] for e in outcome.entries("completed"))
    problems += [f"task {t} completion logged {n} times" for t, n in logged.items() if n > 1]
    if len(logged) != len(tasks):
        problems.append(f"{len(logged)} completions logged for {len(tasks)} tasks")
    via = Counter(e.get("via") for e in outcome.entries("claimed"))
    mix = ", ".join(f"{n} by {how}" for how, n in sorted(via.items(), key=lambda kv: -kv[1]))
    detail = _sample(problems) if problems else f"{len(tasks)} tasks; claims: {mix}"
    return Check("4. every task done exactly once", not problems, detail)


def runs_closed(outcome: Outcome, runs: Sequence[Any]) -> Check:
    """Each logged claim made one run, closed as ``completed``, by the claim holder."""
    claims = list(outcome.entries("claimed"))
    held = {(c["task"], c["worker"], c["claim_lock"]) for c in claims}
    logged = {(c["run_id"], c["claim_lock"], c["worker"]) for c in claims}
    problems = []
    if len(runs) != len(claims):
        problems.append(f"{len(runs)} runs for {len(claims)} logged claims")
    problems += [
        f"run {r.id} (task {r.task_id}, {r.claimer}) matches no logged claim"
        for r in runs
        if (r.id, r.claim_lock, r.claimer) not in logged
    ]
    problems += [
        f"run {r.id} (task {r.task_id}) ended={r.ended_at} outcome={r.outcome}"
        for r in runs
        if r.ended_at is None or r.outcome != "completed"
    ]
    problems += [
        f"task {c['task']} completed by {c['worker']} without holding its claim"
        for c in outcome.entries("completed")
        if (c["task"], c["worker"], c["claim_lock"]) not in held
    ]
    problems += [
        f"task {e['task']}: {e['worker']}'s completion refused (ClaimLost)"
        for e in outcome.entries(CLAIM_LOST)
    ]
    return Check("5. every run closed by its holder's completion", not problems, _sample(problems))


def board_consistent(session: Session) -> Check:
    """The schema's invariants at rest (stress/invariants.py, shared with the tests)."""
    problems = board_violations(session)
    return Check("6. board invariants hold", not problems, _sample(problems))


def no_escaped_errors(outcome: Outcome) -> Check:
    """No database or kernel error reached a worker, no worker gave up on a stalled
    board, and every worker ended cleanly (casualties are all named)."""
    errors = [
        f"{e['worker']} {e['kind']} during {e['during']}"
        + (f" of task {e['task']}" if e["task"] is not None else "")
        + f": {e['error']}"
        for e in outcome.entries()
        if e["kind"] in (DB_ERROR, KANBAN_ERROR)
    ]
    errors += [
        f"{e['worker']} saw no new event for {e['seconds']:g} s and gave up ({e['counts']})"
        for e in outcome.entries(STALLED)
    ]
    detail = "; ".join([*outcome.casualties, _sample(errors, 2)] if errors else outcome.casualties)
    return Check(
        "7. zero lock errors escaped; every worker finished",
        not errors and not outcome.casualties,
        detail,
    )
