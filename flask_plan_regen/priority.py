"""Job priority from the tier and the topic, and the queue a priority goes to."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from .config import rq_queues


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

    ``tier`` is one of ``PLAN_REGEN_TIER_PRIORITY`` (``identity.tier_of`` checks it).
    """
    boost = (
        config["PLAN_REGEN_PRIORITY_BOOST"]
        if is_priority_topic(topic, config["PLAN_REGEN_PRIORITY_PHRASES"])
        else 0
    )
    return int(config["PLAN_REGEN_TIER_PRIORITY"][tier]) + int(boost)


def queue_for_priority(priority: int, config: Mapping[str, Any]) -> str:
    """The RQ queue of the first entry (highest first) whose threshold ``priority`` reaches."""
    queues = rq_queues(config)
    for name, threshold in queues:
        if priority >= threshold:
            return name
    return queues[-1][0]
