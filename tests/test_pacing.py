"""Pacing: fitting a plan to the deadline and the per-week schedule (hypothesis)."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st

from flask_plan_regen.pacing import AVERAGE_TASK_MINUTES, fit_to_schedule, plan_weeks
from flask_plan_regen.types import GeneratedModule, GeneratedTask, PlanInput

TODAY = date(2030, 1, 1)

tasks = st.builds(GeneratedTask, title=st.just("t"), estimated_minutes=st.integers(5, 120))
modules = st.lists(
    st.builds(
        GeneratedModule,
        title=st.just("m"),
        estimated_minutes=st.integers(15, 480),
        tasks=st.lists(tasks, min_size=1, max_size=20).map(tuple),
    ),
    min_size=1,
    max_size=12,
)
plans = st.builds(
    PlanInput,
    id=st.just("p"),
    owner_id=st.just("alice"),
    topic=st.just("Rust"),
    skill_level=st.sampled_from(sorted(AVERAGE_TASK_MINUTES)),
    weekly_hours=st.integers(1, 80),
    start_date=st.just(TODAY),
    deadline_date=st.one_of(st.none(), st.integers(1, 400).map(lambda d: TODAY + timedelta(d))),
)


@given(plans, modules)
def test_schedule_invariants(plan: PlanInput, generated: list[GeneratedModule]) -> None:
    paced, adjustments = fit_to_schedule(plan, generated, TODAY)
    weekly = plan.weekly_hours * 60
    all_tasks = [t for m in paced for t in m.tasks]

    # Trimming keeps every module, each with its first task, and only drops tasks.
    assert [m.title for m in paced] == [m.title for m in generated]
    for before, after in zip(generated, paced, strict=True):
        assert after.tasks and after.tasks[0].title == before.tasks[0].title
        assert len(after.tasks) <= len(before.tasks)
    dropped = sum(len(m.tasks) for m in generated) - len(all_tasks)
    assert adjustments["tasksTrimmed"] == dropped

    # Weeks run in order from 1, and due dates sit in their week, within the plan's time.
    weeks = [t.week for t in all_tasks]
    assert weeks == sorted(weeks) and weeks[0] == 1
    for task in all_tasks:
        assert task.week is not None and task.due_date is not None
        assert plan.start_date is not None and task.due_date >= plan.start_date
        if plan.deadline_date:
            assert task.due_date <= plan.deadline_date
            assert task.week <= plan_weeks(plan.start_date, plan.deadline_date)
        else:
            assert task.due_date == plan.start_date + timedelta(days=7 * task.week - 1)

    # No week holds more than the weekly hours unless it is a single long task,
    # or the plan could not fit even after trimming (reported as overbooked).
    load: dict[int, list[int]] = defaultdict(list)
    for task in all_tasks:
        load[task.week or 0].append(task.estimated_minutes)
    last_week = max(load)
    for week, minutes in load.items():
        if sum(minutes) > weekly:
            assert len(minutes) == 1 or (
                week == last_week and adjustments.get("overbookedTasks", 0) > 0
            )


@given(plans.filter(lambda p: p.deadline_date is not None), modules)
def test_capacity_from_weekly_hours_and_skill(
    plan: PlanInput, generated: list[GeneratedModule]
) -> None:
    assert plan.start_date and plan.deadline_date
    paced, adjustments = fit_to_schedule(plan, generated, TODAY)
    weeks = max(1, math.ceil((plan.deadline_date - plan.start_date).days / 7))
    assert adjustments["weeks"] == weeks
    capacity = plan.weekly_hours * weeks * 60 // AVERAGE_TASK_MINUTES[plan.skill_level]
    kept = sum(len(m.tasks) for m in paced)
    assert kept <= max(capacity, len(generated))


def test_a_task_longer_than_a_week_gets_a_week_alone() -> None:
    plan = PlanInput(id="p", owner_id="a", topic="Rust", weekly_hours=1, start_date=TODAY)
    long, short = (GeneratedTask("t", minutes) for minutes in (120, 30))
    paced, _ = fit_to_schedule(plan, [GeneratedModule("m", 180, (short, long, short))], TODAY)
    assert [t.week for t in paced[0].tasks] == [1, 2, 3]
    assert [t.due_date for t in paced[0].tasks] == [TODAY + timedelta(d) for d in (6, 13, 20)]


def test_without_a_deadline_nothing_is_trimmed_and_start_defaults_to_today() -> None:
    plan = PlanInput(id="p", owner_id="a", topic="Rust", weekly_hours=1)
    module = GeneratedModule("m", 400, tuple(GeneratedTask("t", 60) for _ in range(20)))
    paced, adjustments = fit_to_schedule(plan, [module], TODAY)
    assert adjustments == {"tasksTrimmed": 0, "weeks": 20}
    assert paced[0].tasks[-1].due_date == TODAY + timedelta(days=139)
