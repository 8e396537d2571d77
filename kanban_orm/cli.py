"""The ``kanban-orm`` command.

Errors the user can act on (a :class:`KanbanError`) print one line on stderr and exit 1;
usage errors exit 2 (click's convention).

Output: plain text is for people; ``--json`` output is stable and built from three
objects, shared with the JSON a ``kanban-orm work`` command reads on stdin (timestamps
are UTC, ISO 8601 with a ``Z``; absent values are ``null``)::

    TASK  = {"id": 12, "title": "...", "body": null, "status": "ready", "priority": 0,
             "assignee": null, "tenant": null, "created_by": null, "attempts": 0,
             "max_attempts": null, "max_runtime": null, "claim_lock": null,
             "claim_expires": null, "current_run_id": null, "run_at": null,
             "idempotency_key": null,
             "result": null, "block_reason": null, "version": 1,
             "created_at": "2024-05-01T12:00:00.000000Z", "updated_at": "...",
             "started_at": null, "completed_at": null}
    RUN   = {"id": 3, "task_id": 12, "attempt": 1, "claimer": "host:123",
             "claim_lock": "9f...", "started_at": "...", "last_heartbeat_at": null,
             "ended_at": null, "outcome": null, "summary": null, "metadata": null,
             "error": null}
    EVENT = {"id": 40, "task_id": 12, "run_id": 3, "kind": "claimed",
             "payload": {...}, "created_at": "..."}
    COMMENT = {"id": 5, "task_id": 12, "author": "ana", "body": "...", "created_at": "..."}

Commands that change one task print ``task ID: STATUS`` (with ``--json``: the TASK
after the change).
"""

from __future__ import annotations

import getpass
import importlib
import json
import logging
import queue
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from . import attachments, db, files, migrate, service, wakeup, workflow
from . import board as board_view
from . import queries as q
from .errors import DatabaseError, KanbanError
from .models import Task
from .serialize import comment_json, event_json, iso, run_json, task_json
from .states import Status
from .validation import MAX_RUNTIME_SECONDS
from .worker import MAX_PREFETCH, CommandHandler, Worker
from .workspace import WorkspaceCommandHandler


@contextmanager
def _kanban_errors() -> Iterator[None]:
    try:
        yield
    except KanbanError as error:
        if type(error) is DatabaseError and isinstance(error.__cause__, DBAPIError):
            _database_error(error.__cause__)  # said as the driver said it, with a hint
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    except DBAPIError as error:  # cannot connect, no such database, permission denied ...
        _database_error(error)


def _database_error(error: DBAPIError) -> NoReturn:
    first_line = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
    if _missing_tables(first_line):
        first_line += " (run `kanban-orm db upgrade` first)"
    click.echo(f"error: database: {first_line}", err=True)
    sys.exit(1)


def _missing_tables(message: str) -> bool:
    """SQLite's and PostgreSQL's ways of saying the kanban tables are not there."""
    return "kanban_" in message and (
        "no such table" in message or ("relation" in message and "does not exist" in message)
    )


class _Group(click.Group):
    """A click group whose commands turn a KanbanError into one line and exit 1, and
    take ``--db`` after their name as well as before it (``kanban-orm list --db URL``)."""

    def invoke(self, ctx: click.Context) -> Any:
        with _kanban_errors():
            return super().invoke(ctx)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            _accept_db_option(command)
        return name, command, rest


#: Commands that pass their arguments on untouched (their own --db included).
_PASS_THROUGH = frozenset({"stress"})


def _accept_db_option(command: click.Command) -> None:
    """Give ``command`` a ``--db`` of its own that sets the root's, once. Added when the
    command is resolved, so commands registered later (by other modules) get it too; a
    command with a ``--db`` of its own (serve, mcp) keeps that one."""
    if command.name in _PASS_THROUGH or any("--db" in p.opts for p in command.params):
        return
    command.params.append(
        click.Option(
            ["db_after", "--db"],
            metavar="URL",
            expose_value=False,
            callback=_set_root_db,
            help="Database URL, as `kanban-orm --db URL ...` takes it.",
        )
    )


def _set_root_db(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.find_root().params["db"] = value


def _engine(ctx: click.Context, *, create: bool = False) -> Engine:
    """The command's engine. Only ``create`` (db upgrade) may make a new SQLite file: a
    mistyped path would otherwise leave an empty database (and its directories) behind."""
    url: str | None = ctx.find_root().params.get("db")
    if not create:
        missing = db.missing_sqlite_file(_url_given(ctx))
        if missing is not None:
            raise KanbanError(
                f"no database at {missing} (run `kanban-orm db upgrade` to create one)"
            )
    return db.cached_engine(url)


def _url_given(ctx: click.Context) -> str:
    return ctx.find_root().params.get("db") or db.default_url()


def _require_folder(url: str) -> None:
    """Refuse a SQLite path whose folder is missing: a typo would otherwise create
    folders (at the filesystem root, for ``sqlite:////typo/x.db``)."""
    path = files.sqlite_file(url)
    if path is None or path.parent.is_dir() or path.parent == db.default_home():
        return
    missing = path.parent.absolute()
    while not missing.parent.exists():
        missing = missing.parent
    raise KanbanError(
        f"no folder {missing} for the database {path.absolute()}: create it, or pass --create-dirs"
    )


@click.group(cls=_Group)
@click.option(
    "--db",
    "db",
    metavar="URL",
    envvar=db.ENV_URL,
    help=f"Database URL (default: ${db.ENV_URL}, else sqlite:///$KANBAN_HOME/kanban.db).",
)
@click.version_option(package_name="kanban-orm")
def main(db: str | None) -> None:
    """A durable Kanban board shared by many worker processes."""


@main.group("db", cls=_Group)
def db_group() -> None:
    """Schema migrations of the kanban tables."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.option(
    "--create-dirs",
    is_flag=True,
    help="Create the SQLite file's missing folders (0700) too; the default home always is.",
)
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str, create_dirs: bool) -> None:
    """Migrate the kanban tables up to REVISION (safe to run concurrently).

    A new SQLite file is created (0600), but not missing folders on its path, unless
    --create-dirs is given or the folder is the default home ($KANBAN_HOME or ~/.kanban).
    """
    if not create_dirs:
        _require_folder(_url_given(ctx))
    engine = _engine(ctx, create=True)
    migrate.upgrade(engine, revision)
    click.echo(f"{engine.url.render_as_string()}: at {migrate.current(engine)}")


@db_group.command("downgrade")
@click.argument("revision")
@click.pass_context
def db_downgrade(ctx: click.Context, revision: str) -> None:
    """Migrate the kanban tables down to REVISION ('base' drops them)."""
    engine = _engine(ctx)
    migrate.downgrade(engine, revision)
    click.echo(f"{engine.url.render_as_string()}: at {migrate.current(engine) or 'base'}")


@db_group.command("current")
@click.pass_context
def db_current(ctx: click.Context) -> None:
    """Print the revision the database is at ('base' before the first upgrade).

    A SQLite file that does not exist is an error, as for `db check`.
    """
    click.echo(migrate.current(_engine(ctx)) or "base")


@db_group.command("check")
@click.pass_context
def db_check(ctx: click.Context) -> None:
    """Exit 1 unless the database is at head and matches the models.

    Also warns (on stderr, without changing the exit status) when a SQLite board file
    is readable by users other than its owner.
    """
    engine = _engine(ctx)
    for exposed in files.exposed_board_files(engine.url):
        click.echo(f"warning: {exposed.warning}", err=True)
    migrate.check(engine)
    click.echo(f"ok: at {migrate.head()}, schema matches the models")


# -- shared plumbing --------------------------------------------------------------------


def _session(ctx: click.Context) -> Session:
    """A Session on the command's engine, closed when the command ends."""
    session = db.session_factory(_engine(ctx))()
    ctx.call_on_close(session.close)
    return session


def _url(ctx: click.Context) -> str:
    """The effective database URL, password included (for a worker's command)."""
    return _engine(ctx).url.render_as_string(hide_password=False)


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False))


def _report(task: Task, as_json: bool) -> None:
    """What a command that changed one task prints."""
    if as_json:
        _emit_json(task_json(task))
        return
    line = f"task {task.id}: {task.status}"
    if task.status == Status.BLOCKED.value and task.block_reason:
        line += f" ({task.block_reason})"
    click.echo(line)


def _db_now(session: Session) -> datetime:
    """The database's clock (leases are measured with it, so ages are too)."""
    now: datetime = session.execute(q.DATABASE_NOW).scalar_one()
    session.rollback()
    return now


def _default_cli_claimer() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in the environment or the password database
        user = "cli"
    return f"{user}@{socket.gethostname()}"


@contextmanager
def _stop_signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    """Call ``on_signal(count)`` on SIGINT/SIGTERM instead of dying, for the block.

    The calls are made in order by a thread of the block's own: a handler runs in the
    main thread between two of its bytecodes, maybe while that thread holds a lock
    ``on_signal`` takes (``Event.wait`` holds its condition's lock between checks, and
    ``Event.set`` takes it), and would wait for itself forever. The handler only puts
    the count on a ``SimpleQueue``, whose ``put`` may interrupt itself safely. Outside the
    main thread (where Python cannot install handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    counts: queue.SimpleQueue[int | None] = queue.SimpleQueue()

    def relay() -> None:
        while (count := counts.get()) is not None:
            on_signal(count)

    threading.Thread(target=relay, name="kanban-signals", daemon=True).start()
    received = 0

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        counts.put(received)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        counts.put(None)


def _json_option() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "as_json", "--json", is_flag=True, help="Print JSON (shapes: `kanban-orm show --help`)."
    )


_STATUS = click.Choice([s.value for s in Status])

# -- creating and reading ---------------------------------------------------------------


@main.command("create")
@click.option("--title", required=True, help="What the task is (required).")
@click.option("--body", help="Details.")
@click.option("--assignee", help="Who (or which pool of workers) should take it.")
@click.option("--tenant", help="The tenant the task belongs to.")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher claims first.")
@click.option("parents", "--parent", type=int, multiple=True, metavar="ID", help="Wait for ID.")
@click.option("--idempotency-key", metavar="KEY", help="Return the live task with KEY if any.")
@click.option("--max-attempts", type=int, help="Attempts before the task is blocked.")
@click.option(
    "--max-runtime",
    type=float,
    metavar="SECONDS",
    help="A run that takes longer is cancelled and the task failed.",
)
@click.option("--triage", is_flag=True, help="Start in triage rather than ready/todo.")
@click.option("--created-by", metavar="NAME")
@_json_option()
@click.pass_context
def create(
    ctx: click.Context,
    title: str,
    body: str | None,
    assignee: str | None,
    tenant: str | None,
    priority: int,
    parents: tuple[int, ...],
    idempotency_key: str | None,
    max_attempts: int | None,
    max_runtime: float | None,
    triage: bool,
    created_by: str | None,
    as_json: bool,
) -> None:
    """Create a task and print its id.

    With an --idempotency-key that a live task already holds, that task's id is
    printed and nothing is created. --json prints the TASK instead of the id.
    """
    session = _session(ctx)
    task_id = service.create_task(
        session,
        title=title,
        body=body,
        assignee=assignee,
        tenant=tenant,
        priority=priority,
        parents=parents,
        idempotency_key=idempotency_key,
        max_attempts=max_attempts,
        max_runtime=max_runtime,
        triage=triage,
        created_by=created_by,
    )
    if as_json:
        _emit_json(task_json(service.get_task(session, task_id)))
    else:
        click.echo(task_id)


@main.command("list")
@click.option("--status", type=_STATUS, help="Only this status (archived: only archived).")
@click.option("--assignee")
@click.option("--tenant")
@click.option("--limit", type=click.IntRange(min=1))
@_json_option()
@click.pass_context
def list_(
    ctx: click.Context,
    status: str | None,
    assignee: str | None,
    tenant: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """List tasks in id order (archived ones only with --status archived).

    \b
    Plain: one line per task: ID STATUS PRIORITY ASSIGNEE TITLE.
    --json: a JSON array of TASK objects:
      [{"id": 1, "title": "...", "status": "ready", ...}, ...]
    """
    tasks = service.list_tasks(
        _session(ctx), status=status, assignee=assignee, tenant=tenant, limit=limit
    )
    if as_json:
        _emit_json([task_json(t) for t in tasks])
        return
    for t in tasks:
        click.echo(f"{t.id:>6}  {t.status:<8} {t.priority:>4}  {t.assignee or '-':<12} {t.title}")


@main.command("show")
@click.argument("task_id", metavar="ID", type=int)
@_json_option()
@click.pass_context
def show(ctx: click.Context, task_id: int, as_json: bool) -> None:
    """Show one task: its card, links, runs (attempts), comments and events.

    \b
    --json: {"task": TASK, "runs": [RUN, ...], "events": [EVENT, ...],
             "comments": [COMMENT, ...], "attachments": [ATTACHMENT, ...],
             "parents": [ID, ...], "children": [ID, ...]}
    \b
    TASK  = {"id", "title", "body", "status", "priority", "assignee", "tenant",
             "created_by", "attempts", "max_attempts", "max_runtime", "claim_lock",
             "claim_expires", "current_run_id", "run_at", "idempotency_key", "result",
             "block_reason", "version", "created_at", "updated_at", "started_at",
             "completed_at"}
    RUN   = {"id", "task_id", "attempt", "claimer", "claim_lock", "started_at",
             "last_heartbeat_at", "ended_at", "outcome", "summary", "metadata", "error"}
    EVENT = {"id", "task_id", "run_id", "kind", "payload", "created_at"}
    COMMENT = {"id", "task_id", "author", "body", "created_at"}
    ATTACHMENT = {"id", "task_id", "run_id", "name", "size", "sha256", "created_at"}
    Timestamps are UTC ISO 8601 with a "Z"; runs, events and comments are oldest
    first; parents and children are task ids in ascending order.
    """
    session = _session(ctx)
    task = service.get_task(session, task_id)
    runs = service.list_runs(session, task_id=task_id)
    events = service.list_events(session, task_id=task_id)
    comments = workflow.list_comments(session, task_id=task_id)
    parents, children = workflow.list_links(session, task_id=task_id)
    attached = attachments.list_attachments(session, task_id)
    if as_json:
        _emit_json(
            {
                "task": task_json(task),
                "runs": [run_json(r) for r in runs],
                "events": [event_json(e) for e in events],
                "comments": [comment_json(c) for c in comments],
                "attachments": [attachments.attachment_json(a) for a in attached],
                "parents": parents,
                "children": children,
            }
        )
        return
    fields = task_json(task)
    click.echo(f"#{task.id} {task.title}")
    for name in ("status", "priority", "assignee", "tenant", "created_by", "attempts"):
        click.echo(f"  {name:<14} {fields[name] if fields[name] is not None else '-'}")
    for name in (
        "max_attempts",
        "max_runtime",
        "claim_lock",
        "claim_expires",
        "run_at",
        "idempotency_key",
        "block_reason",
        "created_at",
        "updated_at",
        "started_at",
        "completed_at",
    ):
        if fields[name] is not None:
            click.echo(f"  {name:<14} {fields[name]}")
    if parents:
        click.echo(f"  {'parents':<14} {', '.join(map(str, parents))}")
    if children:
        click.echo(f"  {'children':<14} {', '.join(map(str, children))}")
    if task.body:
        click.echo("body:")
        click.echo(_indent(task.body))
    if task.result is not None:
        click.echo("result:")
        click.echo(_indent(task.result))
    click.echo(f"runs ({len(runs)}):")
    for r in runs:
        outcome = r.outcome or "open"
        click.echo(
            f"  run {r.id}  attempt {r.attempt}  {outcome:<10} {r.claimer}  {iso(r.started_at)}"
        )
        if r.error:
            click.echo(_indent(r.error, "      "))
    click.echo(f"comments ({len(comments)}):")
    for c in comments:
        click.echo(f"  {iso(c.created_at)}  {c.author or '(anonymous)'}:")
        click.echo(_indent(c.body, "    "))
    if attached:
        click.echo(f"attachments ({len(attached)}):")
        for a in attached:
            run = f"  run {a.run_id}" if a.run_id is not None else ""
            click.echo(f"  {a.name}  {a.size} bytes{run}  {iso(a.created_at)}")
    click.echo(f"events ({len(events)}):")
    for e in events:
        click.echo("  " + _event_line(e))


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _event_line(e: Any) -> str:
    run = f" run {e.run_id}" if e.run_id is not None else ""
    payload = f" {json.dumps(e.payload, ensure_ascii=False)}" if e.payload else ""
    return f"{e.id:>6}  {iso(e.created_at)}  task {e.task_id}  {e.kind}{run}{payload}"


# -- claims and their outcomes ----------------------------------------------------------


@main.command("claim")
@click.option("--claimer", metavar="NAME", help="Recorded on the run (default: user@host).")
@click.option("--assignee", help="Only tasks assigned to A.")
@click.option("--tenant", help="Only tasks of tenant T.")
@click.option("--ttl", type=float, metavar="SECONDS", help="Lease length (default: configured).")
@_json_option()
@click.pass_context
def claim(
    ctx: click.Context,
    claimer: str | None,
    assignee: str | None,
    tenant: str | None,
    ttl: float | None,
    as_json: bool,
) -> None:
    """Claim the best claimable task (highest priority, then oldest).

    \b
    Plain: "ID CLAIM_LOCK" on one line (for `read id lock`).
    --json: the claimed TASK (its "claim_lock" and "current_run_id" set).
    Nothing claimable: stdout stays empty, "nothing claimable" goes to stderr and the
    exit status is 0 -- losing a race or an empty board is not an error.
    """
    task = service.claim_next(
        _session(ctx),
        claimer=claimer or _default_cli_claimer(),
        assignee=assignee,
        tenant=tenant,
        ttl_seconds=ttl,
    )
    if task is None:
        click.echo("nothing claimable", err=True)
        return
    if as_json:
        _emit_json(task_json(task))
    else:
        click.echo(f"{task.id} {task.claim_lock}")


_ID = click.argument("task_id", metavar="ID", type=int)
_LOCK = click.option("--claim-lock", metavar="LOCK", help="The token `claim` printed.")


@main.command("complete")
@_ID
@click.option("--result", help="The task's result.")
@click.option("--summary", help="A summary kept on the run.")
@_LOCK
@click.option("--force", is_flag=True, help="Complete without holding the claim.")
@_json_option()
@click.pass_context
def complete(
    ctx: click.Context,
    task_id: int,
    result: str | None,
    summary: str | None,
    claim_lock: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Mark a task done. Needs exactly one of --claim-lock or --force.

    --json: the TASK, now done.
    """
    if (claim_lock is None) == (not force):
        raise click.UsageError("give exactly one of --claim-lock and --force")
    task = service.complete_task(
        _session(ctx), task_id, claim_lock=claim_lock, result=result, summary=summary, force=force
    )
    _report(task, as_json)


@main.command("fail")
@_ID
@click.option("--claim-lock", metavar="LOCK", required=True, help="The token `claim` printed.")
@click.option("--error", required=True, help="What went wrong (kept on the run).")
@click.option("--no-retry", is_flag=True, help="Block the task instead of retrying it.")
@_json_option()
@click.pass_context
def fail(
    ctx: click.Context, task_id: int, claim_lock: str, error: str, no_retry: bool, as_json: bool
) -> None:
    """Record a failed attempt: retried later (back off) until max attempts, then blocked.

    --json: the TASK (ready with a future run_at, or blocked).
    """
    task = service.fail_task(
        _session(ctx), task_id, claim_lock=claim_lock, error=error, retry=not no_retry
    )
    _report(task, as_json)


@main.command("block")
@_ID
@click.option("--reason", required=True)
@click.option("--claim-lock", metavar="LOCK", help="Needed when the task is running.")
@_json_option()
@click.pass_context
def block(
    ctx: click.Context, task_id: int, reason: str, claim_lock: str | None, as_json: bool
) -> None:
    """Block a task with a reason. --json: the TASK, now blocked."""
    _report(
        service.block_task(_session(ctx), task_id, reason=reason, claim_lock=claim_lock), as_json
    )


@main.command("unblock")
@_ID
@_json_option()
@click.pass_context
def unblock(ctx: click.Context, task_id: int, as_json: bool) -> None:
    """Move a blocked task back to ready (todo while a parent is unfinished). --json: TASK."""
    _report(service.unblock_task(_session(ctx), task_id), as_json)


@main.command("release")
@_ID
@click.option("--claim-lock", metavar="LOCK", required=True, help="The token `claim` printed.")
@click.option("--reason")
@_json_option()
@click.pass_context
def release(
    ctx: click.Context, task_id: int, claim_lock: str, reason: str | None, as_json: bool
) -> None:
    """Hand a claimed task back to ready without counting a failure. --json: TASK."""
    task = service.release_task(_session(ctx), task_id, claim_lock=claim_lock, reason=reason)
    _report(task, as_json)


@main.command("heartbeat")
@_ID
@click.option("--claim-lock", metavar="LOCK", required=True, help="The token `claim` printed.")
@click.option("--ttl", type=float, metavar="SECONDS", help="New lease length from now.")
@_json_option()
@click.pass_context
def heartbeat(
    ctx: click.Context, task_id: int, claim_lock: str, ttl: float | None, as_json: bool
) -> None:
    """Extend the lease of a claimed task.

    \b
    Plain: "task ID: lease until TIMESTAMP".
    --json: {"id": ID, "claim_expires": TIMESTAMP}
    """
    expires = iso(service.heartbeat(_session(ctx), task_id, claim_lock=claim_lock, ttl_seconds=ttl))
    if as_json:
        _emit_json({"id": task_id, "claim_expires": expires})
    else:
        click.echo(f"task {task_id}: lease until {expires}")


@main.command("reap")
@_json_option()
@click.pass_context
def reap(ctx: click.Context, as_json: bool) -> None:
    """Reclaim every expired lease (release_stale_claims).

    \b
    Plain: "reclaimed N".   --json: {"reclaimed": N}
    """
    count = service.release_stale_claims(_session(ctx))
    if as_json:
        _emit_json({"reclaimed": count})
    else:
        click.echo(f"reclaimed {count}")


# -- board workflow ---------------------------------------------------------------------


@main.command("link")
@click.argument("parent_id", metavar="PARENT", type=int)
@click.argument("child_id", metavar="CHILD", type=int)
@_json_option()
@click.pass_context
def link(ctx: click.Context, parent_id: int, child_id: int, as_json: bool) -> None:
    """Make CHILD wait until PARENT is finished. --json: the child TASK."""
    _report(workflow.link_tasks(_session(ctx), parent=parent_id, child=child_id), as_json)


@main.command("unlink")
@click.argument("parent_id", metavar="PARENT", type=int)
@click.argument("child_id", metavar="CHILD", type=int)
@_json_option()
@click.pass_context
def unlink(ctx: click.Context, parent_id: int, child_id: int, as_json: bool) -> None:
    """Remove the dependency of CHILD on PARENT. --json: the child TASK."""
    _report(workflow.unlink_tasks(_session(ctx), parent=parent_id, child=child_id), as_json)


@main.command("specify")
@_ID
@_json_option()
@click.pass_context
def specify(ctx: click.Context, task_id: int, as_json: bool) -> None:
    """Move a task out of triage (to ready, or todo while a parent is unfinished)."""
    _report(workflow.specify_task(_session(ctx), task_id), as_json)


@main.command("submit")
@_ID
@click.option("--claim-lock", metavar="LOCK", required=True, help="The token `claim` printed.")
@click.option("--result")
@click.option("--summary")
@_json_option()
@click.pass_context
def submit(
    ctx: click.Context,
    task_id: int,
    claim_lock: str,
    result: str | None,
    summary: str | None,
    as_json: bool,
) -> None:
    """Hand a claimed task in for review. --json: the TASK, now in review."""
    task = workflow.submit_for_review(
        _session(ctx), task_id, claim_lock=claim_lock, result=result, summary=summary
    )
    _report(task, as_json)


@main.command("approve")
@_ID
@click.option("--reviewer", metavar="NAME")
@_json_option()
@click.pass_context
def approve(ctx: click.Context, task_id: int, reviewer: str | None, as_json: bool) -> None:
    """Accept a task in review: it is done. --json: TASK."""
    _report(workflow.approve_task(_session(ctx), task_id, reviewer=reviewer), as_json)


@main.command("request-changes")
@_ID
@click.option("--reason", required=True)
@click.option("--reviewer", metavar="NAME")
@_json_option()
@click.pass_context
def request_changes(
    ctx: click.Context, task_id: int, reason: str, reviewer: str | None, as_json: bool
) -> None:
    """Send a task in review back to ready. --json: TASK."""
    task = workflow.request_changes(_session(ctx), task_id, reason=reason, reviewer=reviewer)
    _report(task, as_json)


@main.command("reopen")
@_ID
@click.option("--reason")
@_json_option()
@click.pass_context
def reopen(ctx: click.Context, task_id: int, reason: str | None, as_json: bool) -> None:
    """Send a done task back to ready. --json: TASK."""
    _report(workflow.reopen_task(_session(ctx), task_id, reason=reason), as_json)


@main.command("archive")
@_ID
@click.option("--force", is_flag=True, help="Archive even a running task (voids its claim).")
@_json_option()
@click.pass_context
def archive(ctx: click.Context, task_id: int, force: bool, as_json: bool) -> None:
    """Archive a task (hidden from list and board). --json: TASK."""
    _report(workflow.archive_task(_session(ctx), task_id, force=force), as_json)


@main.command("comment")
@_ID
@click.option("--body", required=True, help="The comment.")
@click.option("--author", metavar="NAME")
@_json_option()
@click.pass_context
def comment(ctx: click.Context, task_id: int, body: str, author: str | None, as_json: bool) -> None:
    """Add a comment to a task, in any state.

    \b
    Plain: "comment N on task ID".   --json: the COMMENT (see `show --help`).
    """
    added = workflow.add_comment(_session(ctx), task_id, body=body, author=author)
    if as_json:
        _emit_json(comment_json(added))
    else:
        click.echo(f"comment {added.id} on task {task_id}")


@main.command("edit")
@_ID
@click.option("--title")
@click.option("--body")
@click.option("--assignee")
@click.option("--unassign", is_flag=True, help="Clear the assignee.")
@click.option("--priority", type=int)
@click.option("--max-attempts", type=int)
@click.option(
    "--max-runtime",
    type=float,
    metavar="SECONDS",
    help="A run of this task that takes longer is cancelled and the task failed.",
)
@_json_option()
@click.pass_context
def edit(
    ctx: click.Context,
    task_id: int,
    title: str | None,
    body: str | None,
    assignee: str | None,
    unassign: bool,
    priority: int | None,
    max_attempts: int | None,
    max_runtime: float | None,
    as_json: bool,
) -> None:
    """Change a task's fields, in any state. --json: TASK."""
    if unassign and assignee is not None:
        raise click.UsageError("give --assignee or --unassign, not both")
    changes: dict[str, Any] = {
        name: value
        for name, value in (
            ("title", title),
            ("body", body),
            ("assignee", assignee),
            ("priority", priority),
            ("max_attempts", max_attempts),
            ("max_runtime", max_runtime),
        )
        if value is not None
    }
    if unassign:
        changes["assignee"] = None
    if not changes:
        raise click.UsageError("nothing to change")
    _report(workflow.update_task(_session(ctx), task_id, **changes), as_json)


# -- watching the board -----------------------------------------------------------------


@main.command("events")
@click.option("task_id", "--task", type=int, metavar="ID", help="Only this task's events.")
@click.option("after_id", "--after", type=int, default=0, metavar="ID", help="Events after ID.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option(
    "--interval",
    type=float,
    default=5.0,
    show_default=True,
    help="With --follow: look at least this often (new events wake it sooner).",
)
@_json_option()
@click.pass_context
def events(
    ctx: click.Context,
    task_id: int | None,
    after_id: int,
    follow: bool,
    interval: float,
    as_json: bool,
) -> None:
    """Print events in id order from --after (default: the first); with --follow,
    keep printing new ones until SIGINT/SIGTERM, then exit 0. A follower is woken
    by new events (a cheap change check every few tens of milliseconds)
    and misses none, whatever order their transactions commit in.

    \b
    Plain: "ID TIMESTAMP task TASK KIND [run RUN] [PAYLOAD]" per line.
    --json: JSON Lines, one EVENT object per line (see `show --help`):
      {"id": 40, "task_id": 12, "run_id": 3, "kind": "claimed",
       "payload": {"claimer": "w1", "attempt": 1}, "created_at": "...Z"}
    """
    session = _session(ctx)
    stop = threading.Event()
    last = after_id
    changes = wakeup.watch(session, wakeup.EVENTS) if follow else None
    try:
        with _stop_signals(lambda _count: stop.set()):
            while True:
                seen = 0 if changes is None else changes.mark()  # before the read
                batch = service.list_events(session, task_id=task_id, after_id=last, limit=1000)
                for event in batch:
                    click.echo(json.dumps(event_json(event)) if as_json else _event_line(event))
                    last = event.id
                sys.stdout.flush()
                if changes is None or stop.is_set():
                    return
                if len(batch) < 1000:
                    changes.wait(seen, interval, stop)
    finally:
        if changes is not None:
            changes.release()


@main.command("stats")
@click.option("--tenant")
@_json_option()
@click.pass_context
def stats(ctx: click.Context, tenant: str | None, as_json: bool) -> None:
    """Counts by status, open tasks by assignee, and the oldest ready task's age.

    Computed by the kernel's board_stats (ages on the database's clock); open means
    not done and not archived.

    \b
    --json: {"by_status": {"triage": 0, "todo": 0, "ready": 3, "running": 1,
                           "review": 0, "blocked": 0, "done": 7, "archived": 0},
             "by_assignee": [{"assignee": "alice", "count": 2},
                             {"assignee": null, "count": 1}],
             "oldest_ready_age_seconds": 12.5}
    by_assignee is sorted by assignee (null last); the age is null with nothing ready.
    """
    figures = workflow.board_stats(_session(ctx), tenant=tenant)
    by_assignee = sorted(
        figures["by_assignee"].items(), key=lambda item: (item[0] is None, item[0] or "")
    )
    age = figures["oldest_ready_age_seconds"]
    if as_json:
        _emit_json(
            {
                "by_status": figures["by_status"],
                "by_assignee": [{"assignee": who, "count": n} for who, n in by_assignee],
                "oldest_ready_age_seconds": age,
            }
        )
        return
    click.echo("by status:")
    for name, count in figures["by_status"].items():
        click.echo(f"  {name:<10} {count}")
    click.echo("open tasks by assignee:")
    for who, count in by_assignee:
        click.echo(f"  {who or '(unassigned)':<14} {count}")
    oldest = "-" if age is None else board_view.format_duration(age)
    click.echo(f"oldest ready task: {oldest}")


@main.command("board")
@click.option("--tenant", help="Only this tenant's tasks.")
@click.option("--watch", is_flag=True, help="Redraw in place until Ctrl-C.")
@click.option("--interval", type=float, default=2.0, show_default=True, help="--watch seconds.")
@click.option("--max-cards", type=click.IntRange(min=1), help="Cards per column.")
@click.option("--width", type=click.IntRange(min=40), help="Columns (default: the terminal's).")
@click.pass_context
def board(
    ctx: click.Context,
    tenant: str | None,
    watch: bool,
    interval: float,
    max_cards: int | None,
    width: int | None,
) -> None:
    """Draw the board: a column per status, a card per task (archived left out).

    A card shows its id, priority, title (cut to fit), age and assignee; a running card
    shows its lease time left instead of its age, and who claimed it. With --watch the
    board is redrawn every --interval seconds, as many cards per column as the
    terminal's height fits.
    """
    from rich.console import Console
    from rich.live import Live

    session = _session(ctx)
    console = Console(width=width, highlight=False)
    title = f"kanban board: tenant {tenant}" if tenant else None

    def draw(cards: int | None) -> Any:
        tasks, counts = workflow.board_cards(session, tenant=tenant, per_column=cards)
        return board_view.render_board(
            tasks,
            _db_now(session),
            title=title,
            max_cards=cards,
            counts=counts,
            claimers=_claimers(session, tasks),
            width=console.width,
        )

    if not watch:
        console.print(draw(max_cards))
        return
    stop = threading.Event()
    with (
        _stop_signals(lambda _count: stop.set()),
        Live(
            draw(max_cards or board_view.cards_that_fit(console.height)),
            console=console,
            auto_refresh=False,
            screen=False,
        ) as live,
    ):
        while not stop.wait(interval):
            live.update(draw(max_cards or board_view.cards_that_fit(console.height)), refresh=True)


def _claimers(session: Session, tasks: list[Task]) -> dict[int, str]:
    """Who holds each running task: the claimer of its open run."""
    runs = {t.current_run_id: t.id for t in tasks if t.current_run_id is not None}
    if not runs:
        return {}
    rows = session.execute(q.RUN_CLAIMERS, {"ids": list(runs)}).all()
    session.rollback()  # a read of its own: end it, as _db_now does
    return {runs[run_id]: claimer for run_id, claimer in rows}


# -- the worker runner ------------------------------------------------------------------


@main.command("work", context_settings={"allow_interspersed_args": False})
@click.option("--assignee", help="Only claim tasks assigned to A.")
@click.option("--tenant", help="Only claim tasks of tenant T.")
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--prefetch",
    type=click.IntRange(min=0, max=MAX_PREFETCH),
    default=0,
    show_default=True,
    help=(
        "Tasks each slot may hold claimed beside the one it runs, while commands are short;"
        " their completions commit together, with the next claim."
    ),
)
@click.option("--ttl", type=float, metavar="SECONDS", help="Lease length; heartbeat every ttl/3.")
@click.option("--drain", is_flag=True, help="Exit when nothing is claimable (else idle).")
@click.option("--claimer", metavar="NAME", help="Recorded on each run (default: host:pid).")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="On SIGINT/SIGTERM, seconds a running command may take to finish.",
)
@click.option(
    "--idle-max",
    type=click.FloatRange(min=0.01),
    default=5.0,
    show_default=True,
    help="Longest sleep between polls of an empty board.",
)
@click.option(
    "--max-runtime",
    type=click.FloatRange(min=0, min_open=True, max=MAX_RUNTIME_SECONDS),
    metavar="SECONDS",
    help="Kill a command running longer (its process group) and fail its task.",
)
@click.option("--quiet", "-q", is_flag=True, help="Log warnings and errors only.")
@click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Run each command in a fresh DIR/<task>-<run>; removed on success, kept on failure.",
)
@click.option(
    "git_repo",
    "--git",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    metavar="REPO",
    help="Run each command in a git worktree of REPO; removed on success, kept on failure.",
)
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Per-run logs (default: $KANBAN_LOG_DIR, else $KANBAN_HOME/logs).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def work(
    ctx: click.Context,
    assignee: str | None,
    tenant: str | None,
    concurrency: int,
    prefetch: int,
    ttl: float | None,
    drain: bool,
    claimer: str | None,
    grace: float,
    idle_max: float,
    max_runtime: float | None,
    quiet: bool,
    workspace: Path | None,
    git_repo: Path | None,
    log_dir: Path | None,
    command: tuple[str, ...],
) -> None:
    """Claim tasks and run COMMAND once per task: kanban-orm work [OPTIONS] -- CMD ARGS...

    \b
    The command gets the TASK as JSON (see `show --help`) on stdin, and in its
    environment KANBAN_TASK_ID, KANBAN_CLAIM_LOCK, KANBAN_RUN_ID,
    KANBAN_TASK_ATTEMPT and KANBAN_DATABASE_URL.
    Exit status 0 completes the task with stdout as its result (one trailing
    newline dropped); any other status fails it with the tail of stderr as the
    error, so it is retried with backoff until max attempts, then blocked.
    The lease is renewed every ttl/3 seconds while the command runs.
    --max-runtime SECONDS (or a task's own max runtime, if shorter): a command still
    running then is terminated with its process group (SIGTERM, then SIGKILL after
    5 s) and its task failed with an error naming the limit.
    The worker registers itself (see `workers`): if it dies, the next worker to claim
    releases its tasks at once instead of when their leases expire.
    \b
    --workspace DIR / --git REPO / --log-dir DIR: each run works in DIR/<task>-<run>
    (a git worktree of REPO on branch kanban/task-<task>-run-<run>, removed on
    success), with KANBAN_WORKSPACE, KANBAN_TASK_JSON and KANBAN_OUTPUT set; its
    stdout and stderr go to <log dir>/<task>-<run>.log (see `kanban-orm logs`) and
    files it writes into $KANBAN_OUTPUT are attached to the run on success.
    \b
    SIGINT/SIGTERM: stop claiming and let running commands finish within --grace
    seconds; then terminate them (SIGTERM, then SIGKILL after 5 s) and release their
    tasks back to ready. A second signal skips the rest of the grace period.
    Logs go to stderr; the exit status is 0 after a drain or a signal.
    """
    if shutil.which(command[0]) is None:
        raise click.UsageError(f"command not found: {command[0]}")
    url = ctx.find_root().params.get("db")
    _engine(ctx)  # a bad URL fails here, as one line, before any thread starts
    handler: CommandHandler
    if workspace is None and git_repo is None and log_dir is None:
        handler = CommandHandler(command, url=_url(ctx))
    else:
        handler = WorkspaceCommandHandler(
            command, url=_url(ctx), workspace=workspace, git_repo=git_repo, log_dir=log_dir
        )
    worker = Worker(
        handler,
        url=url,
        claimer=claimer,
        assignee=assignee,
        tenant=tenant,
        ttl_seconds=ttl,
        concurrency=concurrency,
        prefetch=prefetch,
        drain=drain,
        grace_seconds=grace,
        idle_max=max(idle_max, 0.25),
        idle_min=min(0.25, idle_max),
        max_runtime=max_runtime,
    )
    logger = logging.getLogger("kanban_orm.worker")

    def on_signal(count: int) -> None:
        if count == 1:
            logger.info("stopping: no new claims; running commands have %gs to finish", grace)
        worker.stop(immediately=count > 1)

    handler_ = _EchoHandler()
    level = logger.level
    logger.addHandler(handler_)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        with _stop_signals(on_signal):
            stats = worker.run()
        logger.info("worker stopped: %s", stats)
    finally:
        logger.removeHandler(handler_)
        logger.setLevel(level)


class _EchoHandler(logging.Handler):
    """Log lines on the command's stderr (whatever sys.stderr is at the time)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s work: %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:
            self.handleError(record)


@main.command(
    "stress",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def stress(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Run the stress suite (see `kanban-orm stress --help`)."""
    url = ctx.find_root().params.get("db")
    argv = list(args)
    if url and "--db" not in argv:
        argv = ["--db", url, *argv]
    sys.exit(_stress_main()(argv))


def _stress_main() -> Callable[[list[str]], int]:
    """The stress suite's entry point: packaged in the wheel, or the checkout's."""
    for package in ("kanban_orm._stress", "stress"):
        try:
            module = importlib.import_module(f"{package}.__main__")
        except ModuleNotFoundError as error:
            if error.name not in (package, f"{package}.__main__"):
                raise
            continue
        entry: Callable[[list[str]], int] = module.main
        return entry
    raise KanbanError("the stress suite is not installed (no kanban_orm._stress or stress)")


# Commands with modules of their own, registered last: each imports what it needs from here.
from . import cli_ops  # noqa: E402
from .agents_cli import logs_command, mcp_command  # noqa: E402
from .web.serve import serve as _serve  # noqa: E402

for _command in (*cli_ops.COMMANDS, _serve, mcp_command, logs_command):
    main.add_command(_command)

if __name__ == "__main__":  # python -m kanban_orm.cli
    main()
