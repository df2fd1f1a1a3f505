"""Pacing: fit a generated plan to the learner's time and give each task a week.

With a deadline the plan gets ``weeks = max(1, ceil(days / 7))`` weeks and room
for ``floor(weekly_hours * weeks * 60 / average task minutes)`` tasks; tasks
beyond that are trimmed (never a module's first task). Then tasks are laid
out in order, week by week, so that no week holds more than the weekly hours;
a task longer than a week gets a week of its own. Without a deadline nothing is
trimmed and the weeks simply run on from the start date (or today).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

from .types import GeneratedModule, GeneratedTask, PlanInput

AVERAGE_TASK_MINUTES = {"beginner": 55, "intermediate": 45, "advanced": 35}


EARLIEST_DATE = date(2000, 1, 1)
MAX_YEARS = 5
"""How far from today a date may lie, and how long a plan may run: the schedule is
laid out week by week from the dates, and a plan is for learning, not for a lifetime."""


def years_after(day: date, years: int) -> date:
    """``day``, ``years`` later (29 February becomes 28 February)."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


def schedule_problems(
    start: date | None, deadline: date | None, today: date | None = None
) -> dict[str, list[str]]:
    """Why a plan's dates cannot be scheduled, keyed by wire field name; empty if they can.

    Each date lies between 2000-01-01 and five years from today (UTC); the
    deadline comes after the start (today when there is none) and at most five
    years after it.
    """
    today = today or datetime.now(UTC).date()
    latest = years_after(today, MAX_YEARS)
    problems = {
        field: [f"Must be between {EARLIEST_DATE} and {latest} (five years from today)."]
        for field, day in (("startDate", start), ("deadlineDate", deadline))
        if day is not None and not EARLIEST_DATE <= day <= latest
    }
    if problems or deadline is None:
        return problems
    if start is None and deadline <= today:
        return {"deadlineDate": ["The deadline must be after today when there is no start date."]}
    if start is not None and deadline <= start:
        return {"deadlineDate": ["The deadline must be after the start."]}
    if deadline > years_after(start or today, MAX_YEARS):
        return {"deadlineDate": ["The deadline must be at most five years after the start."]}
    return {}


def plan_weeks(start: date, deadline: date) -> int:
    return max(1, math.ceil((deadline - start).days / 7))


def task_capacity(plan: PlanInput, weeks: int) -> int:
    average = AVERAGE_TASK_MINUTES.get(plan.skill_level, AVERAGE_TASK_MINUTES["beginner"])
    return plan.weekly_hours * weeks * 60 // average


def fit_to_schedule(
    plan: PlanInput, modules: Sequence[GeneratedModule], today: date
) -> tuple[list[GeneratedModule], dict[str, int]]:
    """Trim ``modules`` to the plan's time and set every task's week and due date.

    Returns the new modules and what was adjusted (``tasksTrimmed``, ``weeks``,
    ``overbookedTasks``: tasks that did not fit before the deadline even after
    trimming and were put in the last week).
    """
    start = plan.start_date or today
    deadline = plan.deadline_date
    weekly_minutes = plan.weekly_hours * 60
    tasks = [list(module.tasks) for module in modules]
    trimmed = 0
    weeks: int | None = None
    if deadline is not None:
        weeks = plan_weeks(start, deadline) if deadline > start else 1
        capacity = task_capacity(plan, weeks)
        while sum(map(len, tasks)) > capacity and _drop_one(tasks):
            trimmed += 1
        while _weeks_needed(tasks, weekly_minutes) > weeks and _drop_one(tasks):
            trimmed += 1
    week_of = _assign_weeks([t for module in tasks for t in module], weekly_minutes)
    overbooked = 0
    paced: list[GeneratedModule] = []
    position = 0
    for module, module_tasks in zip(modules, tasks, strict=True):
        scheduled = []
        for task in module_tasks:
            week = week_of[position]
            position += 1
            if weeks is not None and week > weeks:
                overbooked += 1
                week = weeks
            due = start + timedelta(days=7 * week - 1)
            if deadline is not None:
                due = max(min(due, deadline), min(start, deadline))
            scheduled.append(dataclasses.replace(task, week=week, due_date=due))
        paced.append(dataclasses.replace(module, tasks=tuple(scheduled)))
    adjustments = {"tasksTrimmed": trimmed, "weeks": weeks or max(week_of, default=1)}
    if overbooked:
        adjustments["overbookedTasks"] = overbooked
    return paced, adjustments


def _drop_one(tasks: list[list[GeneratedTask]]) -> bool:
    """Drop the last task of the module with the most tasks (the later one on a tie)."""
    index = max(range(len(tasks)), key=lambda i: (len(tasks[i]), i), default=None)
    if index is None or len(tasks[index]) <= 1:
        return False
    tasks[index].pop()
    return True


def _weeks_needed(tasks: list[list[GeneratedTask]], weekly_minutes: int) -> int:
    return max(_assign_weeks([t for module in tasks for t in module], weekly_minutes), default=0)


def _assign_weeks(tasks: Sequence[GeneratedTask], weekly_minutes: int) -> list[int]:
    """Week number of each task, in order, filling a week before starting the next.

    Filling in order uses the fewest weeks any in-order layout can.
    """
    weeks: list[int] = []
    week, used = 1, 0
    for task in tasks:
        if used and used + task.estimated_minutes > weekly_minutes:
            week, used = week + 1, 0
        weeks.append(week)
        used += task.estimated_minutes
    return weeks
