"""The OpenAI-compatible provider, over real HTTP against tests/openai_server.py."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from conftest import ALICE, regenerate, run_jobs, status_of
from flask import Flask
from openai_server import FakeOpenAI

from examples.host_app import db
from flask_plan_regen import GenerationAttempt, Regeneration

API_KEY = "sk-test-0123456789-very-secret-key"


@pytest.fixture
def max_attempts() -> int:
    """PLAN_REGEN_MAX_ATTEMPTS of the app; parametrize it to allow retries."""
    return 1


@pytest.fixture
def app_config(openai_server: FakeOpenAI, max_attempts: int) -> dict[str, Any]:
    return {
        "PLAN_REGEN_PROVIDER": "flask_plan_regen.openai_provider:OpenAIProvider",
        "PLAN_REGEN_PROVIDER_BASE_URL": openai_server.base_url,
        "PLAN_REGEN_PROVIDER_API_KEY": API_KEY,
        "PLAN_REGEN_PROVIDER_MODEL": "fake-large",
        "PLAN_REGEN_PROVIDER_TIER_MODELS": {"free": "fake-small"},
        "PLAN_REGEN_PROVIDER_TIMEOUT": 1.0,
        "PLAN_REGEN_MAX_ATTEMPTS": max_attempts,
        "PLAN_REGEN_RETRY_BACKOFF_BASE": 0,
    }


def regenerate_and_run(app: Flask, plan_id: str) -> dict[str, Any]:
    """Request a regeneration, run the queue in-process, return the status document."""
    client = app.test_client()
    generation_id = regenerate(client, plan_id)["generationId"]
    run_jobs(app)
    return status_of(client, plan_id, generation_id)


def test_good_answer_replaces_the_plan_and_records_model_and_usage(
    app: Flask, make_plan: Any, openai_server: FakeOpenAI
) -> None:
    plan_id = make_plan()
    document = regenerate_and_run(app, plan_id)

    assert document["status"] == "succeeded"
    (attempt,) = document["attemptLog"]
    assert attempt["provider"] == "openai"
    assert attempt["model"] == "fake-small"  # the free tier's model
    assert (attempt["promptTokens"], attempt["completionTokens"]) == (123, 456)
    (sent,) = openai_server.requests
    assert sent["body"]["model"] == "fake-small"
    assert sent["body"]["response_format"] == {"type": "json_object"}
    assert sent["authorization"] == f"Bearer {API_KEY}"
    plan = app.test_client().get(f"/api/v1/plans/{plan_id}", headers=ALICE).get_json()
    assert [m["title"] for m in plan["modules"]] == ["Module 1", "Module 2"]


@pytest.mark.parametrize(
    ("behaviour", "failure_class"),
    [
        ("status_429", "rate_limit"),
        ("status_500", "provider_error"),
        ("slow", "timeout"),
        ("malformed", "provider_error"),
        ("rule_break", "validation"),
    ],
)
def test_failures_are_classed_and_keep_the_old_plan(
    app: Flask, make_plan: Any, openai_server: FakeOpenAI, behaviour: str, failure_class: str
) -> None:
    openai_server.slow_seconds = 2.5
    plan_id = make_plan()
    openai_server.queue("good")
    assert regenerate_and_run(app, plan_id)["status"] == "succeeded"
    before = app.test_client().get(f"/api/v1/plans/{plan_id}", headers=ALICE).get_json()

    openai_server.queue(behaviour)
    document = regenerate_and_run(app, plan_id)

    assert document["status"] == "failed"
    assert document["failureClass"] == failure_class
    assert "fake error" not in json.dumps(document)  # provider internals stay internal
    after = app.test_client().get(f"/api/v1/plans/{plan_id}", headers=ALICE).get_json()
    assert after["modules"] == before["modules"]


@pytest.mark.parametrize("max_attempts", [3])
def test_retryable_failures_are_retried_within_one_regeneration(
    app: Flask, make_plan: Any, openai_server: FakeOpenAI
) -> None:
    openai_server.queue("status_500", "status_429", "good")
    document = regenerate_and_run(app, make_plan())

    assert (document["status"], document["attempts"]) == ("succeeded", 3)
    assert [e["class"] for e in document["errorHistory"]] == ["provider_error", "rate_limit"]
    assert [a["outcome"] for a in document["attemptLog"]] == ["failed", "failed", "succeeded"]


@pytest.mark.parametrize("max_attempts", [3])
def test_attempts_run_out_as_failed_with_the_last_class(
    app: Flask, make_plan: Any, openai_server: FakeOpenAI
) -> None:
    plan_id = make_plan()
    openai_server.queue("status_500", "status_500", "status_429")
    document = regenerate_and_run(app, plan_id)
    assert (document["status"], document["failureClass"], document["attempts"]) == (
        "failed",
        "rate_limit",
        3,
    )
    assert len(document["errorHistory"]) == 3
    # The cap counts attempts per regeneration: the plan's next one starts afresh.
    assert regenerate_and_run(app, plan_id)["status"] == "succeeded"


@pytest.mark.parametrize("max_attempts", [3])
def test_validation_failures_are_not_retried(
    app: Flask, make_plan: Any, openai_server: FakeOpenAI
) -> None:
    openai_server.default = "rule_break"
    document = regenerate_and_run(app, make_plan())
    assert (document["status"], document["failureClass"], document["attempts"]) == (
        "failed",
        "validation",
        1,
    )
    assert len(openai_server.requests) == 1


def test_the_api_key_never_leaves_the_provider(
    app: Flask, make_plan: Any, openai_server: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    plan_id = make_plan()
    answers = []
    for behaviour in ("status_429", "status_500", "malformed", "rule_break", "good"):
        openai_server.queue(behaviour)
        answers.append(json.dumps(regenerate_and_run(app, plan_id)))
    answers.append(
        app.test_client()
        .get(f"/api/v1/plans/{plan_id}/regenerations", headers=ALICE)
        .get_data(as_text=True)
    )

    with app.app_context():
        rows = db.session.query(Regeneration).all()
        attempts = db.session.query(GenerationAttempt).all()
        stored = json.dumps(
            [[r.error, r.error_history, r.result] for r in rows]
            + [[a.error, a.model, a.provider, a.adjustments] for a in attempts],
            default=str,
        )
    assert len(attempts) == 5
    for text in (*answers, stored, caplog.text):
        assert API_KEY not in text
        assert "very-secret" not in text
