"""Priority from tier and topic; queue from priority."""

from __future__ import annotations

import pytest

from flask_plan_regen.config import DEFAULTS
from flask_plan_regen.priority import compute_priority, is_priority_topic, queue_for_priority

PHRASES = DEFAULTS["PLAN_REGEN_PRIORITY_PHRASES"]


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("interview prep", True),
        ("Interview Prep for FAANG", True),
        ("weekend   interview\tprep", True),
        ("AI engineering 101", True),
        ("Applied machine learning", True),
        ("data structures & algorithms", True),
        ("Machine-learning", False),
        ("machine learnings", False),
        ("preinterview prep", False),
        ("databases", False),
        ("", False),
    ],
)
def test_priority_phrases_match_whole_words_in_any_case(topic: str, expected: bool) -> None:
    assert is_priority_topic(topic, PHRASES) is expected


@pytest.mark.parametrize(
    ("tier", "topic", "priority"),
    [
        ("free", "Cooking", 1),
        ("free", "interview prep", 4),
        ("starter", "Cooking", 5),
        ("starter", "data structures", 8),
        ("pro", "Cooking", 10),
        ("pro", "AI engineering", 13),
    ],
)
def test_priority_is_tier_base_plus_topic_boost(tier: str, topic: str, priority: int) -> None:
    assert compute_priority(tier, topic, DEFAULTS) == priority


def test_phrases_and_boost_are_configurable() -> None:
    config = {**DEFAULTS, "PLAN_REGEN_PRIORITY_PHRASES": ["rust"], "PLAN_REGEN_PRIORITY_BOOST": 7}
    assert compute_priority("free", "Rust in anger", config) == 8
    assert compute_priority("free", "machine learning", config) == 1


@pytest.mark.parametrize(
    ("priority", "queue"),
    [(13, "plan_regen_high"), (10, "plan_regen_high"), (8, "plan_regen_default"),
     (5, "plan_regen_default"), (4, "plan_regen_low"), (1, "plan_regen_low")],
)  # fmt: skip
def test_queue_thresholds(priority: int, queue: str) -> None:
    assert queue_for_priority(priority, DEFAULTS) == queue


def test_queue_names_follow_the_namespace() -> None:
    assert queue_for_priority(13, {**DEFAULTS, "PLAN_REGEN_NAMESPACE": "staging"}) == "staging_high"
