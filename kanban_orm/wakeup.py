"""Waking an idle waiter when the board changes, instead of polling it.

Each backend gives a :class:`~kanban_orm.backends.base.ChangeSignal`: on PostgreSQL a
connection that LISTENs for the NOTIFY the database sends at the commit of every move
into ``ready`` (and of every event), on SQLite ``PRAGMA data_version`` on a held
connection every few milliseconds, on MariaDB/MySQL the newest event id, polled. A
:class:`Wakeup` runs one signal per process, database and topic in a daemon thread,
shared by every waiter (a Worker's slots, :func:`wait_for_ready`, ``events --follow``),
and counts the changes it has seen.

A waiter never misses a change that happens while it looks: it notes the count
(:meth:`Wakeup.mark`) *before* its claim or read, and :meth:`Wakeup.wait` returns at
once if the count moved since. A wake-up is broad (any tenant, any assignee; on SQLite
any commit): the claim or read that follows decides. A lost notification (the
connection dropped, an id committed out of order) is recovered by the waiter's safety
poll, the timeout it passes to :meth:`Wakeup.wait`; a reconnected signal also counts as
a change, since something may have happened while it was away.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from . import backends, db
from . import queries as q
from . import validation as check
from .backends.base import EVENTS, READY, ChangeSignal
from .errors import InvalidInput

log = logging.getLogger("kanban_orm.wakeup")

__all__ = ["EVENTS", "READY", "Wakeup", "wait_for_ready", "watch"]

#: How long the watching thread blocks in one call of the signal: the bound on how late
#: it notices that its last waiter has gone.
SIGNAL_SLICE_SECONDS = 1.0
#: How often a wait given a ``stop`` event looks at it.
STOP_CHECK_SECONDS = 0.1
#: The reconnect backoff of a signal whose connection failed: from the first to the last.
RECONNECT_SECONDS = (0.1, 5.0)
#: The safety poll of :func:`wait_for_ready`: a look at least this often, for a
#: ``run_at`` that came due and for a notification lost.
DEFAULT_POLL_SECONDS = 5.0


class Wakeup:
    """Changes of one topic on one database, seen by one thread, for many waiters.

    Get one with :func:`watch` and give it back with :meth:`release`; the thread stops
    when the last user has released it.
    """

    def __init__(self, engine: Engine, topic: str) -> None:
        self.engine = engine
        self.topic = topic
        self._changed = threading.Condition()
        self._count = 0
        self._users = 0
        self._waiting = 0
        self._thread: threading.Thread | None = None

    # -- the waiters' side ----------------------------------------------------------

    def mark(self) -> int:
        """The number of changes seen so far: take it before the claim or read that a
        later :meth:`wait` follows."""
        with self._changed:
            return self._count

    def wait(self, seen: int, timeout: float, stop: threading.Event | None = None) -> bool:
        """Block until a change after ``seen`` (:meth:`mark`), ``timeout`` seconds or
        ``stop`` is set; True for a change."""
        deadline = time.monotonic() + timeout
        with self._changed:
            self._waiting += 1
            try:
                while self._count == seen:
                    left = deadline - time.monotonic()
                    if left <= 0 or (stop is not None and stop.is_set()):
                        return False
                    self._changed.wait(left if stop is None else min(left, STOP_CHECK_SECONDS))
                return True
            finally:
                self._waiting -= 1

    @property
    def waiting(self) -> int:
        """How many threads are in :meth:`wait` now (for tests and monitoring)."""
        with self._changed:
            return self._waiting

    def release(self) -> None:
        """Give back what :func:`watch` gave; the last user's release stops the thread."""
        with _registry_lock:
            self._users -= 1
            if self._users == 0:
                _registry.pop(_key(self.engine, self.topic), None)

    # -- the watching thread --------------------------------------------------------

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._watch, name=f"kanban-wakeup-{self.topic}", daemon=True
        )
        self._thread.start()

    def _changed_now(self) -> None:
        with self._changed:
            self._count += 1
            self._changed.notify_all()

    def _in_use(self) -> bool:
        with _registry_lock:
            return self._users > 0

    def _watch(self) -> None:
        delay = RECONNECT_SECONDS[0]
        while self._in_use():
            signal: ChangeSignal | None = None
            try:
                signal = backends.of(self.engine).change_signal(self.engine, self.topic)
                if signal is None:
                    return  # nothing to watch: waiters wake at their safety poll
                # Something may have changed while no signal was watching.
                self._changed_now()
                delay = RECONNECT_SECONDS[0]
                while self._in_use():
                    if signal.wait(SIGNAL_SLICE_SECONDS):
                        self._changed_now()
            except Exception as error:  # the connection failed: wait, open another
                log.debug("wake-up signal (%s) failed: %r; reconnecting", self.topic, error)
                time.sleep(delay)
                delay = min(RECONNECT_SECONDS[1], delay * 2)
            finally:
                if signal is not None:
                    _close_quietly(signal)


def _close_quietly(signal: ChangeSignal) -> None:
    try:
        signal.close()
    except Exception as error:  # closing a connection that is gone
        log.debug("closing a wake-up signal failed: %r", error)


_registry: dict[tuple[int, str, str], Wakeup] = {}
_registry_lock = threading.Lock()


def _key(engine: Engine, topic: str) -> tuple[int, str, str]:
    # By process, so a forked child starts its own thread; by URL, so two engines on
    # one database share a connection.
    return (os.getpid(), engine.url.render_as_string(hide_password=False), topic)


def watch(bind: Session | Engine | Connection, topic: str = READY) -> Wakeup:
    """This process's :class:`Wakeup` for ``topic`` (:data:`READY` or :data:`EVENTS`)
    on the database of ``bind``, started on first use; :meth:`Wakeup.release` it."""
    if topic not in (READY, EVENTS):
        raise InvalidInput(f"topic must be {READY!r} or {EVENTS!r}, not {topic!r}")
    engine = _engine_of(bind)
    with _registry_lock:
        wakeup = _registry.get(_key(engine, topic))
        if wakeup is None:
            wakeup = _registry[_key(engine, topic)] = Wakeup(engine, topic)
        wakeup._users += 1
        if wakeup._thread is None:
            wakeup._start()
        return wakeup


def _engine_of(bind: Session | Engine | Connection) -> Engine:
    if isinstance(bind, Session):
        bind = bind.get_bind()
    return bind.engine if isinstance(bind, Connection) else bind


def wait_limits(timeout: object, poll_seconds: object) -> tuple[float | None, float]:
    """wait_for_ready's ``timeout`` (None: no limit) and ``poll_seconds``, checked."""
    limit = None if timeout is None else check.number(timeout, "timeout", infinity=True)
    poll = check.number(poll_seconds, "poll_seconds")
    if (limit is not None and limit < 0) or not poll > 0:
        raise InvalidInput("timeout must be >= 0 and poll_seconds > 0")
    return limit, poll


def wait_for_ready(
    bind: Session | Engine | str | None = None,
    *,
    timeout: float | None = None,
    assignee: str | None = None,
    tenant: str | None = None,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
) -> bool:
    """Wait until a task is claimable, within the filters a claim would use; True then,
    False once ``timeout`` seconds (None: no limit) have passed without one.

    ``bind`` is a Session, an Engine, a database URL or None (this process's engine for
    the default URL). Claimable means what :func:`~kanban_orm.claim_next` with the same
    ``assignee`` and ``tenant`` would take: a ready task, unclaimed, due, whose parents
    are finished, or an expired lease. True is a hint, not a reservation: another
    claimer may take the task first, so claim, and wait again on None.

    Between looks it sleeps on the process's shared wake-up (see :mod:`kanban_orm.wakeup`),
    and looks again at least every ``poll_seconds``: a ``run_at`` coming due notifies
    nobody. Raises :class:`~kanban_orm.errors.InvalidInput` for a bad argument and the
    database errors of a read (:class:`~kanban_orm.errors.DatabaseUnavailable`, ...).
    """
    limit, poll = wait_limits(timeout, poll_seconds)
    wanted = {"only_assignee": check.name(assignee, "assignee")}
    wanted["only_tenant"] = check.name(tenant, "tenant")
    params: dict[str, Any] = {key: value for key, value in wanted.items() if value is not None}
    probe = q.claimable_exists_statement("only_assignee" in params, "only_tenant" in params)
    session, own = _session_for(bind)
    wakeup = watch(session)
    try:
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            seen = wakeup.mark()
            if db.run_read(session, lambda s: bool(s.execute(probe, params).scalar())):
                return True
            left = poll if deadline is None else min(poll, deadline - time.monotonic())
            if left <= 0:
                return False
            wakeup.wait(seen, left)
    finally:
        wakeup.release()
        if own:
            session.close()


def _session_for(bind: Session | Engine | str | None) -> tuple[Session, bool]:
    """The Session to read with, and whether it is ours to close."""
    if isinstance(bind, Session):
        return bind, False
    if isinstance(bind, Engine):
        return db.session_factory(bind)(), True
    if bind is None or isinstance(bind, str):
        return db.connect(bind), True
    raise InvalidInput(
        f"wait_for_ready takes a Session, an Engine or a URL, not {type(bind).__name__}"
    )
