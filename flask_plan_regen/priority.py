"""Job priority from the tier and the topic, and the queue a priority goes to."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from .errors import ApiError


@lru_cache(maxsize=32)
def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(" ".join(p.split())).replace(r"\ ", r"\s+") for p in phrases)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def is_priority_topic(topic: str, phrases: Iterable[str]) -> bool:
    """True when ``topic`` contains one of ``phrases`` as whole words, in any case."""
    key = tuple(phrases)
    return bool(key) and _phrase_pattern(key).search(topic) is not None


def compute_priority(tier: str, topic: str, config: Mapping[str, Any]) -> int:
    """Tier base priority, plus the boost for a priority topic.

    An unknown tier is a server-side error: it means the tier resolver and
    ``PLAN_REGEN_TIER_PRIORITY`` disagree, which no user input can cause.
    """
    bases: Mapping[str, int] = config["PLAN_REGEN_TIER_PRIORITY"]
    if tier not in bases:
        raise ApiError(
            500,
            "UNKNOWN_TIER",
            "The subscription tier could not be resolved.",
        ) from LookupError(
            f"tier resolver returned {tier!r}, not one of {sorted(bases)} "
            "(PLAN_REGEN_TIER_PRIORITY)"
        )
    boost = (
        config["PLAN_REGEN_PRIORITY_BOOST"]
        if is_priority_topic(topic, config["PLAN_REGEN_PRIORITY_PHRASES"])
        else 0
    )
    return int(bases[tier]) + int(boost)


def queue_for_priority(priority: int, queues: Sequence[Sequence[Any]]) -> str:
    """The first queue (highest first) whose threshold ``priority`` reaches."""
    for name, threshold in queues:
        if priority >= threshold:
            return str(name)
    return str(queues[-1][0])
