"""``python -m stress bench``: zero-work claim -> complete throughput, side by side.

kanban_orm (public API: claim_next, claim_many(10), claim_many(50)), a raw-driver
baseline on the same tables, and peer queues when installed (the ``bench`` extra), on
SQLite, PostgreSQL and MariaDB/MySQL, all in one run. Every run starts from fresh
storage with N tasks queued; P spawned consumer processes wait at one start barrier; the
clock runs from the start signal until the last consumer has finished. After each run
the system's own storage and the consumers' reports are checked: every task completed
exactly once, or the row says how many were duplicated or lost.
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
