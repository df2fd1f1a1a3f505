"""The regeneration job, run in-process by RQ's SimpleWorker on the real Redis."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

import pytest
from conftest import ALICE, regenerate, run_jobs
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from flask_plan_regen import (
    GeneratedModule,
    GenerationAttempt,
    GenerationRequest,
    Plan,
    Regeneration,
    SQLAlchemyPlanStore,
    get_state,
    queue,
)
from flask_plan_regen.identity import load_plan
from flask_plan_regen.jobs import execute


def plan_json(client: FlaskClient, plan_id: str) -> dict[str, Any]:
    return dict(client.get(f"/api/v1/plans/{plan_id}", headers=ALICE).json)


def regeneration(app: Flask, generation_id: str) -> Regeneration:
    with app.app_context():
        session = get_state().db.session
        row = session.get(Regeneration, generation_id)
        assert row is not None
        session.expunge(row)
        return row


def attempts(app: Flask, generation_id: str) -> list[GenerationAttempt]:
    with app.app_context():
        session = get_state().db.session
        rows = session.scalars(
            select(GenerationAttempt).where(GenerationAttempt.regeneration_id == generation_id)
        ).all()
        session.expunge_all()
        return list(rows)


def test_success_replaces_modules_and_keeps_the_plans_input(
    app: Flask, client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    plan_id = make_plan(topic="Go concurrency", skill_level="beginner", weekly_hours=4)
    regenerate(client, plan_id)
    run_jobs(app)
    before = plan_json(client, plan_id)
    generation_id = regenerate(client, plan_id, topic="Go generics", skillLevel="advanced")[
        "generationId"
    ]
    assert run_jobs(app) == 1
    after = plan_json(client, plan_id)
    assert all("Go generics" in module["title"] for module in after["modules"])
    assert after["modules"] != before["modules"]
    # Overrides shape the generation only; the plan's own input is unchanged.
    assert (after["topic"], after["skillLevel"], after["weeklyHours"]) == (
        "Go concurrency",
        "beginner",
        4,
    )
    row = regeneration(app, generation_id)
    assert row.status == "succeeded"
    assert row.result is not None
    assert row.result["modules"] == len(after["modules"])
    assert row.result["tasks"] == sum(len(m["tasks"]) for m in after["modules"])
    [attempt] = attempts(app, generation_id)
    assert (attempt.outcome, attempt.provider, attempt.number) == ("succeeded", "builtin", 1)
    assert attempt.prompt_tokens and attempt.completion_tokens


def test_overrides_are_merged_and_null_clears_a_date(
    app: Flask, client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    plan_id = make_plan(start_date=date(2027, 1, 4), deadline_date=date(2027, 3, 1))
    generation_id = regenerate(client, plan_id, deadlineDate=None, weeklyHours=9)["generationId"]
    run_jobs(app)
    with app.app_context():
        plan = load_plan(get_state(), plan_id)
        assert plan is not None
        merged = plan.with_overrides({"deadline_date": None, "weekly_hours": 9})
        expected = GenerationRequest(plan=merged, tier="free", generation_id="", attempt=1)
        unmerged = GenerationRequest(plan=plan, tier="free", generation_id="", attempt=1)
    [attempt] = attempts(app, generation_id)
    assert attempt.prompt_hash == expected.prompt_hash()
    assert attempt.prompt_hash != unmerged.prompt_hash()
    assert plan.deadline_date == date(2027, 3, 1)  # not written back


def test_the_builtin_provider_is_deterministic(
    app: Flask, client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    plans = [make_plan(topic="Elixir", learning_style="video") for _ in range(2)]
    plans.append(make_plan(topic="Elixir", learning_style="reading"))
    for plan_id in plans:
        regenerate(client, plan_id)
    run_jobs(app)
    first, second, other = (plan_json(client, plan_id)["modules"] for plan_id in plans)
    assert first == second
    assert first != other
    assert 3 <= len(first) <= 5
    assert all(3 <= len(module["tasks"]) <= 5 for module in first)
    assert any("Watch" in task["title"] for module in first for task in module["tasks"])


def test_a_duplicate_delivery_does_nothing(
    app: Flask, client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    run_jobs(app)
    modules = plan_json(client, plan_id)["modules"]
    with app.app_context():
        assert execute(get_state(), generation_id) is None
        queue.rq_queue(get_state().redis, "plan_regen_low").enqueue_call(
            "flask_plan_regen.jobs.run_regeneration", args=(generation_id,)
        )
    assert run_jobs(app) == 1
    assert regeneration(app, generation_id).attempts == 1
    assert len(attempts(app, generation_id)) == 1
    assert plan_json(client, plan_id)["modules"] == modules


# Retries run at once in the burst worker.
NO_BACKOFF = pytest.param({"PLAN_REGEN_RETRY_BACKOFF_BASE": 0}, id="no-backoff")


@pytest.mark.parametrize("app_config", [NO_BACKOFF])
@pytest.mark.parametrize(
    ("switch", "failure_class"),
    [
        ("validation", "validation"),
        ("invalid_json", "provider_error"),
        ("provider_error", "provider_error"),
        ("rate_limit", "rate_limit"),
        ("timeout", "timeout"),
    ],
)
def test_a_failure_is_classified_and_keeps_the_old_plan(
    app: Flask,
    client: FlaskClient,
    make_plan: Callable[..., str],
    switch: str,
    failure_class: str,
) -> None:
    plan_id = make_plan()
    regenerate(client, plan_id)
    run_jobs(app)
    before = plan_json(client, plan_id)
    app.config["PLAN_REGEN_BUILTIN_FAILURE"] = switch  # after a success: switched at run time
    generation_id = regenerate(client, plan_id, topic="Something else entirely")["generationId"]
    run_jobs(app)
    row = regeneration(app, generation_id)
    assert (row.status, row.failure_class) == ("failed", failure_class)
    assert row.error and "builtin provider" not in row.error  # sanitised
    assert row.error_history[-1]["class"] == failure_class
    assert attempts(app, generation_id)[-1].failure_class == failure_class
    after = plan_json(client, plan_id)
    assert after["modules"] == before["modules"]
    assert after["status"] == "ready"
    # The plan stays usable: the next regeneration is accepted and succeeds.
    app.config["PLAN_REGEN_BUILTIN_FAILURE"] = None
    next_id = regenerate(client, plan_id)["generationId"]
    run_jobs(app)
    assert regeneration(app, next_id).status == "succeeded"


class FailingHalfwayStore(SQLAlchemyPlanStore):
    """Writes the new modules, then fails before the commit."""

    def replace_content(self, plan_id: str, modules: Sequence[GeneratedModule]) -> None:
        super().replace_content(plan_id, modules)
        self.db.session.flush()
        raise RuntimeError("disk full")


def used_quota(client: FlaskClient) -> int:
    return int(client.get("/api/v1/usage", headers=ALICE).json["monthly"]["used"])


@pytest.mark.parametrize("app_config", [NO_BACKOFF])
def test_a_failure_while_saving_is_ours_not_retried_logged_and_kept_as_billed(
    app: Flask,
    client: FlaskClient,
    make_plan: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    plan_id = make_plan()
    regenerate(client, plan_id)
    run_jobs(app)
    before = plan_json(client, plan_id)
    state = get_state(app)
    state.store = FailingHalfwayStore(state.db)
    generation_id = regenerate(client, plan_id, topic="A different topic")["generationId"]
    assert used_quota(client) == 2
    run_jobs(app)
    row = regeneration(app, generation_id)
    assert (row.status, row.failure_class, row.attempts) == ("failed", "internal", 1)
    assert row.error == "The generated plan could not be saved."
    assert plan_json(client, plan_id)["modules"] == before["modules"]
    # The provider billed the answer: the quota follows the money (a plan that makes our
    # code fail, as test_pacing_that_raises... shows, must not be a free paid call).
    assert used_quota(client) == 2
    [logged] = [r for r in caplog.records if "saving regeneration" in r.getMessage()]
    assert logged.exc_info is not None and "disk full" in str(logged.exc_info[1])


@pytest.mark.parametrize("app_config", [NO_BACKOFF])
def test_pacing_that_raises_on_the_providers_answer_is_internal_not_provider_error(
    app: Flask,
    client: FlaskClient,
    make_plan: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    with app.app_context():  # the host edits the plan behind the API before the job runs
        session = get_state().db.session
        plan = session.get(Plan, plan_id)
        assert plan is not None
        plan.start_date = date(9999, 12, 25)  # the schedule runs past date.max
        session.commit()
    run_jobs(app)
    row = regeneration(app, generation_id)
    print(f"\n{row.failure_class}: {row.error} after {row.attempts} attempt(s)")
    assert (row.status, row.failure_class, row.attempts) == ("failed", "internal", 1)
    assert [a.failure_class for a in attempts(app, generation_id)] == ["internal"]
    assert used_quota(client) == 1  # the provider's answer was billed: not a free call
    assert any(
        "checking the output raised" in r.getMessage() and r.exc_info for r in caplog.records
    )


def test_a_plan_deleted_before_the_job_runs_is_canceled_and_refunded(
    app: Flask, client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    assert used_quota(client) == 1
    with app.app_context():
        session = get_state().db.session
        session.delete(session.get(Plan, plan_id))
        session.commit()
    run_jobs(app)
    row = regeneration(app, generation_id)
    assert (row.status, row.failure_class, row.error) == (
        "canceled",
        None,
        "The plan was deleted during its regeneration.",
    )
    assert attempts(app, generation_id) == []  # the provider was never called
    assert used_quota(client) == 0
