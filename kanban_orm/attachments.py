"""Files kept with a task, in the database: what a run produced, a log, a report.

An attachment lives in ``kanban_task_attachments`` with its task (deleted with it), is
capped in size (``KANBAN_MAX_ATTACHMENT_BYTES``, 25 MiB by default) and has a sanitised
name: only the last component of a path is kept, so writing attachments back out under
their names can never escape the directory they are written to.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, insert, select
from sqlalchemy.orm import Session

from . import config, steps
from . import validation as check
from .db import run_read, run_write
from .driver import Tx
from .errors import AttachmentNotFound, InvalidInput
from .models import ATTACHMENT_NAME_MAX_LENGTH, TaskAttachment, TaskRun

_attachments: Table = TaskAttachment.__table__  # type: ignore[assignment]
#: Every column but the bytes.
_INFO = (
    TaskAttachment.id,
    TaskAttachment.task_id,
    TaskAttachment.run_id,
    TaskAttachment.name,
    TaskAttachment.size,
    TaskAttachment.sha256,
    TaskAttachment.created_at,
)
INSERT_ATTACHMENT = insert(_attachments).returning(*(c for c in _attachments.c if c.key != "data"))
RUN_OF_TASK = select(TaskRun.task_id).where(TaskRun.id == bindparam("run_id"))

# Characters some file system refuses, or a shell or a URL would read specially.
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"|?*]')
_PATH_SEPARATORS = re.compile(r"[\\/]")


@dataclass(frozen=True)
class Attachment:
    """What is known of an attachment without reading its bytes."""

    id: int
    task_id: int
    run_id: int | None
    name: str
    size: int
    sha256: str
    created_at: datetime


def sanitize_name(name: object) -> str:
    """``name`` as a safe bare file name: the last path component, control and reserved
    characters replaced by ``_``, at most 255 characters (the extension kept).

    Raises :class:`InvalidInput` when nothing usable is left (empty, ``.``, ``..``, a
    path ending in a separator).
    """
    if not isinstance(name, str):
        raise InvalidInput(f"name must be a string, not {type(name).__name__}")
    base = _PATH_SEPARATORS.split(name)[-1]
    cleaned = _UNSAFE.sub("_", base).strip()
    if not cleaned.strip("."):
        raise InvalidInput(f"attachment name {name!r} has no file name in it")
    if len(cleaned) > ATTACHMENT_NAME_MAX_LENGTH:
        stem, dot, extension = cleaned.rpartition(".")
        if dot and 0 < len(extension) <= 16:
            room = ATTACHMENT_NAME_MAX_LENGTH - len(extension) - 1
            cleaned = f"{stem[:room]}.{extension}"
        else:
            cleaned = cleaned[:ATTACHMENT_NAME_MAX_LENGTH]
    return cleaned


def _content(data: object) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise InvalidInput(f"data must be bytes or str, not {type(data).__name__}")


def attach(
    session: Session,
    task_id: int,
    *,
    name: str,
    data: bytes | str,
    run_id: int | None = None,
) -> Attachment:
    """Store ``data`` (bytes, or text kept as UTF-8) with the task, under ``name``
    sanitised (see :func:`sanitize_name`); an ``attached`` event is written with it.

    A task may hold several attachments of one name (one per run, say); reads by name
    return the newest. ``run_id`` links it to one of the task's runs. Returns the
    :class:`Attachment`. Raises :class:`TaskNotFound`, :class:`InvalidInput` (no usable
    name, larger than ``KANBAN_MAX_ATTACHMENT_BYTES``, a run of another task),
    :class:`ConfigError` (a bad ``KANBAN_MAX_ATTACHMENT_BYTES``); nothing is written then.
    """
    task_id = check.task_id(task_id)
    safe = sanitize_name(name)
    content = _content(data)
    cap = config.max_attachment_bytes()
    if len(content) > cap:
        raise InvalidInput(
            f"attachment {safe!r} is {len(content)} bytes; the most kept is {cap}"
            f" ({config.ENV_MAX_ATTACHMENT_BYTES})"
        )
    run = None if run_id is None else check.task_id(run_id)
    values: dict[str, Any] = {
        "task_id": task_id,
        "run_id": run,
        "name": safe,
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "data": content,
    }

    def work(s: Tx) -> Attachment:
        steps.require_task(s, task_id)
        if run is not None and s.execute(RUN_OF_TASK, {"run_id": run}).scalar() != task_id:
            raise InvalidInput(f"run {run} is not a run of task {task_id}")
        row = s.execute(INSERT_ATTACHMENT, values).first()
        stored = Attachment(**row._asdict())
        steps.record(
            s,
            task_id,
            "attached",
            run,
            {"attachment_id": stored.id, "name": safe, "size": stored.size},
        )
        return stored

    return run_write(session, work)


def list_attachments(session: Session, task_id: int) -> list[Attachment]:
    """The task's attachments, oldest first, without their bytes. Raises :class:`TaskNotFound`."""
    task_id = check.task_id(task_id)
    statement = select(*_INFO).where(TaskAttachment.task_id == task_id).order_by(TaskAttachment.id)

    def read(s: Session) -> list[Attachment]:
        found = [Attachment(**row._asdict()) for row in s.execute(statement)]
        if not found:
            steps.require_task(s, task_id)
        return found

    return run_read(session, read)


def read_attachment(session: Session, task_id: int, name: str) -> bytes:
    """The bytes of the task's newest attachment named ``name`` (sanitised as by
    :func:`attach`, so the name given to ``attach`` finds it).

    Raises :class:`TaskNotFound`, :class:`AttachmentNotFound`, :class:`InvalidInput`.
    """
    task_id = check.task_id(task_id)
    safe = sanitize_name(name)
    statement = (
        select(TaskAttachment.data)
        .where(TaskAttachment.task_id == task_id, TaskAttachment.name == safe)
        .order_by(TaskAttachment.id.desc())
        .limit(1)
    )

    def read(s: Session) -> bytes:
        data = s.execute(statement).scalar()
        if data is None:
            steps.require_task(s, task_id)
            raise AttachmentNotFound(task_id, safe)
        return bytes(data)

    return run_read(session, read)


def attachment_json(attachment: Attachment) -> dict[str, Any]:
    """An attachment as a JSON object (no bytes; timestamps UTC ISO 8601 with a ``Z``)."""
    return {
        "id": attachment.id,
        "task_id": attachment.task_id,
        "run_id": attachment.run_id,
        "name": attachment.name,
        "size": attachment.size,
        "sha256": attachment.sha256,
        "created_at": attachment.created_at.isoformat() + "Z",
    }


__all__ = [
    "Attachment",
    "attach",
    "attachment_json",
    "list_attachments",
    "read_attachment",
    "sanitize_name",
]
