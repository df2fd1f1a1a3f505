"""The retry policy: which failures are retried, how often, and after how long.

The database row is the source of truth: ``Regeneration.attempts`` counts the
provider calls of *this* regeneration (never of the plan), and a retry puts the
row back to ``pending`` (lifecycle.fail) before RQ is asked to run the job
again. The job asks RQ for the next delivery by returning an ``rq.Retry`` with
one interval (queue.retry_in), so the delay is computed, with jitter, when the
failure happens. Delayed deliveries need RQ's scheduler (``rq worker
--with-scheduler``; ``flask plan-regen worker`` runs it by default).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from .errors import GenerationError

JITTER = 0.25


def backoff_seconds(
    attempt: int, config: Mapping[str, Any], rng: random.Random | None = None
) -> float:
    """Delay before the attempt after ``attempt``: min(cap, base * 2^(attempt-1)) +-25 %."""
    base = float(config["PLAN_REGEN_RETRY_BACKOFF_BASE"])
    cap = float(config["PLAN_REGEN_RETRY_BACKOFF_CAP"])
    delay: float = min(cap, base * 2 ** (attempt - 1))
    return delay * float((rng or random).uniform(1 - JITTER, 1 + JITTER))


def should_retry(error: GenerationError, attempts: int, config: Mapping[str, Any]) -> bool:
    """Retry a retryable failure while this regeneration has attempts left."""
    return error.retryable and attempts < int(config["PLAN_REGEN_MAX_ATTEMPTS"])
