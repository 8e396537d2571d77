"""The embedded board's files: private when kanban_orm creates them, reported when not.

Task bodies, results, errors and comments often hold prompts, outputs and secrets, so a
folder kanban_orm creates for a SQLite board is 0700 and a database file it creates is
0600, whatever the umask. SQLite gives a database's ``-wal`` and ``-shm`` files the
mode of the database file itself, so creating the (empty, and so valid) database file
before SQLite opens it is what makes those private too.

A file that already exists keeps its mode: the operator may have shared it on purpose.
:func:`exposed_board_files` lists the files other users can read, for ``db check`` (and
``doctor``) to warn about.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
#: What SQLite adds to a database's name for its write-ahead log and shared memory.
SIDE_FILE_SUFFIXES = ("-wal", "-shm")


def make_private_dirs(folder: Path) -> list[Path]:
    """Create ``folder`` and any missing parents, each 0700; existing ones are left as
    they are. Returns the folders created, outermost first."""
    missing: list[Path] = []
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    created: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:  # another process made it first: theirs, left alone
            continue
        os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode is cut by the umask, never raised
        created.append(path)
    return created


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 if it does not exist; True if this call made it.

    An existing file (made by another process a moment ago, or by the operator) is not
    touched.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # exactly 0600, whatever the umask took away
    finally:
        os.close(fd)
    return True


def sqlite_file(url: str | sa.URL) -> Path | None:
    """The database file a SQLite URL names (``~`` expanded); None for another backend,
    an in-memory database, a ``file:`` URI or no URL at all."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        return None  # for the engine's set-up to report, as it reports every bad URL
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if sa.util.asbool(parsed.query.get("uri", False)):
        return None
    return Path(parsed.database).expanduser()


@dataclass(frozen=True)
class ExposedFile:
    """A board file that users other than its owner can read."""

    path: Path
    mode: int

    @property
    def readers(self) -> str:
        """Who besides the owner can read it: ``"other users"``, ``"its group"`` or both."""
        who = []
        if self.mode & stat.S_IRGRP:
            who.append("its group")
        if self.mode & stat.S_IROTH:
            who.append("other users")
        return " and ".join(who)

    @property
    def warning(self) -> str:
        """One line for an operator: what is exposed and the command that fixes it."""
        return (
            f"{self.path} is readable by {self.readers} (mode {self.mode:04o}); "
            f"task bodies, results and comments are in it: chmod 600 {self.path}"
        )


def exposed_board_files(url: str | sa.URL) -> list[ExposedFile]:
    """The files of the SQLite board at ``url`` (the database, its ``-wal`` and ``-shm``)
    that its group or other users can read, in that order; empty when there are none,
    the files do not exist, or ``url`` is not a SQLite file (a server keeps its own).

    Nothing is changed: deciding who may read the board is the operator's call.
    """
    database = sqlite_file(url)
    if database is None:
        return []
    exposed = []
    for path in (database, *(Path(f"{database}{s}") for s in SIDE_FILE_SUFFIXES)):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            exposed.append(ExposedFile(path, mode))
    return exposed
