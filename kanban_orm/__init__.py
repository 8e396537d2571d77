"""kanban_orm: a durable Kanban board that many worker processes share through one database.

import kanban_orm as kb

kb.init_db()                      # engine + migrations to head
session = kb.connect()
task_id = kb.create_task(session, title="write the report")
task = kb.claim_task(session, task_id, claimer="worker-1")
kb.complete_task(session, task_id, claim_lock=task.claim_lock, result="done")
"""

from __future__ import annotations

from .attachments import Attachment, attach, list_attachments, read_attachment
from .db import (
    KeepingSession,
    RetryPolicy,
    cached_engine,
    configure_engine,
    connect,
    create_engine,
    default_url,
    dispose_engines,
    session_factory,
)
from .errors import (
    AttachmentNotFound,
    ClaimLost,
    ConfigError,
    DatabaseBusy,
    InvalidInput,
    InvalidTransition,
    KanbanError,
    TaskNotFound,
)
from .migrate import (
    MigrationError,
    SchemaOutOfDate,
    check,
    current,
    downgrade,
    head,
    init_db,
    upgrade,
)
from .models import Base, Task, TaskAttachment, TaskComment, TaskEvent, TaskLink, TaskRun
from .service import (
    block_task,
    claim_many,
    claim_next,
    claim_task,
    complete_many,
    complete_task,
    create_task,
    fail_task,
    get_task,
    heartbeat,
    latest_run,
    list_events,
    list_runs,
    list_tasks,
    release_stale_claims,
    release_task,
    unblock_task,
)
from .states import TRANSITIONS, Status
from .worker import CommandHandler, TaskFailed, Worker, WorkerStats
from .workflow import (
    TaskLinks,
    add_comment,
    approve_task,
    archive_task,
    board_cards,
    board_stats,
    link_tasks,
    list_comments,
    list_links,
    reopen_task,
    request_changes,
    specify_task,
    submit_for_review,
    unlink_tasks,
    update_task,
)

__version__ = "0.1.0"

__all__ = [
    "TRANSITIONS",
    "Attachment",
    "AttachmentNotFound",
    "Base",
    "ClaimLost",
    "CommandHandler",
    "ConfigError",
    "DatabaseBusy",
    "InvalidInput",
    "InvalidTransition",
    "KanbanError",
    "KeepingSession",
    "MigrationError",
    "RetryPolicy",
    "SchemaOutOfDate",
    "Status",
    "Task",
    "TaskAttachment",
    "TaskComment",
    "TaskEvent",
    "TaskFailed",
    "TaskLink",
    "TaskLinks",
    "TaskNotFound",
    "TaskRun",
    "Worker",
    "WorkerStats",
    "__version__",
    "add_comment",
    "approve_task",
    "archive_task",
    "attach",
    "block_task",
    "board_cards",
    "board_stats",
    "cached_engine",
    "check",
    "claim_many",
    "claim_next",
    "claim_task",
    "complete_many",
    "complete_task",
    "configure_engine",
    "connect",
    "create_engine",
    "create_task",
    "current",
    "default_url",
    "dispose_engines",
    "downgrade",
    "fail_task",
    "get_task",
    "head",
    "heartbeat",
    "init_db",
    "latest_run",
    "link_tasks",
    "list_attachments",
    "list_comments",
    "list_events",
    "list_links",
    "list_runs",
    "list_tasks",
    "read_attachment",
    "release_stale_claims",
    "release_task",
    "reopen_task",
    "request_changes",
    "session_factory",
    "specify_task",
    "submit_for_review",
    "unblock_task",
    "unlink_tasks",
    "update_task",
    "upgrade",
]
