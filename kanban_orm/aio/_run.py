"""How an ``async def`` of :mod:`kanban_orm.aio` runs the library's one implementation.

Each transition and read is written once, as sync code over a Session, running its
statements through :mod:`kanban_orm.driver` inside the retry layer of
:mod:`kanban_orm.db`. ``AsyncSession.run_sync`` runs that code in a greenlet whose every
driver call awaits the event loop (SQLAlchemy's asyncio adaptation), so the statements,
the guards, the retry policy and the errors are the sync API's own; the few waits of the
sync path (retry backoff) go through :func:`kanban_orm.greenlets.pause`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from .. import greenlets
from ..errors import InvalidInput

P = ParamSpec("P")
T = TypeVar("T")


async def run(
    session: AsyncSession, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kw: P.kwargs
) -> T:
    """``fn(session.sync_session, *args, **kw)`` on the event loop, cancellation-safe.

    The call runs as a task of its own, shielded from the caller. A cancelled caller
    marks it (:class:`~kanban_orm.greenlets.CallState`): it stops at its next safe
    point, rolling back the transaction it is in instead of committing it (a statement
    already sent finishes first; a retry wait stops at once), and its connection goes
    back to the pool. Only then does the caller's ``CancelledError`` propagate, however
    often it is cancelled meanwhile: no half-written transition and no checked-out
    connection outlive it. A COMMIT already sent may have landed; as after a lost
    connection, the cancelled caller does not learn whether it did.
    """
    if not isinstance(session, AsyncSession):
        raise InvalidInput(
            "kanban_orm.aio functions take an AsyncSession; for a Session, call kanban_orm's "
            f"own (got {type(session).__name__})"
        )
    state = greenlets.CallState()
    call = state.call = asyncio.ensure_future(_in_call(state, session, fn, *args, **kw))
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError:
        state.cancel()
        await _until_done(call)
        raise


async def _in_call(
    state: greenlets.CallState,
    session: AsyncSession,
    fn: Callable[Concatenate[Session, P], T],
    *args: P.args,
    **kw: P.kwargs,
) -> T:
    greenlets.current_call.set(state)  # this task's context, which the greenlet shares
    return await session.run_sync(fn, *args, **kw)


async def _until_done(call: asyncio.Future[Any]) -> None:
    """Wait for ``call`` to end, whatever cancels this meanwhile; its outcome is dropped
    (the caller was cancelled, and says so)."""
    while not call.done():
        try:
            await asyncio.wait([call])
        except asyncio.CancelledError:
            continue
    if not call.cancelled():
        call.exception()  # retrieved: a rollback's error is not "never retrieved"


def awaitable(
    fn: Callable[Concatenate[Session, P], T], name: str
) -> Callable[Concatenate[AsyncSession, P], Coroutine[Any, Any, T]]:
    """``kanban_orm.<name>`` as an ``async def`` taking an AsyncSession first: the same
    keyword arguments, result and errors (see :func:`run`)."""

    @functools.wraps(fn)
    async def call(session: AsyncSession, /, *args: P.args, **kw: P.kwargs) -> T:
        return await run(session, fn, *args, **kw)

    call.__doc__ = (
        f"Awaitable :func:`kanban_orm.{name}` on an ``AsyncSession``: the same arguments, "
        f"result, errors and transaction.\n\n{inspect.getdoc(fn) or ''}"
    )
    signature = inspect.signature(fn)
    first, *rest = signature.parameters.values()
    call.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[first.replace(annotation=AsyncSession), *rest]
    )
    call.__name__ = call.__qualname__ = name
    return call
