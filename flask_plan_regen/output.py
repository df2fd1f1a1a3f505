"""The output rules a generated plan must meet before it replaces anything."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .errors import OutputValidationError, ProviderError
from .types import GeneratedModule, GeneratedTask

MAX_MODULES = 12
MAX_TASKS = 20
MAX_TITLE = 500
MODULE_MINUTES = (15, 480)
TASK_MINUTES = (5, 120)


def parse_output(
    content: str | Mapping[str, Any],
) -> tuple[list[GeneratedModule], dict[str, int]]:
    """Check a provider's answer; return its modules and what had to be adjusted.

    Unparseable text raises :class:`ProviderError`; a plan that breaks the
    rules raises :class:`OutputValidationError`.
    """
    if isinstance(content, str):
        try:
            data = json.loads(content)
        except ValueError as error:
            raise ProviderError(f"output is not JSON: {error}") from error
    else:
        data = content
    modules = data.get("modules") if isinstance(data, Mapping) else None
    if not isinstance(modules, list) or not 1 <= len(modules) <= MAX_MODULES:
        raise OutputValidationError(f"expected 1-{MAX_MODULES} modules")
    adjustments = {"titlesTruncated": 0, "moduleMinutesClamped": 0, "taskMinutesClamped": 0}
    parsed = [_module(item, adjustments) for item in modules]
    return parsed, adjustments


def _module(item: Any, adjustments: dict[str, int]) -> GeneratedModule:
    if not isinstance(item, Mapping):
        raise OutputValidationError("a module is not an object")
    tasks = item.get("tasks")
    if not isinstance(tasks, list) or not 1 <= len(tasks) <= MAX_TASKS:
        raise OutputValidationError(f"a module needs 1-{MAX_TASKS} tasks")
    return GeneratedModule(
        title=_title(item, adjustments),
        description=_description(item),
        estimated_minutes=_minutes(item, MODULE_MINUTES, "moduleMinutesClamped", adjustments),
        tasks=tuple(_task(task, adjustments) for task in tasks),
    )


def _task(item: Any, adjustments: dict[str, int]) -> GeneratedTask:
    if not isinstance(item, Mapping):
        raise OutputValidationError("a task is not an object")
    return GeneratedTask(
        title=_title(item, adjustments),
        description=_description(item),
        estimated_minutes=_minutes(item, TASK_MINUTES, "taskMinutesClamped", adjustments),
    )


def _title(item: Mapping[str, Any], adjustments: dict[str, int]) -> str:
    title = item.get("title")
    if not isinstance(title, str) or not title.strip():
        raise OutputValidationError("a title is missing or empty")
    title = title.strip()
    if len(title) > MAX_TITLE:
        adjustments["titlesTruncated"] += 1
        title = title[:MAX_TITLE]
    return title


def _description(item: Mapping[str, Any]) -> str | None:
    description = item.get("description")
    return description.strip() or None if isinstance(description, str) else None


def _minutes(
    item: Mapping[str, Any], bounds: tuple[int, int], counter: str, adjustments: dict[str, int]
) -> int:
    value = item.get("estimatedMinutes", item.get("estimated_minutes"))
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OutputValidationError("minutes must be a finite number")
    low, high = bounds
    rounded = round(value)
    clamped = min(max(rounded, low), high)
    if clamped != rounded:
        adjustments[counter] += 1
    return clamped
