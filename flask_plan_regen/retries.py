"""The retry policy: which failures are retried, how often, and after how long.

The database row is the source of truth: ``Regeneration.attempts`` counts the
provider calls of *this* regeneration (never of the plan), and a retry puts the
row back to ``pending`` before RQ is asked to run the job again. The job asks
RQ for the next delivery by returning :class:`rq.Retry` with one interval (RQ
>= 2.1), so the delay is computed, with jitter, when the failure happens.
Delayed deliveries need RQ's scheduler (``rq worker --with-scheduler``;
``flask plan-regen worker`` runs it by default).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from rq import Retry

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


def rq_retry(attempt: int, config: Mapping[str, Any]) -> Retry:
    """What the job returns to have RQ deliver it again after the backoff.

    RQ schedules in whole seconds. ``max`` is only RQ's safety net: the job
    never asks for more retries than ``PLAN_REGEN_MAX_ATTEMPTS`` allows.
    """
    delay = round(backoff_seconds(attempt, config))
    return Retry(max=int(config["PLAN_REGEN_MAX_ATTEMPTS"]), interval=[delay])


def crash_retry(config: Mapping[str, Any]) -> Retry:
    """The ``retry=`` a job is enqueued with: RQ redelivers it if its worker dies.

    The intervals are the backoff without jitter; a redelivery whose row is
    no longer pending does nothing (see ``jobs.claim``).
    """
    attempts = int(config["PLAN_REGEN_MAX_ATTEMPTS"])
    base = float(config["PLAN_REGEN_RETRY_BACKOFF_BASE"])
    cap = float(config["PLAN_REGEN_RETRY_BACKOFF_CAP"])
    intervals = [round(min(cap, base * 2**n)) for n in range(max(attempts - 1, 1))]
    return Retry(max=max(attempts - 1, 1), interval=intervals)
