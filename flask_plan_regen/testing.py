"""Helpers for a host app's own tests (docs/testing.md).

Configure the app under test with :data:`TEST_CONFIG` (or its two keys by
hand): no Redis server is needed and each job runs in the request that queued
it, so the next ``GET`` sees it ended. Without ``PLAN_REGEN_EAGER``, jobs wait
on their queue until :func:`run_pending_jobs` runs them (to test a cancel, or
what a client sees while a regeneration is pending).
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from . import queue
from .config import MEMORY_REDIS_URL, rq_queue_names
from .state import get_state

TEST_CONFIG: dict[str, Any] = {
    "TESTING": True,
    "PLAN_REGEN_REDIS_URL": MEMORY_REDIS_URL,
    "PLAN_REGEN_EAGER": True,
}
"""Flask's testing mode, an in-process Redis for the app, and every job run right after
its commit (both refused outside testing mode, docs/testing.md)."""


def run_pending_jobs(app: Flask) -> int:
    """Run every job queued for ``app`` in this process, highest priority first; return how many.

    Each job runs to its end: a retry it asks for runs at once, without waiting
    out the backoff. Works on ``memory://`` and on a real Redis alike.
    """
    with app.app_context():
        return queue.run_queued(get_state(app).redis, rq_queue_names(app.config))
