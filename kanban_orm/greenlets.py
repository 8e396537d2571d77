"""Waiting without stalling an event loop, for the sync code :mod:`kanban_orm.aio` runs.

:mod:`kanban_orm.aio` runs the library's one implementation of each transition in a
greenlet of SQLAlchemy's asyncio layer (``AsyncSession.run_sync``): the driver calls in
it already await the event loop, but a ``time.sleep`` (the retry layer's backoff, the
Worker's outage backoff) would stop every other coroutine of the loop. :func:`pause`
sleeps on the loop there, and as ``time.sleep`` everywhere else.
"""

from __future__ import annotations

import asyncio
import sys
import time


def in_async_greenlet() -> bool:
    """True inside ``AsyncSession.run_sync`` (or ``greenlet_spawn``): the thread's
    event loop is waiting for this code, which may await on it."""
    greenlet = sys.modules.get("greenlet")  # never imported: no asyncio layer running
    if greenlet is None:
        return False
    return bool(getattr(greenlet.getcurrent(), "__sqlalchemy_greenlet_provider__", False))


def pause(seconds: float) -> None:
    """Sleep ``seconds``: on the event loop inside :func:`in_async_greenlet`, else
    ``time.sleep``."""
    if in_async_greenlet():
        from sqlalchemy.util import await_only

        await_only(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)
