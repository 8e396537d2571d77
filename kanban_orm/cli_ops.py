"""Operations commands: ``prune``, ``delete``, ``reassign`` and ``doctor``.

Registered on the ``kanban-orm`` group at the end of :mod:`kanban_orm.cli`; the group
turns a :class:`KanbanError` into one line on stderr and exit status 1.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import click
from sqlalchemy.orm import Session

from . import doctor as checks
from . import maintenance, registry
from .errors import InvalidInput
from .serialize import iso

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_cutoff(value: str | None) -> datetime | timedelta | None:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` (an age) or an ISO 8601 datetime (UTC
    when it has no offset)."""
    if value is None:
        return None
    age = _AGE.match(value.strip())
    if age:
        return timedelta(seconds=float(age.group(1)) * _UNIT_SECONDS[age.group(2)])
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"{value!r} is neither an age (30d, 12h, 90m, 45s, 2w) nor an ISO 8601 datetime"
        ) from None


def _session(ctx: click.Context) -> Session:
    from .cli import _session as cli_session  # cli imports this module at its end

    return cli_session(ctx)


def _emit_json(value: Any) -> None:
    from .cli import _emit_json as emit

    emit(value)


_CUTOFF_HELP = "an age (30d, 12h, 90m) or an ISO 8601 datetime (UTC)"


@click.command("prune")
@click.option(
    "--done-before", metavar="AGE|WHEN", help=f"Remove tasks done before: {_CUTOFF_HELP}."
)
@click.option(
    "--archived-before", metavar="AGE|WHEN", help=f"Remove tasks archived before: {_CUTOFF_HELP}."
)
@click.option(
    "--events-before",
    metavar="AGE|WHEN",
    help=f"Remove older events of finished tasks that stay: {_CUTOFF_HELP}.",
)
@click.option(
    "--batch",
    type=click.IntRange(1, maintenance.MAX_BATCH),
    default=maintenance.DEFAULT_BATCH,
    show_default=True,
    help="Tasks or events per transaction.",
)
@click.option("--dry-run", is_flag=True, help="Print what would go; remove nothing.")
@click.option("as_json", "--json", is_flag=True, help="Print the counts as JSON.")
@click.pass_context
def prune_command(
    ctx: click.Context,
    done_before: str | None,
    archived_before: str | None,
    events_before: str | None,
    batch: int,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Remove finished history in small batches (never an unfinished task, never a
    parent an unfinished child counts on)."""
    result = maintenance.prune(
        _session(ctx),
        done_before=parse_cutoff(done_before),
        archived_before=parse_cutoff(archived_before),
        events_before=parse_cutoff(events_before),
        batch=batch,
        dry_run=dry_run,
    )
    if as_json:
        _emit_json({**result.removed(), "batches": result.batches, "dry_run": result.dry_run})
        return
    counts = ", ".join(f"{count} {name}" for name, count in result.removed().items())
    if dry_run:
        click.echo(f"would remove: {counts}")
    else:
        click.echo(f"removed: {counts} in {result.batches} batch(es)")


@click.command("delete")
@click.argument("task_id", metavar="ID", type=int)
@click.option("--force", is_flag=True, help="Delete a running task too (its claim is voided).")
@click.option("--reason", help="Why, for the board log.")
@click.option("--by", "deleted_by", metavar="NAME", help="Who, for the board log.")
@click.option("as_json", "--json", is_flag=True, help="Print the board log entry id as JSON.")
@click.pass_context
def delete_command(
    ctx: click.Context,
    task_id: int,
    force: bool,
    reason: str | None,
    deleted_by: str | None,
    as_json: bool,
) -> None:
    """Delete task ID with its history; one `deleted` entry in the board log."""
    entry = maintenance.delete_task(
        _session(ctx), task_id, force=force, reason=reason, deleted_by=deleted_by
    )
    if as_json:
        _emit_json({"task_id": task_id, "board_event_id": entry})
    else:
        click.echo(f"task {task_id}: deleted (board event {entry})")


@click.command("reassign")
@click.argument("task_id", metavar="ID", type=int)
@click.option("--assignee", metavar="NAME", help="The new assignee.")
@click.option("--unassign", is_flag=True, help="Leave the task to any worker.")
@click.option("--by", metavar="NAME", help="Who, for the event.")
@click.option("as_json", "--json", is_flag=True, help="Print the TASK as JSON.")
@click.pass_context
def reassign_command(
    ctx: click.Context,
    task_id: int,
    assignee: str | None,
    unassign: bool,
    by: str | None,
    as_json: bool,
) -> None:
    """Give task ID to another assignee (a running task keeps its claim)."""
    if (assignee is None) == (not unassign):
        raise click.UsageError("give exactly one of --assignee NAME or --unassign")
    task = maintenance.reassign_task(_session(ctx), task_id, assignee=assignee, by=by)
    from .cli import _report

    _report(task, as_json)


@click.command("doctor")
@click.option("--repair", is_flag=True, help="Apply the safe repairs (each logged).")
@click.option(
    "--stale-after",
    metavar="AGE",
    default="30m",
    show_default=True,
    help="A lease expired longer ago than this has no reclaimer.",
)
@click.option(
    "--full", is_flag=True, help="SQLite: PRAGMA integrity_check (slower) instead of quick_check."
)
@click.option("as_json", "--json", is_flag=True, help="Print the findings as JSON.")
@click.pass_context
def doctor_command(
    ctx: click.Context, repair: bool, stale_after: str, full: bool, as_json: bool
) -> None:
    """Check what the database cannot enforce by itself; exit 1 while a warning or an
    error remains."""
    stale = parse_cutoff(stale_after)
    if not isinstance(stale, timedelta):
        raise click.BadParameter("an age such as 30m or 2h", param_hint="--stale-after")
    findings = checks.doctor(_session(ctx), repair=repair, stale_after=stale, full=full)
    if as_json:
        _emit_json([finding.as_json() for finding in findings])
    else:
        for finding in findings:
            state = "repaired" if finding.repaired else finding.severity
            click.echo(f"{state:>8}  {finding.check}: {finding.message}")
            if finding.fix and finding.severity != checks.OK and not finding.repaired:
                click.echo(f"{'':>8}  fix: {finding.fix}")
            if finding.task_ids:
                click.echo(f"{'':>8}  tasks: {', '.join(map(str, finding.task_ids))}")
    if any(finding.needs_attention for finding in findings):
        ctx.exit(1)


@click.command("workers")
@click.option("everyone", "--all", is_flag=True, help="Also the stopped and dead ones.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("as_json", "--json", is_flag=True, help="Print the workers as JSON.")
@click.pass_context
def workers_command(ctx: click.Context, everyone: bool, limit: int, as_json: bool) -> None:
    """List the registered workers, newest first: host, pid, started, last seen,
    state (alive, dead: its claims are released by the next claimer; with --all also
    stopped) and the claims each holds.

    \b
    Plain: one line each: ID STATE CLAIMER HOST PID STARTED LAST-SEEN CLAIMS.
    --json: [{"id", "claimer", "host", "pid", "started_at", "last_seen_at",
              "stopped_at", "state", "claims"}, ...]
    """
    found = registry.list_workers(_session(ctx), everyone=everyone, limit=limit)
    if as_json:
        _emit_json([_worker_json(worker) for worker in found])
        return
    if not found:
        click.echo("no workers registered" if everyone else "no live workers")
    for w in found:
        seen = iso(w.last_seen_at)
        click.echo(
            f"{w.id:>5}  {w.state:<7}  {w.claimer}  {w.host}  pid {w.pid}"
            f"  started {iso(w.started_at)}  seen {seen}  claims {w.claims}"
        )


def _worker_json(worker: registry.WorkerInfo) -> dict[str, Any]:
    return {
        "id": worker.id,
        "claimer": worker.claimer,
        "host": worker.host,
        "pid": worker.pid,
        "started_at": iso(worker.started_at),
        "last_seen_at": iso(worker.last_seen_at),
        "stopped_at": iso(worker.stopped_at),
        "state": worker.state,
        "claims": worker.claims,
    }


COMMANDS = (prune_command, delete_command, reassign_command, doctor_command, workers_command)
