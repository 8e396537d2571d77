"""Waiting without stalling an event loop, and cancelling only where it is safe, for the
sync code :mod:`kanban_orm.aio` runs.

:mod:`kanban_orm.aio` runs the library's one implementation of each transition in a
greenlet of SQLAlchemy's asyncio layer (``AsyncSession.run_sync``): the driver calls in
it already await the event loop, but a ``time.sleep`` (the retry layer's backoff, the
Worker's outage backoff) would stop every other coroutine of the loop. :func:`pause`
sleeps on the loop there, and as ``time.sleep`` everywhere else.

A cancelled ``await`` of an aio call is not thrown into the middle of its transaction:
a ``CancelledError`` landing in the driver's rollback, or in the pool's reset of a
returned connection, would leave the connection neither returned nor closed. Instead
the call is marked (:class:`CallState`) and stops at its next safe point: a retry wait
(:func:`pause`), or :func:`checkpoint`, which the retry layer passes before each
attempt and before each COMMIT, so a cancelled transition rolls back instead of
committing.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import time
from typing import Any


class CallState:
    """One aio call, as its caller's cancellation sees it."""

    __slots__ = ("call", "cancelled", "pausing")

    def __init__(self) -> None:
        self.cancelled = False
        self.pausing = False
        self.call: asyncio.Future[Any] | None = None

    def cancel(self) -> None:
        """Stop the call at its next safe point; at once if it is waiting to retry."""
        self.cancelled = True
        if self.pausing and self.call is not None:
            self.call.cancel()


#: The aio call the current greenlet runs for, if any (set in the call's own task).
current_call: contextvars.ContextVar[CallState | None] = contextvars.ContextVar(
    "kanban_aio_call", default=None
)


def checkpoint() -> None:
    """Raise ``CancelledError`` if the aio call running here was cancelled. Called where
    stopping leaves nothing half-done: before a transaction begins, before it commits."""
    state = current_call.get()
    if state is not None and state.cancelled:
        raise asyncio.CancelledError


def in_async_greenlet() -> bool:
    """True inside ``AsyncSession.run_sync`` (or ``greenlet_spawn``): the thread's
    event loop is waiting for this code, which may await on it."""
    greenlet = sys.modules.get("greenlet")  # never imported: no asyncio layer running
    if greenlet is None:
        return False
    current = greenlet.getcurrent()
    if getattr(current, "__sqlalchemy_greenlet_provider__", False):  # SQLAlchemy 2.1
        return True
    # SQLAlchemy 2.0 marks them by their class alone (util._concurrency_py3k).
    return type(current).__name__ == "_AsyncIoGreenlet"


def pause(seconds: float) -> None:
    """Sleep ``seconds``: on the event loop inside :func:`in_async_greenlet` (where a
    cancelled aio call stops, see :func:`checkpoint`), else ``time.sleep``."""
    if not in_async_greenlet():
        time.sleep(seconds)
        return
    from sqlalchemy.util import await_only

    state = current_call.get()
    if state is None:
        await_only(asyncio.sleep(seconds))
        return
    checkpoint()
    state.pausing = True
    try:
        await_only(asyncio.sleep(seconds))
    finally:
        state.pausing = False
