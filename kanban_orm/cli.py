"""The ``kanban-orm`` command.

Errors the user can act on (a :class:`KanbanError`) print one line on stderr and exit 1;
usage errors exit 2 (click's convention).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from . import db, migrate
from .errors import KanbanError


@contextmanager
def _kanban_errors() -> Iterator[None]:
    try:
        yield
    except KanbanError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    except DBAPIError as error:  # cannot connect, no such database, permission denied ...
        first_line = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        click.echo(f"error: database: {first_line}", err=True)
        sys.exit(1)


class _Group(click.Group):
    """A click group whose commands turn a KanbanError into one line and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        with _kanban_errors():
            return super().invoke(ctx)


def _engine(ctx: click.Context) -> Engine:
    url: str | None = ctx.find_root().params.get("db")
    return db.cached_engine(url)


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
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Migrate the kanban tables up to REVISION (safe to run concurrently)."""
    engine = _engine(ctx)
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
    """Print the revision the database is at ('base' before the first upgrade)."""
    click.echo(migrate.current(_engine(ctx)) or "base")


@db_group.command("check")
@click.pass_context
def db_check(ctx: click.Context) -> None:
    """Exit 1 unless the database is at head and matches the models."""
    migrate.check(_engine(ctx))
    click.echo(f"ok: at {migrate.head()}, schema matches the models")


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
