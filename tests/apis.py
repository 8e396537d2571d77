"""The two APIs a test body can run through, as the ``api`` fixture (tests/conftest.py)
hands them out: one body, run once as it is and once on kanban_orm.aio.

:class:`AsyncApi` runs the whole body on an event loop inside :func:`kanban_orm.aio.run`,
the greenlet every ``aio`` function runs the library's one implementation in: the
body's ``kb.create_task(session, ...)`` on the AsyncSession's ``sync_session`` is what
``await aio.create_task(async_session, ...)`` runs, and each statement goes through the
backend's asyncio driver (aiosqlite, psycopg's AsyncConnection, asyncmy).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.util import greenlet_spawn

import kanban_orm as kb
from kanban_orm import aio
from kanban_orm.backends.base import Backend


class Api:
    """The sync API: the body runs as it is, on the backend's sync driver."""

    name: ClassVar[str] = "sync"
    #: Where the exception classes of this API's MySQL/MariaDB driver are.
    mysql_errors: ClassVar[str] = "MySQLdb"

    def __init__(self) -> None:
        self._sessions: list[Session] = []

    def url(self, backend: Backend, url: sa.URL) -> sa.URL:
        """``url`` with the driver this API gets for ``backend`` when it names none."""
        return backend.url(url)  # type: ignore[no-any-return]

    def create_engine(self, url: str | sa.URL, **kw: Any) -> Engine:
        """An engine set up by this API's ``create_engine``."""
        return kb.create_engine(url, **kw)

    def plain_engine(self, url: sa.URL) -> Engine:
        """An engine of SQLAlchemy's alone (no kanban set-up), no pool, on ``url``'s driver."""
        return sa.create_engine(url, poolclass=sa.pool.NullPool)

    def engine(self, db_url: str) -> Engine:
        """The engine the test's session uses."""
        return kb.cached_engine(db_url)

    def session(self, db_url: str) -> Session:
        session = kb.connect(db_url)
        self._sessions.append(session)
        return session

    def run_test(self, test: Callable[..., object], kwargs: dict[str, Any]) -> None:
        test(**kwargs)

    def finish(self) -> None:
        for session in self._sessions:
            session.close()


class AsyncApi(Api):
    """kanban_orm.aio: the body runs on an event loop, inside ``aio.run`` on the
    AsyncSession its ``session`` belongs to (else SQLAlchemy's greenlet alone), and
    every engine and session it gets is an asyncio one's sync face."""

    name: ClassVar[str] = "async"
    mysql_errors: ClassVar[str] = "asyncmy.errors"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self._engines: dict[str, AsyncEngine] = {}
        self._async_sessions: list[AsyncSession] = []
        self._made: list[AsyncEngine] = []

    def url(self, backend: Backend, url: sa.URL) -> sa.URL:
        return backend.async_url(url)  # type: ignore[no-any-return]

    def create_engine(self, url: str | sa.URL, **kw: Any) -> Engine:
        engine = aio.create_engine(url, **kw)
        self._made.append(engine)
        return engine.sync_engine

    def plain_engine(self, url: sa.URL) -> Engine:
        engine = create_async_engine(url, poolclass=sa.pool.NullPool)
        self._made.append(engine)
        return engine.sync_engine

    def engine(self, db_url: str) -> Engine:
        return self._async_engine(db_url).sync_engine

    def session(self, db_url: str) -> Session:
        session = aio.session_factory(self._async_engine(db_url))()
        self._async_sessions.append(session)
        return session.sync_session

    def run_test(self, test: Callable[..., object], kwargs: dict[str, Any]) -> None:
        async def body() -> None:
            if self._async_sessions:
                await aio.run(self._async_sessions[0], lambda _: test(**kwargs))
            else:
                await greenlet_spawn(test, **kwargs)

        self.loop.run_until_complete(body())

    def finish(self) -> None:
        async def close() -> None:
            for session in self._async_sessions:
                await session.close()
            for engine in [*self._engines.values(), *self._made]:
                await engine.dispose()

        try:
            self.loop.run_until_complete(close())
        finally:
            self.loop.close()

    def _async_engine(self, db_url: str) -> AsyncEngine:
        engine = self._engines.get(db_url)
        if engine is None:
            engine = self._engines[db_url] = aio.create_engine(db_url)
        return engine


APIS: dict[str, type[Api]] = {api.name: api for api in (Api, AsyncApi)}
