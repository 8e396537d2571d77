"""Every database difference, one module per backend (see :mod:`.base`).

:func:`of` and :func:`for_dialect` give the backend serving a Session, Engine,
Connection or dialect; nothing outside this package asks a dialect its name.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.orm import Session

from .base import Backend, PortableBackend
from .mysql import MySQLBackend
from .postgresql import PostgreSQLBackend
from .sqlite import SQLiteBackend

#: The backends kanban_orm's SQL is written for, by SQLAlchemy backend name.
BACKENDS: dict[str, Backend] = {
    backend.name: backend for backend in (SQLiteBackend(), PostgreSQLBackend(), MySQLBackend())
}
#: A ``mariadb://`` URL is SQLAlchemy's MariaDB dialect: the same backend.
BACKENDS["mariadb"] = BACKENDS["mysql"]


class UnsupportedBackend(LookupError):
    """No kanban_orm backend serves this database."""


def named(name: str) -> Backend:
    """The backend for a SQLAlchemy backend name (``sqlite``, ``postgresql``, ...)."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise UnsupportedBackend(name) from None


def for_dialect(dialect: Dialect) -> Backend:
    """The backend serving ``dialect``."""
    return named(dialect.name)


def of(bind: Session | Engine | Connection | Any) -> Backend:
    """The backend serving a Session (its bind), an Engine or a Connection."""
    if isinstance(bind, Session):
        bind = bind.get_bind()
    return for_dialect(bind.dialect)


def supported() -> str:
    """The backends' names for a message: ``SQLite and PostgreSQL``."""
    titles = list(dict.fromkeys(backend.title for backend in BACKENDS.values()))
    return ", ".join(titles[:-1]) + f" and {titles[-1]}" if len(titles) > 1 else titles[0]


__all__ = [
    "BACKENDS",
    "Backend",
    "MySQLBackend",
    "PortableBackend",
    "PostgreSQLBackend",
    "SQLiteBackend",
    "UnsupportedBackend",
    "for_dialect",
    "named",
    "of",
    "supported",
]
