"""``kanban-orm mcp``: the commands that serve the board to language-model agents.

Registered at the end of :mod:`kanban_orm.cli`. The ``mcp`` SDK is an optional extra, so
it is imported only when the command runs.
"""

from __future__ import annotations

import getpass
import socket

import click

from .errors import KanbanError


def _default_claimer() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in the environment or the password database
        user = "agent"
    return f"mcp:{user}@{socket.gethostname()}"


@click.command("mcp")
@click.option(
    "--db",
    "url",
    metavar="URL",
    help="Database URL (default: the global --db, $KANBAN_DATABASE_URL, else SQLite).",
)
@click.option("--claimer", metavar="NAME", help="Recorded on the runs this session claims.")
@click.option("--assignee", metavar="A", help="claim_next takes only tasks assigned to A.")
@click.option("--tenant", metavar="T", help="Work only within tenant T (others are invisible).")
@click.option("--read-only", is_flag=True, help="Expose only the read tools.")
@click.option(
    "--ttl",
    type=click.FloatRange(min=0, min_open=True, max=365 * 24 * 3600),
    metavar="SECONDS",
    help="Lease length of this session's claims (renewed every third of it).",
)
@click.pass_context
def mcp_command(
    ctx: click.Context,
    url: str | None,
    claimer: str | None,
    assignee: str | None,
    tenant: str | None,
    read_only: bool,
    ttl: float | None,
) -> None:
    """Serve the board as Model Context Protocol tools over stdio.

    \b
    Tools: list_tasks, show_task, board (read); create_task, claim_next, heartbeat,
    complete_task, fail_task, block_task, add_comment, submit_for_review (write,
    not with --read-only). Resource: task://{id}.
    The server keeps the claim tokens of what this session claims and renews their
    leases while it runs; held tasks are released when the session ends.
    Needs the mcp extra: pip install 'kanban-orm[mcp]'.
    """
    try:
        from . import mcp as mcp_server
    except ModuleNotFoundError as not_installed:
        if not_installed.name is None or not not_installed.name.startswith(("mcp", "pydantic")):
            raise
        raise KanbanError(
            "kanban-orm mcp needs the MCP SDK: pip install 'kanban-orm[mcp]'"
        ) from None
    from .db import default_url, missing_sqlite_file

    url = url or ctx.find_root().params.get("db")
    missing = missing_sqlite_file(url or default_url())
    if missing is not None:
        raise KanbanError(f"no database at {missing} (run `kanban-orm db upgrade` to create one)")
    mcp_server.serve(
        url,
        claimer=claimer or _default_claimer(),
        assignee=assignee,
        tenant=tenant,
        read_only=read_only,
        ttl_seconds=ttl,
    )
