"""asyncio: the whole API, awaitable, on an ``AsyncSession``; and :class:`Worker`.

from kanban_orm import aio

engine = await aio.init_db("postgresql://...")   # an AsyncEngine, upgraded to head
async with aio.connect() as session:             # an AsyncSession
    async with session.begin():                  # the host's own transaction
        session.add(order)
        task_id = await aio.create_task(session, title="ship", body=str(order.id))
    task = await aio.claim_next(session, claimer="worker-1")

Every function takes the same arguments as its namesake in :mod:`kanban_orm`, with an
``AsyncSession`` first, and behaves the same way: one transaction per call, or a
SAVEPOINT inside the caller's when one is open; the same errors and retry policy
(waits on the event loop). They are not a second implementation: each runs the sync
function in SQLAlchemy's asyncio greenlet (see :mod:`kanban_orm.aio._run`), so a
cancelled call rolls back and returns its connection before its ``CancelledError``
propagates. The drivers: aiosqlite, psycopg 3 (async) and asyncmy
(``pip install 'kanban-orm[async]'``). See docs/async.md.
"""

from __future__ import annotations

import kanban_orm as _kb

from ._run import awaitable, run
from .engine import (
    cached_engine,
    check,
    configure_engine,
    connect,
    create_engine,
    current,
    dispose_engines,
    downgrade,
    init_db,
    session_factory,
    upgrade,
)
from .waiting import wait_for_ready
from .worker import Worker

#: The names kanban_orm gives check and current.
schema_check = check
schema_current = current

add_comment = awaitable(_kb.add_comment, "add_comment")
approve_task = awaitable(_kb.approve_task, "approve_task")
archive_task = awaitable(_kb.archive_task, "archive_task")
attach = awaitable(_kb.attach, "attach")
block_task = awaitable(_kb.block_task, "block_task")
board_cards = awaitable(_kb.board_cards, "board_cards")
board_stats = awaitable(_kb.board_stats, "board_stats")
claim_many = awaitable(_kb.claim_many, "claim_many")
claim_next = awaitable(_kb.claim_next, "claim_next")
claim_task = awaitable(_kb.claim_task, "claim_task")
complete_and_claim_many = awaitable(_kb.complete_and_claim_many, "complete_and_claim_many")
complete_and_claim_next = awaitable(_kb.complete_and_claim_next, "complete_and_claim_next")
complete_many = awaitable(_kb.complete_many, "complete_many")
complete_task = awaitable(_kb.complete_task, "complete_task")
create_task = awaitable(_kb.create_task, "create_task")
delete_task = awaitable(_kb.delete_task, "delete_task")
fail_task = awaitable(_kb.fail_task, "fail_task")
get_task = awaitable(_kb.get_task, "get_task")
heartbeat = awaitable(_kb.heartbeat, "heartbeat")
latest_run = awaitable(_kb.latest_run, "latest_run")
link_tasks = awaitable(_kb.link_tasks, "link_tasks")
list_attachments = awaitable(_kb.list_attachments, "list_attachments")
list_board_events = awaitable(_kb.list_board_events, "list_board_events")
list_comments = awaitable(_kb.list_comments, "list_comments")
list_events = awaitable(_kb.list_events, "list_events")
list_links = awaitable(_kb.list_links, "list_links")
list_runs = awaitable(_kb.list_runs, "list_runs")
list_tasks = awaitable(_kb.list_tasks, "list_tasks")
list_workers = awaitable(_kb.list_workers, "list_workers")
prune = awaitable(_kb.prune, "prune")
read_attachment = awaitable(_kb.read_attachment, "read_attachment")
reassign_task = awaitable(_kb.reassign_task, "reassign_task")
refresh_counts = awaitable(_kb.refresh_counts, "refresh_counts")
release_dead_claims = awaitable(_kb.release_dead_claims, "release_dead_claims")
release_stale_claims = awaitable(_kb.release_stale_claims, "release_stale_claims")
release_task = awaitable(_kb.release_task, "release_task")
reopen_task = awaitable(_kb.reopen_task, "reopen_task")
request_changes = awaitable(_kb.request_changes, "request_changes")
specify_task = awaitable(_kb.specify_task, "specify_task")
submit_for_review = awaitable(_kb.submit_for_review, "submit_for_review")
unblock_task = awaitable(_kb.unblock_task, "unblock_task")
unlink_tasks = awaitable(_kb.unlink_tasks, "unlink_tasks")
update_task = awaitable(_kb.update_task, "update_task")

#: The functions of :mod:`kanban_orm` this module makes awaitable, by name.
TRANSITION_NAMES = (
    "add_comment",
    "approve_task",
    "archive_task",
    "attach",
    "block_task",
    "board_cards",
    "board_stats",
    "claim_many",
    "claim_next",
    "claim_task",
    "complete_and_claim_many",
    "complete_and_claim_next",
    "complete_many",
    "complete_task",
    "create_task",
    "delete_task",
    "fail_task",
    "get_task",
    "heartbeat",
    "latest_run",
    "link_tasks",
    "list_attachments",
    "list_board_events",
    "list_comments",
    "list_events",
    "list_links",
    "list_runs",
    "list_tasks",
    "list_workers",
    "prune",
    "read_attachment",
    "reassign_task",
    "refresh_counts",
    "release_dead_claims",
    "release_stale_claims",
    "release_task",
    "reopen_task",
    "request_changes",
    "specify_task",
    "submit_for_review",
    "unblock_task",
    "unlink_tasks",
    "update_task",
)

__all__ = [
    "TRANSITION_NAMES",
    "Worker",
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
    "complete_and_claim_many",
    "complete_and_claim_next",
    "complete_many",
    "complete_task",
    "configure_engine",
    "connect",
    "create_engine",
    "create_task",
    "current",
    "delete_task",
    "dispose_engines",
    "downgrade",
    "fail_task",
    "get_task",
    "heartbeat",
    "init_db",
    "latest_run",
    "link_tasks",
    "list_attachments",
    "list_board_events",
    "list_comments",
    "list_events",
    "list_links",
    "list_runs",
    "list_tasks",
    "list_workers",
    "prune",
    "read_attachment",
    "reassign_task",
    "refresh_counts",
    "release_dead_claims",
    "release_stale_claims",
    "release_task",
    "reopen_task",
    "request_changes",
    "run",
    "schema_check",
    "schema_current",
    "session_factory",
    "specify_task",
    "submit_for_review",
    "unblock_task",
    "unlink_tasks",
    "update_task",
    "upgrade",
    "wait_for_ready",
]
