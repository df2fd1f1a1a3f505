"""Every attempt records what it cost, and real servers' error shapes are classed right:
the provider in-process over real HTTP against tests/openai_server.py (the official SDK)."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import pytest
from conftest import ALICE, regenerate, run_jobs, status_of
from flask import Flask
from openai_server import (
    MAX_OUTPUT,
    PRICED_CACHED,
    UPSTREAM_MESSAGE,
    FakeOpenAI,
    provider_config,
)
from sqlalchemy import select

from examples.host_app import db
from flask_plan_regen import GenerationAttempt
from flask_plan_regen.errors import ConfigurationError
from flask_plan_regen.models import Usage
from flask_plan_regen.quota import current_period
from flask_plan_regen.spend import Prices, call_cost, check_config, parse_prices

PRICES = {"fake-small": {"input": "0.15", "output": "0.60", "cached_input": "0.075"}}


@pytest.fixture
def max_attempts() -> int:
    return 1


@pytest.fixture
def app_config(openai_server: FakeOpenAI, max_attempts: int) -> dict[str, Any]:
    return provider_config(
        openai_server, "fake-small", PLAN_REGEN_MAX_ATTEMPTS=max_attempts, PLAN_REGEN_PRICES=PRICES
    )


def run_one(app: Flask, make_plan: Any, openai_server: FakeOpenAI, *behaviours: str) -> Any:
    openai_server.queue(*behaviours)
    plan_id = make_plan()
    client = app.test_client()
    generation_id = regenerate(client, plan_id)["generationId"]
    run_jobs(app)
    return status_of(client, plan_id, generation_id)


def used(app: Flask) -> int:
    with app.app_context():
        row = db.session.get(Usage, ("alice", current_period()))
        return row.used if row is not None else 0


def expected_cost(prompt: int, completion: int, cached: int = 0) -> Decimal:
    return (
        Decimal(prompt - cached) * Decimal("0.15")
        + Decimal(cached) * Decimal("0.075")
        + Decimal(completion) * Decimal("0.60")
    ) / Decimal(1_000_000)


# behaviour -> (failure class, prompt, completion, cached tokens, cost, billed)
KINDS: dict[str, tuple[str | None, int | None, int | None, int | None, Decimal | None, bool]] = {
    "good": (None, 123, 456, None, expected_cost(123, 456), True),
    "priced": (None, 123, 456, PRICED_CACHED, Decimal("0.00123"), True),
    "length": ("truncated", 123, MAX_OUTPUT, None, expected_cost(123, MAX_OUTPUT), True),
    "refusal": ("refused", 123, 456, None, expected_cost(123, 456), True),
    "filtered": ("refused", 123, 456, None, expected_cost(123, 456), True),
    "rule_break": ("validation", 123, 456, None, expected_cost(123, 456), True),
    "prose": ("provider_error", 123, 456, None, expected_cost(123, 456), True),
    "malformed": ("provider_error", 123, 456, None, expected_cost(123, 456), True),
    "status_500": ("provider_error", None, None, None, None, False),
}


@pytest.mark.parametrize("behaviour", list(KINDS))
def test_each_kind_of_attempt_records_its_tokens_and_cost(
    app: Flask, make_plan: Any, openai_server: FakeOpenAI, behaviour: str
) -> None:
    document = run_one(app, make_plan, openai_server, behaviour)

    failure_class, prompt, completion, cached, cost, billed = KINDS[behaviour]
    (attempt,) = document["attemptLog"]
    print(f"\n{behaviour}: {attempt['failureClass']} cost {attempt['costUsd']} billed {billed}")
    assert attempt["failureClass"] == failure_class
    assert (attempt["promptTokens"], attempt["completionTokens"]) == (prompt, completion)
    assert attempt["cachedTokens"] == cached
    assert attempt["costUsd"] == (None if cost is None else f"{cost.normalize():f}")
    assert (attempt["billed"], attempt["chargedTo"]) == (billed, "user")
    assert attempt["model"] == ("fake-small" if prompt is not None else None)
    with app.app_context():
        row = db.session.scalars(select(GenerationAttempt)).one()
        assert row.cost_usd == cost  # an exact Decimal, not a float
        assert isinstance(row.cost_usd, Decimal | None)


def test_without_a_price_the_cost_is_unknown_not_zero(
    app: Flask, make_plan: Any, openai_server: FakeOpenAI
) -> None:
    app.config["PLAN_REGEN_PRICES"] = {}
    good = run_one(app, make_plan, openai_server, "good")
    priced = run_one(app, make_plan, openai_server, "priced")

    assert good["attemptLog"][0]["costUsd"] is None
    assert good["attemptLog"][0]["completionTokens"] == 456
    assert priced["attemptLog"][0]["costUsd"] == "0.00123"  # the server's own figure


def test_the_cost_function_is_exact() -> None:
    prices = parse_prices({"input": "0.15", "output": "0.60", "cached_input": "0.075"})
    assert prices == Prices(Decimal("0.15"), Decimal("0.60"), Decimal("0.075"))
    # A float (Flask reads FLASK_PLAN_REGEN_* variables as JSON) is the number written.
    assert parse_prices({"input": 0.15, "output": 0.6}).input == Decimal("0.15")
    one_cached_token = call_cost(prices, prompt_tokens=1, completion_tokens=0, cached_tokens=1)
    assert one_cached_token == Decimal("0.000000075")
    million = call_cost(prices, prompt_tokens=10**6, completion_tokens=10**6)
    assert million == Decimal("0.75")
    assert call_cost(None, prompt_tokens=1, completion_tokens=1) is None
    assert call_cost(prices, prompt_tokens=None, completion_tokens=5) is None
    assert call_cost(None, prompt_tokens=None, completion_tokens=None, reported=0.1) == Decimal(
        "0.1"
    )
    no_cached_price = parse_prices({"input": "1", "output": "2"})
    assert call_cost(
        no_cached_price, prompt_tokens=10, completion_tokens=0, cached_tokens=4
    ) == Decimal("0.00001")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PLAN_REGEN_PRICES", {"m": {"input": -0.15, "output": "0.6"}}),
        ("PLAN_REGEN_PRICES", {"m": {"input": "0.15"}}),
        ("PLAN_REGEN_PRICES", {"m": {"input": "x", "output": "1"}}),
        ("PLAN_REGEN_PRICES", {"m": {"input": "1", "output": "1", "extra": "1"}}),
        ("PLAN_REGEN_MONTHLY_BUDGETS", {"free": "-1"}),
        ("PLAN_REGEN_MONTHLY_BUDGETS", {"nobody": "1"}),
        ("PLAN_REGEN_MONTHLY_BUDGETS", {"pro": "5"}),  # no price for the pro tier's model
        ("PLAN_REGEN_GLOBAL_MONTHLY_BUDGET", "lots"),
    ],
)
def test_wrong_prices_and_budgets_are_refused_at_init(key: str, value: Any) -> None:
    config = {
        "PLAN_REGEN_PRICES": {},
        "PLAN_REGEN_MONTHLY_BUDGETS": {},
        "PLAN_REGEN_GLOBAL_MONTHLY_BUDGET": "unlimited",
        "PLAN_REGEN_TIER_PRIORITY": {"free": 1, "starter": 5, "pro": 10},
        "PLAN_REGEN_PROVIDER_TIER_MODELS": {},
        "PLAN_REGEN_PROVIDER_MODEL": "gpt-4o-mini",
        key: value,
    }
    with pytest.raises(ConfigurationError, match=key.replace("[", r"\[")) as raised:
        check_config(config)
    print(f"\n{raised.value}")


@pytest.mark.parametrize("max_attempts", [3])
@pytest.mark.parametrize(
    ("behaviour", "failure_class", "calls"),
    [("body_error_429", "rate_limit", 3), ("body_error_502", "provider_error", 3)],
)
def test_an_error_in_a_200_body_is_classed_by_its_code_and_its_message_logged(
    app: Flask,
    make_plan: Any,
    openai_server: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    behaviour: str,
    failure_class: str,
    calls: int,
) -> None:
    openai_server.default = behaviour
    with caplog.at_level(logging.WARNING):
        document = run_one(app, make_plan, openai_server)

    assert (document["status"], document["failureClass"]) == ("failed", failure_class)
    assert [e["class"] for e in document["errorHistory"]] == [failure_class] * calls
    assert len(openai_server.requests) == calls
    assert UPSTREAM_MESSAGE in caplog.text
    assert "no choices" not in caplog.text
    assert used(app) == 0  # nothing billed: refunded


def test_finish_reason_error_logs_the_upstream_message(
    app: Flask, make_plan: Any, openai_server: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        document = run_one(app, make_plan, openai_server, "finish_error")
    assert document["failureClass"] == "provider_error"
    assert f"upstream error: {UPSTREAM_MESSAGE}" in caplog.text


@pytest.mark.parametrize("max_attempts", [3])
def test_azures_prompt_filter_is_a_refusal_that_keeps_the_quota(
    app: Flask, make_plan: Any, openai_server: FakeOpenAI
) -> None:
    document = run_one(app, make_plan, openai_server, "prompt_filtered")

    assert (document["status"], document["failureClass"], document["attempts"]) == (
        "failed",
        "refused",
        1,
    )
    assert document["error"] == "The provider's content filter refused this plan's request."
    assert "HTTP 400" not in document["error"]
    assert document["attemptLog"][0]["billed"] is False
    assert used(app) == 1  # what was asked: kept, like a filtered answer


@pytest.mark.parametrize("max_attempts", [3])
def test_out_of_credit_is_provider_quota_not_retried_refunded_and_warned_once(
    app: Flask, make_plan: Any, openai_server: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    openai_server.default = "out_of_credit"
    with caplog.at_level(logging.WARNING, logger="flask_plan_regen.openai_provider"):
        first = run_one(app, make_plan, openai_server)
        second = run_one(app, make_plan, openai_server)

    for document in (first, second):
        assert (document["status"], document["failureClass"], document["attempts"]) == (
            "failed",
            "provider_quota",
            1,
        )
        assert document["error"] == "Generation is unavailable right now."
    assert len(openai_server.requests) == 2  # never retried
    warnings = [r for r in caplog.records if "out of credit" in r.getMessage()]
    print(f"\nout-of-credit warnings for 2 regenerations: {len(warnings)}")
    assert len(warnings) == 1
    assert used(app) == 0
    assert (
        "rate limiting"
        not in status_of(app.test_client(), first["planId"], first["generationId"], ALICE)["error"]
    )
