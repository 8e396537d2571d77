"""One event tailer per server: a thread follows the event log with
:func:`kanban_orm.list_events` (gap-free on every backend) and fans each new event out to
every open live stream, so a hundred browsers cost one query loop, not a hundred.

It keeps the latest events in memory; a stream resuming from an older id than those
(a browser back after a server restart, say) reads its gap from the database once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

import kanban_orm as kb

log = logging.getLogger(__name__)

BATCH = 500


@dataclass(frozen=True)
class Event:
    """What a browser is told of an event: enough to refetch the card it is about."""

    id: int
    task_id: int
    kind: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "task_id": self.task_id, "kind": self.kind}


def _event(row: kb.TaskEvent) -> Event:
    return Event(int(row.id), int(row.task_id), str(row.kind))


class Subscription:
    """An open stream's queue; the tailer puts lists of events on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[list[Event]] = asyncio.Queue()

    def push(self, events: list[Event]) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, events)


class EventTailer:
    def __init__(
        self, sessions: Callable[[], Session], *, interval: float = 0.1, keep: int = 10_000
    ) -> None:
        self._sessions = sessions
        self._interval = interval
        self._lock = threading.Lock()
        self._recent: deque[Event] = deque(maxlen=keep)
        self._base = 0  # every event with id > _base is in _recent or still to come
        self._position = 0
        self._subscribers: set[Subscription] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start following from the current end of the log (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            with self._sessions() as s:
                start = _last_id(s)
            self._base = self._position = start
            self._thread = threading.Thread(target=self._run, name="kanban-web-tailer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    @property
    def position(self) -> int:
        return self._position

    def subscribe(self, after_id: int) -> tuple[Subscription, list[Event] | None]:
        """Register a stream; return it and the events after ``after_id`` held in memory,
        or None when some of them are older than that: the caller reads those from the
        database (after registering, so nothing falls between the two)."""
        self.start()
        subscription = Subscription(asyncio.get_running_loop())
        with self._lock:
            self._subscribers.add(subscription)
            if after_id >= self._base:
                return subscription, [e for e in self._recent if e.id > after_id]
        return subscription, None

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)

    def _run(self) -> None:
        session = self._sessions()
        try:
            while not self._stop.is_set():
                try:
                    rows = kb.list_events(session, after_id=self._position, limit=BATCH)
                except kb.EventsPruned as pruned:
                    # The board shows the tables, not the log: a live view skips what a
                    # prune removed and goes on from there.
                    with self._lock:
                        self._position = pruned.pruned_through
                    continue
                except Exception:
                    # Database restarting, busy, unreachable: the live view must outlive
                    # it, so log and read again from the same position.
                    log.warning("event tail failed; retrying", exc_info=True)
                    session.close()
                    self._stop.wait(1.0)
                    continue
                if not rows:
                    self._stop.wait(self._interval)
                    continue
                events = [_event(row) for row in rows]
                with self._lock:
                    for event in events:
                        if len(self._recent) == self._recent.maxlen:
                            self._base = self._recent[0].id
                        self._recent.append(event)
                    self._position = events[-1].id
                    subscribers = list(self._subscribers)
                for subscription in subscribers:
                    try:
                        subscription.push(events)
                    except RuntimeError:  # its event loop has closed
                        self.unsubscribe(subscription)
        finally:
            session.close()


def _last_id(s: Session) -> int:
    return int(s.scalar(select(func.coalesce(func.max(kb.TaskEvent.id), 0))) or 0)


def backlog(s: Session, after_id: int) -> list[Event]:
    """Every event after ``after_id``, read from the database: for a stream resuming
    from before what the tailer holds in memory."""
    found: list[Event] = []
    position = after_id
    while True:
        try:
            rows = kb.list_events(s, after_id=position, limit=BATCH)
        except kb.EventsPruned as pruned:  # removed by a prune: go on after it
            position = pruned.pruned_through
            continue
        found.extend(_event(row) for row in rows)
        if len(rows) < BATCH:
            return found
        position = rows[-1].id
