"""The JSON shapes of tasks, runs, events and comments: what ``kanban-orm ... --json``
prints and what a ``kanban-orm work`` command reads on stdin (see :mod:`kanban_orm.cli`).

Timestamps are naive UTC in the database, written as ISO 8601 with a ``Z``; absent
values are ``null``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .models import Task, TaskComment, TaskEvent, TaskRun

__all__ = ["comment_json", "event_json", "iso", "run_json", "task_json"]


def iso(value: datetime | None) -> str | None:
    """A naive UTC timestamp as ISO 8601 with a ``Z``: ``2024-05-01T12:00:00.123456Z``."""
    return None if value is None else value.isoformat() + "Z"


def task_json(task: Task) -> dict[str, Any]:
    """A task as a JSON object (every column; timestamps as :func:`iso`)."""
    return {
        "id": task.id,
        "title": task.title,
        "body": task.body,
        "status": task.status,
        "priority": task.priority,
        "assignee": task.assignee,
        "tenant": task.tenant,
        "created_by": task.created_by,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "max_runtime": task.max_runtime,
        "claim_lock": task.claim_lock,
        "claim_expires": iso(task.claim_expires),
        "current_run_id": task.current_run_id,
        "run_at": iso(task.run_at),
        "idempotency_key": task.idempotency_key,
        "result": task.result,
        "block_reason": task.block_reason,
        "version": task.version,
        "created_at": iso(task.created_at),
        "updated_at": iso(task.updated_at),
        "started_at": iso(task.started_at),
        "completed_at": iso(task.completed_at),
    }


def comment_json(comment: TaskComment) -> dict[str, Any]:
    """A comment as a JSON object."""
    return {
        "id": comment.id,
        "task_id": comment.task_id,
        "author": comment.author,
        "body": comment.body,
        "created_at": iso(comment.created_at),
    }


def run_json(run: TaskRun) -> dict[str, Any]:
    """A run (one attempt) as a JSON object."""
    return {
        "id": run.id,
        "task_id": run.task_id,
        "attempt": run.attempt,
        "claimer": run.claimer,
        "claim_lock": run.claim_lock,
        "started_at": iso(run.started_at),
        "last_heartbeat_at": iso(run.last_heartbeat_at),
        "ended_at": iso(run.ended_at),
        "outcome": run.outcome,
        "summary": run.summary,
        "metadata": run.metadata_,
        "error": run.error,
    }


def event_json(event: TaskEvent) -> dict[str, Any]:
    """An event as a JSON object."""
    return {
        "id": event.id,
        "task_id": event.task_id,
        "run_id": event.run_id,
        "kind": event.kind,
        "payload": event.payload,
        "created_at": iso(event.created_at),
    }
