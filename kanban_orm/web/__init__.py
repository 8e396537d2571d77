"""The web board: ``kanban-orm serve``, or ``kanban_orm.web.app(engine)`` mounted in a
host's ASGI application. Needs the ``web`` extra (``pip install 'kanban-orm[web]'``).

Importing this package needs nothing beyond the core (so ``kanban-orm`` can register
its ``serve`` command without the extra); :func:`app` imports the ASGI stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from starlette.applications import Starlette

#: The environment variable holding the board's access token.
TOKEN_ENV = "KANBAN_WEB_TOKEN"


def app(
    engine: Engine,
    *,
    token: str | None = None,
    read_only: bool = False,
    poll_interval: float = 0.1,
    housekeeping: bool = False,
) -> Starlette:
    """The web board for ``engine`` as an ASGI app, to serve or to mount in a host's app
    (``host.mount("/kanban", kanban_orm.web.app(engine))``).

    Every request needs ``token`` (default: ``$KANBAN_WEB_TOKEN``, else a new random
    one, readable as ``app.state.token``), as ``Authorization: Bearer <token>`` or the
    HttpOnly cookie that opening ``?token=<token>`` sets. With ``read_only`` no write
    route exists at all. One event tailer (a thread, polling every ``poll_interval``
    seconds) feeds every live stream; it starts with the first stream and stops with
    the app's lifespan. With ``housekeeping`` the app's lifespan also runs a
    :class:`kanban_orm.Housekeeper` (prune on the ``KANBAN_RETENTION_*`` schedule, as
    ``Worker(housekeeping=True)`` does), readable as ``app.state.housekeeper``. Raises
    :class:`kanban_orm.ConfigError` for an empty token or a bad retention setting, and
    ImportError without the ``web`` extra.
    """
    from .server import build

    return build(
        engine,
        token=token,
        read_only=read_only,
        poll_interval=poll_interval,
        housekeeping=housekeeping,
    )


__all__ = ["TOKEN_ENV", "app"]
