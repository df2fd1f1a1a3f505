"""The output rules a generated plan must meet before it replaces anything.

One set of limits serves both ends: :func:`parse_output` checks an answer
against them, and :func:`plan_json_schema` asks the model for them (structured
outputs). What can be kept is kept and counted in the attempt's
``adjustments``: extra modules and tasks are dropped, titles cut, minutes
clamped, numbers written as strings (``"30"``) read as numbers. What cannot
(no modules, a task without a title, minutes that are not a number) is a
``validation`` failure.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from .errors import OutputValidationError, ProviderError
from .models import storable, storable_text
from .types import GeneratedModule, GeneratedTask

MAX_MODULES = 12
MAX_TASKS = 20
MAX_TITLE = 500
MODULE_MINUTES = (15, 480)
TASK_MINUTES = (5, 120)

ADJUSTMENTS = (
    "titlesTruncated",
    "moduleMinutesClamped",
    "taskMinutesClamped",
    "modulesDropped",
    "tasksDropped",
    "numbersCoerced",
    "textsCleaned",
)

_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


def parse_output(
    content: str | Mapping[str, Any],
) -> tuple[list[GeneratedModule], dict[str, int]]:
    """Check a provider's answer; return its modules and what had to be adjusted.

    Text with no JSON object in it raises :class:`ProviderError`; a plan that
    breaks the rules raises :class:`OutputValidationError`.
    """
    data = json_in(content) if isinstance(content, str) else content
    modules = data.get("modules") if isinstance(data, Mapping) else None
    if not isinstance(modules, list) or not modules:
        raise OutputValidationError(f"expected 1-{MAX_MODULES} modules")
    adjustments = dict.fromkeys(ADJUSTMENTS, 0)
    adjustments["modulesDropped"] = max(len(modules) - MAX_MODULES, 0)
    parsed = [_module(item, adjustments) for item in modules[:MAX_MODULES]]
    return parsed, adjustments


def json_in(text: str) -> Any:
    """The JSON document ``text`` is, else the one JSON object in it.

    Models often wrap the object in a Markdown fence or a sentence before and
    after it; the standard library's ``raw_decode`` reads an object starting at
    each ``{`` and stops where it ends, so no hand-written scanning is needed.
    Several objects (or none) is a :class:`ProviderError`.
    """
    try:
        return json.loads(text)
    except RecursionError as error:  # nested deeper than any plan: not worth reading on
        raise ProviderError("output is nested too deeply to be a plan") from error
    except ValueError as error:
        whole_text_error = error
    decoder = json.JSONDecoder()
    found: list[Any] = []
    start = text.find("{")
    while start != -1:
        try:
            value, end = decoder.raw_decode(text, start)
        except RecursionError as error:
            raise ProviderError("output is nested too deeply to be a plan") from error
        except ValueError:
            start = text.find("{", start + 1)
            continue
        found.append(value)
        start = text.find("{", end)
    plans = [value for value in found if "modules" in value]
    if len(found) == 1 or len(plans) == 1:
        return plans[0] if plans else found[0]
    what = f"{len(found)} JSON objects" if found else f"no JSON object ({whole_text_error})"
    raise ProviderError(f"output is not one JSON object: {what}")


def plan_json_schema() -> dict[str, Any]:
    """The JSON Schema of an answer within the rules, for structured outputs.

    Only keywords OpenAI's strict mode accepts: every property required, no
    others allowed, counts as ``minItems``/``maxItems``, minutes as integer bounds.
    """

    def item(minutes: tuple[int, int], **extra: Any) -> dict[str, Any]:
        properties = {
            "title": {"type": "string"},
            "description": {"type": "string"},
            "estimatedMinutes": {"type": "integer", "minimum": minutes[0], "maximum": minutes[1]},
            **extra,
        }
        return {
            "type": "object",
            "properties": properties,
            "required": list(properties),
            "additionalProperties": False,
        }

    def array(items: dict[str, Any], most: int) -> dict[str, Any]:
        return {"type": "array", "items": items, "minItems": 1, "maxItems": most}

    task = item(TASK_MINUTES)
    module = item(MODULE_MINUTES, tasks=array(task, MAX_TASKS))
    return {
        "type": "object",
        "properties": {"modules": array(module, MAX_MODULES)},
        "required": ["modules"],
        "additionalProperties": False,
    }


def _module(item: Any, adjustments: dict[str, int]) -> GeneratedModule:
    if not isinstance(item, Mapping):
        raise OutputValidationError("a module is not an object")
    tasks = item.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise OutputValidationError(f"a module needs 1-{MAX_TASKS} tasks")
    adjustments["tasksDropped"] += max(len(tasks) - MAX_TASKS, 0)
    return GeneratedModule(
        title=_title(item, adjustments),
        description=_description(item, adjustments),
        estimated_minutes=_minutes(item, MODULE_MINUTES, "moduleMinutesClamped", adjustments),
        tasks=tuple(_task(task, adjustments) for task in tasks[:MAX_TASKS]),
    )


def _task(item: Any, adjustments: dict[str, int]) -> GeneratedTask:
    if not isinstance(item, Mapping):
        raise OutputValidationError("a task is not an object")
    return GeneratedTask(
        title=_title(item, adjustments),
        description=_description(item, adjustments),
        estimated_minutes=_minutes(item, TASK_MINUTES, "taskMinutesClamped", adjustments),
    )


def _title(item: Mapping[str, Any], adjustments: dict[str, int]) -> str:
    title = item.get("title")
    if not isinstance(title, str) or not title.strip():
        raise OutputValidationError("a title is missing or empty")
    title = _storable(title, adjustments).strip()
    if not title:
        raise OutputValidationError("a title is missing or empty")
    if len(title) > MAX_TITLE:
        adjustments["titlesTruncated"] += 1
        title = title[:MAX_TITLE]
    return title


def _description(item: Mapping[str, Any], adjustments: dict[str, int]) -> str | None:
    description = item.get("description")
    if not isinstance(description, str):
        return None
    return _storable(description, adjustments).strip() or None


def _storable(text: str, adjustments: dict[str, int]) -> str:
    """``text`` without what no database can keep: NUL characters, unpaired surrogates.

    Every database then stores the same plan (SQLite would keep a NUL that
    PostgreSQL refuses); each cleaned text counts in ``textsCleaned``.
    """
    if storable(text):
        return text
    adjustments["textsCleaned"] += 1
    return storable_text(text)


def _minutes(
    item: Mapping[str, Any], bounds: tuple[int, int], counter: str, adjustments: dict[str, int]
) -> int:
    value = item.get("estimatedMinutes", item.get("estimated_minutes"))
    if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        adjustments["numbersCoerced"] += 1
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OutputValidationError("minutes must be a finite number")
    low, high = bounds
    rounded = round(value)
    clamped = min(max(rounded, low), high)
    if clamped != rounded:
        adjustments[counter] += 1
    return clamped


def check_module(item: Any) -> GeneratedModule:
    """One module checked against the rules as it arrives (while the answer is streamed).

    Raises :class:`OutputValidationError` when it breaks them, as :func:`parse_output`
    would for the whole plan; what is adjusted is counted there, not here.
    """
    return _module(item, dict.fromkeys(ADJUSTMENTS, 0))
