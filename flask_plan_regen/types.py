"""Plain data shapes shared by the store, the providers and the job."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import date
from typing import Any, Literal

SkillLevel = Literal["beginner", "intermediate", "advanced"]
LearningStyle = Literal["reading", "video", "practice", "mixed"]

SKILL_LEVELS: tuple[str, ...] = ("beginner", "intermediate", "advanced")
LEARNING_STYLES: tuple[str, ...] = ("reading", "video", "practice", "mixed")

# Override keys as stored on a regeneration (snake_case) -> PlanInput fields.
OVERRIDABLE_FIELDS: tuple[str, ...] = (
    "topic",
    "skill_level",
    "weekly_hours",
    "learning_style",
    "start_date",
    "deadline_date",
    "notes",
)


@dataclasses.dataclass(frozen=True)
class PlanInput:
    """What a plan is generated from, plus who owns it.

    A :meth:`~flask_plan_regen.PlanRegen.plan_loader` returns one of these (or
    ``None``); the job merges a regeneration's overrides into it.
    """

    id: str
    owner_id: str
    topic: str
    skill_level: str = "beginner"
    weekly_hours: int = 5
    learning_style: str = "mixed"
    start_date: date | None = None
    deadline_date: date | None = None
    notes: str | None = None

    def with_overrides(self, overrides: Mapping[str, Any]) -> PlanInput:
        """Return a copy with every given override applied (``None`` clears)."""
        changes = {key: overrides[key] for key in OVERRIDABLE_FIELDS if key in overrides}
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class GeneratedTask:
    title: str
    estimated_minutes: int
    description: str | None = None
    week: int | None = None
    due_date: date | None = None


@dataclasses.dataclass(frozen=True)
class GeneratedModule:
    title: str
    estimated_minutes: int
    tasks: tuple[GeneratedTask, ...]
    description: str | None = None
