"""The retry policy: which failures are retried, how often, and after how long.

The database row is the source of truth: ``Regeneration.attempts`` counts the
provider calls of *this* regeneration (never of the plan), and a retry puts the
row back to ``pending`` (lifecycle.fail) before RQ is asked to run the job
again. The job asks RQ for the next delivery by returning an ``rq.Retry`` with
one interval (queue.retry_in), so the delay is computed, with jitter, when the
failure happens; a provider that said how long to wait (``Retry-After``) is
never called sooner, up to the backoff cap. Delayed deliveries need RQ's
scheduler (``rq worker --with-scheduler``; ``flask plan-regen worker`` runs it
by default).
"""

from __future__ import annotations

import math
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


def retry_delay(error: GenerationError, attempt: int, config: Mapping[str, Any]) -> int:
    """Whole seconds before the attempt after ``attempt``: the backoff, or what the provider
    asked for (``error.retry_after``) when longer, the latter capped by the backoff cap."""
    delay = backoff_seconds(attempt, config)
    if error.retry_after is None:
        return round(delay)
    asked = min(float(config["PLAN_REGEN_RETRY_BACKOFF_CAP"]), error.retry_after)
    # RQ schedules on whole seconds, rounding the due time down: one more second
    # keeps the next call from coming sooner than the provider said.
    return math.ceil(max(delay, asked)) + 1


def should_retry(error: GenerationError, attempts: int, config: Mapping[str, Any]) -> bool:
    """Retry a retryable failure while this regeneration has attempts left."""
    return error.retryable and attempts < int(config["PLAN_REGEN_MAX_ATTEMPTS"])
