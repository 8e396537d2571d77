"""The library's exceptions: one root, one subclass per thing a caller can act on.

A subclass's docstring is its default message, so ``raise TaskNotFound()`` reads well.
Driver errors are translated at the boundary (see :mod:`kanban_orm.db`), so callers
never need to catch a DBAPI type.
"""

from __future__ import annotations

from typing import Any


class OwnAttributesType(type):
    """The type of a class whose ``dir()`` lists only what the class itself defines, so
    ``help()`` shows that and names its bases instead of repeating their documentation
    (Exception's for every error, Session's for KeepingSession). Instances still list
    everything they have."""

    def __dir__(cls) -> list[str]:
        return sorted(vars(cls))


class KanbanError(Exception, metaclass=OwnAttributesType):
    """A kanban_orm operation failed."""

    def __init__(self, message: str | None = None, **context: Any) -> None:
        self.context = context
        super().__init__(message or (self.__doc__ or "").strip().splitlines()[0])


class TaskNotFound(KanbanError):
    """No task with that id exists."""

    def __init__(self, task_id: int | None = None, message: str | None = None) -> None:
        self.task_id = task_id
        super().__init__(message or (f"task {task_id} does not exist" if task_id else None))


class InvalidTransition(KanbanError):
    """The task cannot move from its current state to the requested one."""

    def __init__(
        self,
        task_id: int,
        from_status: str,
        to_status: str,
        *,
        needs: tuple[str, ...] = (),
        unless: str | None = None,
    ) -> None:
        self.task_id = task_id
        self.from_status = str(from_status)
        self.to_status = str(to_status)
        #: the states the call moves a task from, when that is the narrower reason
        self.needs = tuple(str(s) for s in needs)
        message = f"task {task_id} cannot move from {self.from_status!r} to {self.to_status!r}"
        if self.needs:
            wanted = " or ".join(repr(s) for s in self.needs)
            message = f"task {task_id} is {self.from_status!r}; this moves only a {wanted} task"
        elif self.from_status == self.to_status:
            message = f"task {task_id} is already {self.from_status!r}"
        if unless is not None:
            message += f" unless {unless}"
        super().__init__(message)


class ClaimLost(KanbanError):
    """The caller's claim_lock does not hold the task (reclaimed, finished, or never held)."""

    def __init__(self, task_id: int, message: str | None = None) -> None:
        self.task_id = task_id
        super().__init__(message or f"task {task_id}: the claim_lock given does not hold the task")


class AttachmentNotFound(KanbanError):
    """The task has no attachment of that name."""

    def __init__(self, task_id: int, name: str) -> None:
        self.task_id = task_id
        self.name = name
        super().__init__(f"task {task_id} has no attachment named {name!r}")


class DatabaseBusy(KanbanError):
    """The database stayed locked or kept aborting the transaction; the retry layer gave up."""


class InvalidInput(KanbanError):
    """An argument was rejected before anything was written."""


class ConfigError(KanbanError, ValueError):
    """A setting kanban_orm cannot use: an environment variable (``KANBAN_*``) or an
    engine option. A ValueError too, as these were before they had a class of their own."""


class EventsPruned(KanbanError):
    """Events after the follower's cursor were removed (by prune or delete_task).

    ``pruned_through`` is the highest event id that may be missing: read what was removed
    from the board log (:func:`kanban_orm.list_board_events`), then resume tailing with
    ``after_id=pruned_through``.
    """

    def __init__(self, after_id: int, pruned_through: int) -> None:
        self.after_id = after_id
        self.pruned_through = pruned_through
        super().__init__(
            f"events after {after_id} up to {pruned_through} may have been pruned;"
            f" resume with after_id={pruned_through}"
        )


class DatabaseUnavailable(KanbanError):
    """The database server could not be reached or was restarting, and stayed so for
    the retry layer's whole time budget. Retryable: the same call may succeed later."""


class DatabaseError(KanbanError):
    """The database driver reported an error that no other kanban_orm error describes.
    This one's ``__cause__`` is SQLAlchemy's :class:`~sqlalchemy.exc.DBAPIError`, whose
    ``orig`` is the driver's own exception (``error.__cause__.orig``)."""


class DatabaseReadOnly(DatabaseError):
    """The database refused a write because it is read-only for this process (a SQLite
    file or its directory this process may not write, a ``mode=ro`` URI, a read-only
    mount). Raised at once, not retried: nothing was written."""


class SchemaOutOfDate(KanbanError):
    """The database schema is not at the library's head revision."""


class MigrationError(KanbanError):
    """Alembic refused the migration (an unknown revision, for instance)."""
