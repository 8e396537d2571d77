"""Peer queues, measured as "enqueue N, then P consumers dequeue and ack"."""

from __future__ import annotations

from .core import System

PEERS: list[System] = []
