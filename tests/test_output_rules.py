"""The output rules a generated plan must meet, and what the attempt records."""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

import pytest
from conftest import ALICE, regenerate, run_jobs, status_of
from flask import Flask

from flask_plan_regen.errors import OutputValidationError, ProviderError
from flask_plan_regen.output import (
    MAX_DESCRIPTION,
    MAX_MODULES,
    MAX_PLAN_TEXT,
    MAX_TASKS,
    MAX_TITLE,
    json_in,
    parse_output,
)


def plan(modules: int = 1, tasks: int = 1, **task: Any) -> dict[str, Any]:
    task = {"title": "Task", "estimatedMinutes": 30, **task}
    return {
        "modules": [{"title": "Module", "estimatedMinutes": 60, "tasks": [dict(task)] * tasks}]
        * modules
    }


@pytest.mark.parametrize(
    "document",
    [
        plan(modules=0),
        {"modules": [{"title": "M", "estimatedMinutes": 60, "tasks": []}]},
        plan(title="   "),
        plan(title=None),
        plan(estimatedMinutes=float("inf")),
        plan(estimatedMinutes="about 30"),
        plan(estimatedMinutes="nan"),
        plan(estimatedMinutes="1e999"),
        plan(estimatedMinutes=""),
        plan(estimatedMinutes=True),
        {"plan": []},
        [],
    ],
)
def test_rule_breaking_output_is_a_validation_failure(document: Any) -> None:
    with pytest.raises(OutputValidationError):
        parse_output(json.dumps(document))


@pytest.mark.parametrize(
    "text",
    [
        '{"modules": [',
        "",
        "not json",
        "Sorry {not json} at all",
        # Two plans: which one was meant cannot be told.
        f"{json.dumps(plan())} or maybe {json.dumps(plan(modules=2))}",
    ],
)
def test_unparseable_output_is_a_provider_error(text: str) -> None:
    with pytest.raises(ProviderError) as raised:
        parse_output(text)
    assert raised.value.failure_class == "provider_error"


def test_limits_are_inclusive_and_clamping_is_recorded() -> None:
    modules, adjustments = parse_output(json.dumps(plan(modules=12, tasks=20)))
    assert (len(modules), len(modules[0].tasks)) == (12, 20)
    assert set(adjustments.values()) == {0}

    document = {
        "modules": [
            {
                "title": "M" * 600,
                "estimatedMinutes": 5000,
                "tasks": [
                    {"title": "low", "estimatedMinutes": 1},
                    {"title": "high", "estimatedMinutes": 999},
                    {"title": "round", "estimatedMinutes": 30.4},
                ],
            },
            {
                "title": "short",
                "estimatedMinutes": 3,
                "tasks": [{"title": "t", "estimatedMinutes": 5}],
            },
        ]
    }
    modules, adjustments = parse_output(json.dumps(document))
    assert len(modules[0].title) == 500
    assert [m.estimated_minutes for m in modules] == [480, 15]
    assert [t.estimated_minutes for t in modules[0].tasks] == [5, 120, 30]
    assert adjustments == {
        "titlesTruncated": 1,
        "moduleMinutesClamped": 2,
        "taskMinutesClamped": 2,
        "modulesDropped": 0,
        "tasksDropped": 0,
        "numbersCoerced": 0,
        "textsCleaned": 0,
        "descriptionsTruncated": 0,
        "descriptionsDropped": 0,
    }


def test_long_descriptions_are_cut_and_a_whole_plan_keeps_to_its_size() -> None:
    task = {"title": "t" * MAX_TITLE, "description": "d" * 5000, "estimatedMinutes": 30}
    module = {"title": "m", "description": "x" * 10, "estimatedMinutes": 60}
    document = {"modules": [{**module, "tasks": [task] * MAX_TASKS}] * MAX_MODULES}

    modules, adjustments = parse_output(json.dumps(document))

    texts = [(m.title, m.description) for m in modules] + [
        (t.title, t.description) for m in modules for t in m.tasks
    ]
    stored = sum(len(title) + len(description or "") for title, description in texts)
    print(f"\n{len(json.dumps(document))} characters asked to store {stored}: {adjustments}")
    assert adjustments["descriptionsTruncated"] == MAX_MODULES * MAX_TASKS
    assert max(len(d or "") for _, d in texts) == MAX_DESCRIPTION
    assert stored <= MAX_PLAN_TEXT
    assert adjustments["descriptionsDropped"] > 0
    assert all(len(t) == MAX_TITLE for t, _ in texts[MAX_MODULES:])  # titles all kept
    assert modules[0].tasks[0].description == "d" * MAX_DESCRIPTION  # the first ones kept


def test_texts_no_database_can_keep_are_cleaned_and_counted() -> None:
    document = {
        "modules": [
            {
                "title": "Intro\x00duction",
                "description": "Lone \ud800 surrogate",
                "estimatedMinutes": 60,
                "tasks": [
                    {"title": "\x00", "estimatedMinutes": 30},
                    {"title": "ok", "estimatedMinutes": 30},
                ],
            }
        ]
    }
    with pytest.raises(OutputValidationError):  # a title of nothing but a NUL is no title
        parse_output(json.dumps(document))
    document["modules"][0]["tasks"].pop(0)
    modules, adjustments = parse_output(json.dumps(document))
    assert (modules[0].title, modules[0].description) == ("Introduction", "Lone ? surrogate")
    assert adjustments["textsCleaned"] == 2


def test_output_nested_too_deeply_is_a_provider_error_not_ours() -> None:
    for text in ("[" * 100_000, '{"modules": ' + "[" * 5000 + "]" * 5000 + "}"):
        with pytest.raises(ProviderError):
            parse_output(text)


def test_what_can_be_kept_is_kept_and_counted() -> None:
    document = plan(modules=15, tasks=25, estimatedMinutes=" 45 ")
    document["modules"][0] = {**document["modules"][0], "estimatedMinutes": "90.4"}
    modules, adjustments = parse_output(json.dumps(document))
    assert (len(modules), {len(m.tasks) for m in modules}) == (12, {20})
    assert modules[0].estimated_minutes == 90
    assert {t.estimated_minutes for m in modules for t in m.tasks} == {45}
    assert adjustments["modulesDropped"] == 3
    assert adjustments["tasksDropped"] == 12 * 5  # of the modules kept
    assert adjustments["numbersCoerced"] == 1 + 12 * 20


@pytest.mark.parametrize(
    "text",
    [
        "```json\n{document}\n```",
        "Here is your plan:\n\n```\n{document}\n```\nGood luck!",
        "Sure! {document} Let me know if you want changes.",
        "Plan (as {{JSON}}): {document}",
        '{{"note": "draft"}} then the plan: {document}',
    ],
)
def test_the_one_json_object_is_taken_out_of_the_text_around_it(text: str) -> None:
    document = plan(modules=2, tasks=3)
    modules, _ = parse_output(text.format(document=json.dumps(document, indent=2)))
    assert (len(modules), len(modules[1].tasks)) == (2, 3)


BIG = 1_000_000  # characters; bench/extraction.py times the 10 MB answers


@pytest.mark.parametrize(
    ("text", "outcome"),
    [
        ("{" * BIG, "more than 1000 candidates"),
        ("{}" * (BIG // 2), "more than 1000 candidates"),
        ('{"a": ' * (BIG // 6), "nested too deeply"),
        ("{x} " * (BIG // 4) + json.dumps(plan()), "more than 1000 candidates"),
        ("Sure! " + json.dumps(plan()) + " {" * (BIG // 2), None),
        ("{x} " * 10 + json.dumps(plan()) + " {y}" * 10, None),
        (json.dumps({"modules": plan()["modules"], "note": "{" * BIG}), None),
    ],
    ids=["open", "pairs", "nested", "junk-then-plan", "plan-then-junk", "few-braces", "string"],
)
def test_answers_full_of_braces_are_read_or_refused_in_bounded_work(
    text: str, outcome: str | None
) -> None:
    if outcome is None:
        assert "modules" in json_in(text)
    else:
        with pytest.raises(ProviderError, match=outcome):
            json_in(text)


def test_trimming_to_the_deadline_is_recorded_on_the_attempt(app: Flask, make_plan: Any) -> None:
    start = date(2030, 1, 1)
    plan_id = make_plan(weekly_hours=1, start_date=start, deadline_date=start + timedelta(days=7))
    client = app.test_client()
    generation_id = regenerate(client, plan_id)["generationId"]
    run_jobs(app)
    (attempt,) = status_of(client, plan_id, generation_id)["attemptLog"]
    assert attempt["adjustments"]["weeks"] == 1
    assert attempt["adjustments"]["tasksTrimmed"] > 0
    document = client.get(f"/api/v1/plans/{plan_id}", headers=ALICE).get_json()
    tasks = [t for m in document["modules"] for t in m["tasks"]]
    assert {t["week"] for t in tasks} == {1}
    assert all(t["dueDate"] <= "2030-01-08" for t in tasks)
