"""``aio.wait_for_ready``: kanban_orm.wait_for_ready without blocking the event loop."""

from __future__ import annotations

import asyncio
import time

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

import kanban_orm as _kb

from .. import backends
from ..errors import InvalidInput
from ..wakeup import DEFAULT_POLL_SECONDS, wait_limits

#: The longest one wait in a worker thread lasts: a cancelled wait_for_ready returns at
#: once, and the thread it leaves behind ends within this.
_SLICE_SECONDS = 1.0


def _sync_url(bind: AsyncSession | AsyncEngine | str | None) -> str | None:
    """The database the sync wait looks at, on the backend's sync driver."""
    if bind is None or isinstance(bind, str):
        return bind
    if isinstance(bind, AsyncSession):
        engine = bind.bind
        if not isinstance(engine, AsyncEngine):
            raise InvalidInput("wait_for_ready needs an AsyncSession bound to an AsyncEngine")
        bind = engine
    if not isinstance(bind, AsyncEngine):
        raise InvalidInput(
            "wait_for_ready takes an AsyncSession, an AsyncEngine, a URL or None,"
            f" not {type(bind).__name__}"
        )
    url = bind.url
    sync = backends.named(url.get_backend_name()).url(url.set(drivername=url.get_backend_name()))
    return sa.make_url(sync).render_as_string(hide_password=False)


async def wait_for_ready(
    bind: AsyncSession | AsyncEngine | str | None = None,
    *,
    timeout: float | None = None,
    assignee: str | None = None,
    tenant: str | None = None,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
) -> bool:
    """:func:`kanban_orm.wait_for_ready`, awaitable: True once a task is claimable within
    the filters, False after ``timeout`` seconds (None: no limit). The wait runs in a
    worker thread on the sync driver, a second at a time (the process's shared wake-up
    makes it prompt), so the loop never blocks and a cancelled wait ends at once."""
    limit, _ = wait_limits(timeout, poll_seconds)
    url = _sync_url(bind)
    deadline = None if limit is None else time.monotonic() + limit
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        step = _SLICE_SECONDS if left is None else min(_SLICE_SECONDS, left)
        if await asyncio.to_thread(
            _kb.wait_for_ready,
            url,
            timeout=step,
            assignee=assignee,
            tenant=tenant,
            poll_seconds=poll_seconds,
        ):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
