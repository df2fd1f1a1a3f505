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

import dataclasses
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
MAX_DESCRIPTION = 2000
# Characters of titles and descriptions a whole plan may store (every plan read serves
# them): every title fits (252 of at most 500), descriptions fill the rest.
MAX_PLAN_TEXT = 200_000
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
    "descriptionsTruncated",
    "descriptionsDropped",
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
    return _within_plan_text(parsed, adjustments), adjustments


# Bounds that keep finding the object linear in the answer's length, whatever it holds:
# decoding attempts (Python calls), and characters the failed ones may read (C work).
MAX_CANDIDATES = 1000
FAILED_READ_FACTOR = 2


def json_in(text: str) -> Any:
    """The JSON document ``text`` is, else the one JSON object in it.

    Models often wrap the object in a Markdown fence or a sentence before and
    after it; the standard library's ``raw_decode`` reads an object starting at
    a ``{`` and stops where it ends. It is tried from each ``{`` not inside an
    object already read; as an answer full of braces would make that quadratic
    (every failed attempt may read to the end), it stops after
    :data:`MAX_CANDIDATES` attempts or once failed attempts have read
    :data:`FAILED_READ_FACTOR` times the text. Several objects (or none) is a
    :class:`ProviderError`.
    """
    whole_text_error: ValueError | None = None
    if not text.lstrip().startswith("{"):  # else the first attempt below reads it whole
        try:
            return json.loads(text)
        except RecursionError as error:  # nested deeper than any plan: not worth reading on
            raise ProviderError("output is nested too deeply to be a plan") from error
        except ValueError as error:
            whole_text_error = error
    found, read_to_the_end = _objects_in(text)
    plans = [value for value in found if "modules" in value]
    if len(found) == 1 or len(plans) == 1:
        return plans[0] if plans else found[0]
    if not read_to_the_end:
        what = f"more than {MAX_CANDIDATES} candidates in {len(text)} characters"
    elif found:
        what = f"{len(found)} JSON objects"
    else:
        what = f"no JSON object ({whole_text_error})"
    raise ProviderError(f"output is not one JSON object: {what}")


def _objects_in(text: str) -> tuple[list[Any], bool]:
    """The JSON objects ``raw_decode`` reads from the braces of ``text`` within the bounds,
    and whether it read to the end (else one plan found is taken as the one)."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    failed_reads = 0
    start = text.find("{")
    for _ in range(MAX_CANDIDATES):
        if start == -1:
            return found, True
        try:
            value, end = decoder.raw_decode(text, start)
        except RecursionError as error:
            raise ProviderError("output is nested too deeply to be a plan") from error
        except json.JSONDecodeError as error:
            failed_reads += max(error.pos - start, 1)
            if failed_reads > FAILED_READ_FACTOR * len(text):
                break
            start = text.find("{", start + 1)
            continue
        found.append(value)
        start = text.find("{", end)
    return found, start == -1


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
    description = _storable(description, adjustments).strip()
    if len(description) > MAX_DESCRIPTION:
        adjustments["descriptionsTruncated"] += 1
        description = description[:MAX_DESCRIPTION].rstrip()
    return description or None


def _within_plan_text(
    modules: list[GeneratedModule], adjustments: dict[str, int]
) -> list[GeneratedModule]:
    """``modules`` with at most :data:`MAX_PLAN_TEXT` characters of titles and descriptions:
    descriptions are dropped, from the last task backwards, until it fits."""

    def size(item: GeneratedModule | GeneratedTask) -> int:
        return len(item.title) + len(item.description or "")

    excess = sum(size(m) + sum(size(t) for t in m.tasks) for m in modules) - MAX_PLAN_TEXT
    if excess <= 0:
        return modules
    fitted: list[GeneratedModule] = []
    for module in reversed(modules):
        tasks: list[GeneratedTask] = []
        for task in reversed(module.tasks):
            if excess > 0 and task.description:
                excess -= len(task.description)
                adjustments["descriptionsDropped"] += 1
                task = dataclasses.replace(task, description=None)
            tasks.append(task)
        if excess > 0 and module.description:
            excess -= len(module.description)
            adjustments["descriptionsDropped"] += 1
            module = dataclasses.replace(module, description=None)
        fitted.append(dataclasses.replace(module, tasks=tuple(reversed(tasks))))
    return list(reversed(fitted))


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
