"""``kanban-orm mcp`` and ``kanban-orm logs``: the commands of agents and their runs.

Registered at the end of :mod:`kanban_orm.cli`. The ``mcp`` SDK is an optional extra, so
it is imported only when the command runs.
"""

from __future__ import annotations

import getpass
import socket
import sys
import time
from pathlib import Path
from typing import Any

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


@click.command("logs")
@click.argument("task_id", metavar="TASK", type=int)
@click.option("run_id", "--run", type=int, metavar="N", help="Run id N (default: the latest).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the run ends.")
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Where `work` wrote logs (default: $KANBAN_LOG_DIR, else $KANBAN_HOME/logs).",
)
@click.pass_context
def logs_command(
    ctx: click.Context, task_id: int, run_id: int | None, follow: bool, log_dir: Path | None
) -> None:
    """Print the stdout and stderr of a run of TASK (`work --workspace/--git/--log-dir`).

    The log file on this machine when there is one (--follow reads it as it grows,
    until the run ends), else the copy attached to the run when it ended.
    """
    import kanban_orm as kb

    from .db import default_url, missing_sqlite_file
    from .workspace import default_log_dir, log_attachment_name, log_path

    url = ctx.find_root().params.get("db")
    missing = missing_sqlite_file(url or default_url())
    if missing is not None:
        raise KanbanError(f"no database at {missing} (run `kanban-orm db upgrade` to create one)")
    session = kb.connect(url)
    ctx.call_on_close(session.close)
    runs = kb.list_runs(session, task_id=task_id)
    if not runs:
        raise KanbanError(f"task {task_id} has no runs yet")
    if run_id is None:
        run = runs[-1]
    else:
        chosen = [r for r in runs if r.id == run_id]
        if not chosen:
            known = ", ".join(str(r.id) for r in runs)
            raise KanbanError(f"task {task_id} has no run {run_id} (its runs: {known})")
        run = chosen[0]
    path = log_path(log_dir or default_log_dir(), task_id, run.id)
    if path.exists():
        _print_file(session, path, task_id, run.id, follow=follow)
        return
    try:
        data = kb.read_attachment(session, task_id, log_attachment_name(run.id))
    except kb.AttachmentNotFound:
        raise KanbanError(
            f"no log for run {run.id} of task {task_id}: not at {path}, none attached"
        ) from None
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def _print_file(session: Any, path: Path, task_id: int, run_id: int, *, follow: bool) -> None:
    import kanban_orm as kb

    with path.open("rb") as source:
        while True:
            chunk = source.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                continue
            if not follow:
                return
            run = next(r for r in kb.list_runs(session, task_id=task_id) if r.id == run_id)
            if run.ended_at is not None:
                # The writer is done: what is left is already in the file.
                rest = source.read()
                sys.stdout.buffer.write(rest)
                sys.stdout.flush()
                return
            time.sleep(0.25)
