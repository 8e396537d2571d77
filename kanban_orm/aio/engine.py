"""AsyncEngines and AsyncSessions set up as :mod:`kanban_orm.db` sets up their sync kind."""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import greenlet_spawn

from .. import backends, db, migrate, validation
from ..db import RetryPolicy
from ..errors import InvalidInput

#: An AsyncEngine, or a URL that :func:`create_engine` is given, or None (the default URL).
AsyncBind = AsyncEngine | AsyncConnection | str | sa.URL | None


def create_engine(
    url: str | sa.URL | None = None,
    *,
    synchronous: str | None = None,
    busy_timeout_ms: int | None = None,
    retry: RetryPolicy | None = None,
    **kw: Any,
) -> AsyncEngine:
    """An AsyncEngine for ``url`` (else :func:`kanban_orm.default_url`), as
    :func:`kanban_orm.create_engine` makes an Engine.

    A URL that names no driver, or a sync one, gets its backend's asyncio driver:
    ``sqlite+aiosqlite``, ``postgresql+psycopg`` (psycopg 3's AsyncConnection) and
    ``mysql+asyncmy`` / ``mariadb+asyncmy``. ``synchronous``, ``busy_timeout_ms`` and
    ``retry`` are as for :func:`kanban_orm.configure_engine`; other keyword arguments go
    to :func:`sqlalchemy.ext.asyncio.create_async_engine`.
    """
    parsed = db.engine_url(url)
    backend = backends.named(parsed.get_backend_name())
    parsed = backend.async_url(parsed)
    with db.missing_driver(parsed, db.install_command("async")):
        engine = create_async_engine(parsed, **{**backend.async_engine_options(parsed), **kw})
    return configure_engine(
        engine, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms, retry=retry
    )


def configure_engine(
    engine: AsyncEngine,
    *,
    synchronous: str | None = None,
    busy_timeout_ms: int | None = None,
    retry: RetryPolicy | None = None,
) -> AsyncEngine:
    """Apply the kanban set-up to an AsyncEngine (a host application's own, for
    instance): :func:`kanban_orm.configure_engine` on its ``sync_engine``, where
    SQLAlchemy's asyncio layer runs the connection events."""
    db.configure_engine(
        engine.sync_engine, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms, retry=retry
    )
    return engine


def session_factory(
    engine: AsyncEngine, *, keep_connection: bool = False
) -> async_sessionmaker[AsyncSession]:
    """An ``async_sessionmaker`` configured like :func:`connect`, for an AsyncEngine of
    your own (``expire_on_commit`` off, as :func:`kanban_orm.session_factory`).
    ``keep_connection`` is accepted so calls written for the sync API run unchanged;
    an AsyncSession checks a connection out per transaction either way."""
    if not isinstance(engine, AsyncEngine):
        raise InvalidInput(
            f"session_factory takes an AsyncEngine, not {type(engine).__name__}"
            " (for a URL: aio.connect(url))"
        )
    validation.boolean(keep_connection, "keep_connection")
    return async_sessionmaker(engine, expire_on_commit=False)


#: Per event loop: an AsyncEngine's pooled connections belong to the loop that opened them.
_engines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[int, str], AsyncEngine]]
_engines = weakref.WeakKeyDictionary()
_engines_lock = threading.Lock()


def cached_engine(url: str | None = None) -> AsyncEngine:
    """This process's and this event loop's AsyncEngine for ``url`` (else the default
    URL), created once."""
    key = (os.getpid(), str(url or db.default_url()))
    with _engines_lock:
        mine = _engines.setdefault(asyncio.get_running_loop(), {})
        engine = mine.get(key)
        if engine is None:
            engine = mine[key] = create_engine(key[1])
        return engine


async def dispose_engines() -> None:
    """Close and forget every AsyncEngine :func:`cached_engine` made on this loop."""
    with _engines_lock:
        mine = _engines.pop(asyncio.get_running_loop(), {})
    for engine in mine.values():
        await engine.dispose()


def connect(url: str | None = None, *, keep_connection: bool = False) -> AsyncSession:
    """A new AsyncSession on this loop's cached AsyncEngine (``await session.close()``,
    or ``async with``, ends it); ``expire_on_commit`` is off, as for
    :func:`kanban_orm.connect` (``keep_connection``: see :func:`session_factory`)."""
    return session_factory(cached_engine(url), keep_connection=keep_connection)()


async def init_db(url: str | None = None) -> AsyncEngine:
    """This loop's AsyncEngine for ``url``, its database upgraded to head (as
    :func:`kanban_orm.init_db`)."""
    engine = cached_engine(url)
    await upgrade(engine)
    return engine


async def upgrade(bind: AsyncBind = None, revision: str = "head") -> None:
    """:func:`kanban_orm.upgrade` for an AsyncEngine or AsyncConnection (Alembic's
    migration runs in the greenlet, its statements on the async driver)."""
    await _migrating(bind, migrate.upgrade, revision)


async def downgrade(bind: AsyncBind = None, revision: str = "-1") -> None:
    """:func:`kanban_orm.downgrade` for an AsyncEngine or AsyncConnection."""
    await _migrating(bind, migrate.downgrade, revision)


async def current(bind: AsyncBind = None) -> str | None:
    """:func:`kanban_orm.current` for an AsyncEngine or AsyncConnection."""
    return await _migrating(bind, migrate.current)  # type: ignore[no-any-return]


async def check(bind: AsyncBind = None) -> None:
    """:func:`kanban_orm.check` for an AsyncEngine or AsyncConnection."""
    await _migrating(bind, migrate.check)


def _text(url: str | sa.URL | None) -> str | None:
    return url.render_as_string(hide_password=False) if isinstance(url, sa.URL) else url


async def _migrating(bind: AsyncBind, command: Any, *args: Any) -> Any:
    if isinstance(bind, AsyncConnection):
        return await bind.run_sync(command, *args)
    engine = bind if isinstance(bind, AsyncEngine) else cached_engine(_text(bind))
    return await greenlet_spawn(command, engine.sync_engine, *args)
