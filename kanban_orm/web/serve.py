"""``kanban-orm serve``: the web board on uvicorn."""

from __future__ import annotations

import ipaddress
import os
import socket

import click

from kanban_orm.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def is_loopback(host: str) -> bool:
    """True when ``host`` only ever reaches this machine (a name is resolved)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


@click.command("serve")
@click.option("--db", "url", metavar="URL", help="Database URL (default: the global --db).")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to bind.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int, help="Port to bind.")
@click.option("--read-only", is_flag=True, help="Serve the board without any write route.")
@click.option(
    "--housekeeping/--no-housekeeping",
    default=None,
    help="Prune on the KANBAN_RETENTION_* schedule while serving"
    " [default: on, off with --read-only].",
)
@click.pass_context
def serve(
    ctx: click.Context,
    url: str | None,
    host: str,
    port: int,
    read_only: bool,
    housekeeping: bool | None,
) -> None:
    """Serve the board in a browser, behind a token printed with its URL.

    The token is $KANBAN_WEB_TOKEN, else a new random one. Binding to an address other
    than loopback needs $KANBAN_WEB_TOKEN, so the board is never open to a network by
    accident. With a KANBAN_RETENTION_* age set, the server prunes finished history on
    that schedule (a read-only board only when asked with --housekeeping).
    """
    try:
        import uvicorn

        import kanban_orm as kb
        from kanban_orm import web
    except ImportError as error:
        raise click.ClickException(
            f"the web board needs the web extra: pip install 'kanban-orm[web]' ({error})"
        ) from error
    given_token = os.environ.get(web.TOKEN_ENV, "").strip()
    if not is_loopback(host) and not given_token:
        raise ConfigError(
            f"refusing to bind {host}: not a loopback address, and no token given; "
            f"set {web.TOKEN_ENV} to a long random secret to serve the board to a network"
        )
    chosen = url or ctx.find_root().params.get("db") or kb.default_url()
    # Serving a missing file would create an empty database: a mistyped path is an error.
    missing = kb.db.missing_sqlite_file(chosen)
    if missing is not None:
        raise ConfigError(f"no database at {missing} (run `kanban-orm db upgrade` to create one)")
    engine = kb.cached_engine(chosen)
    prunes = not read_only if housekeeping is None else housekeeping
    board = web.app(engine, token=given_token or None, read_only=read_only, housekeeping=prunes)
    shown = f"[{host}]" if ":" in host else host
    mode = " (read-only)" if read_only else ""
    click.echo(f"kanban board{mode}: http://{shown}:{port}/?token={board.state.token}", err=False)
    keeper = board.state.housekeeper
    if keeper is not None and keeper.settings.enabled:
        every = keeper.settings.interval_seconds
        click.echo(f"housekeeping: prune every {every:g}s (KANBAN_RETENTION_*)")
    uvicorn.run(
        board,
        host=host,
        port=port,
        log_level="warning",
        # Live streams never end by themselves: give them a moment, then close.
        timeout_graceful_shutdown=2,
    )
