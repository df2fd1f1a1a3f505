"""Seeing spend: ``flask plan-regen costs`` in each grouping and format, operator re-runs
charged to the operator, ``GET /usage``'s spend, and the Prometheus counters; over real
HTTP against tests/openai_server.py, jobs run in-process."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from typing import Any

import pytest
from conftest import ALICE, BOB, regenerate, run_jobs
from flask import Flask
from openai_server import PRICED_CACHED, PRICED_COST, FakeOpenAI, provider_config
from test_observability import samples

from flask_plan_regen.quota import current_period

PRICES = {"fake-small": {"input": "0.15", "output": "0.60"}}
GOOD = (123 * Decimal("0.15") + 456 * Decimal("0.60")) / 10**6
TRUNCATED = (123 * Decimal("0.15") + 8192 * Decimal("0.60")) / 10**6


@pytest.fixture
def app_config(openai_server: FakeOpenAI) -> dict[str, Any]:
    return provider_config(
        openai_server,
        "fake-small",
        PLAN_REGEN_PROVIDER_TIER_MODELS={"pro": "fake-large"},
        PLAN_REGEN_MAX_ATTEMPTS=1,
        PLAN_REGEN_PRICES=PRICES,
        PLAN_REGEN_MONTHLY_BUDGETS={"free": "1.5"},
        PLAN_REGEN_METRICS=True,
    )


def costs(app: Flask, *args: str) -> str:
    result = app.test_cli_runner().invoke(args=["plan-regen", "costs", *args])
    assert result.exit_code == 0, result.output
    return str(result.output)


@pytest.fixture
def spent(app: Flask, make_plan: Any, openai_server: FakeOpenAI) -> dict[str, Any]:
    """Alice: a good answer, a truncated one, then the operator re-runs the truncated one;
    Bob: a priced answer (the server's own cost) and a 500 (not billed)."""
    openai_server.script("Alice good", "good")
    openai_server.script("Alice long", "length", "good")
    openai_server.script("Bob priced", "priced")
    openai_server.script("Bob broken", "status_500")
    client = app.test_client()
    regenerate(client, make_plan(topic="Alice good"))
    regenerate(client, make_plan(topic="Alice long"))
    regenerate(client, make_plan("bob", topic="Bob priced"), headers=BOB)
    regenerate(client, make_plan("bob", topic="Bob broken"), headers=BOB)
    before = samples(client.get("/api/v1/metrics").get_data(as_text=True))
    run_jobs(app)
    requeued = app.test_cli_runner().invoke(
        args=["plan-regen", "requeue-failed", "--class", "truncated"]
    )
    assert "requeued 1" in requeued.output, requeued.output
    run_jobs(app)
    return {"metrics_before": before}


def test_costs_sums_by_user_with_operator_reruns_apart_in_each_format(
    app: Flask, spent: dict[str, Any]
) -> None:
    rows = {row["key"]: row for row in json.loads(costs(app, "--format", "json"))}
    print(f"\n{costs(app)}")
    assert rows["alice"]["costUsd"] == f"{(GOOD + TRUNCATED).normalize():f}"
    assert (rows["alice"]["attempts"], rows["alice"]["billed"]) == (2, 2)
    assert rows["(operator)"]["costUsd"] == f"{GOOD.normalize():f}"
    assert rows["bob"]["costUsd"] == str(PRICED_COST)
    assert (rows["bob"]["attempts"], rows["bob"]["billed"]) == (2, 1)
    assert rows["bob"]["unknownCostAttempts"] == 0
    assert list(rows) == ["alice", "bob", "(operator)"]  # the costliest first

    table = costs(app)
    total = Decimal(table.splitlines()[-1].split()[-2])
    assert table.splitlines()[-1].startswith("TOTAL")
    assert total == GOOD + TRUNCATED + GOOD + Decimal(str(PRICED_COST))
    parsed = list(csv.DictReader(io.StringIO(costs(app, "--format", "csv", "--top", "1"))))
    assert [(r["user"], Decimal(r["cost_usd"])) for r in parsed] == [("alice", GOOD + TRUNCATED)]


def test_costs_by_model_tier_and_day(app: Flask, spent: dict[str, Any]) -> None:
    by_model = {r["key"]: r for r in json.loads(costs(app, "--by", "model", "--format", "json"))}
    assert set(by_model) == {"fake-small", "(unknown)"}  # the 500 named no model
    assert by_model["(unknown)"]["billed"] == 0
    (tier,) = json.loads(costs(app, "--by", "tier", "--format", "json"))
    assert tier["key"] == "free" and tier["attempts"] == 5
    (day,) = json.loads(costs(app, "--by", "day", "--format", "json"))
    assert day["key"].startswith(current_period() + "-")
    assert Decimal(day["costUsd"]) == Decimal(tier["costUsd"])
    assert costs(app, "--month", "2001-01") == "No provider calls in 2001-01.\n"
    for month in ("2026-13", "9999-12"):  # the last one's end is past datetime's years
        bad = app.test_cli_runner().invoke(args=["plan-regen", "costs", "--month", month])
        assert bad.exit_code == 2 and "is not a month" in bad.output, bad.output


def test_the_operator_rerun_is_charged_to_the_operator_not_the_user(
    app: Flask, spent: dict[str, Any]
) -> None:
    usage = app.test_client().get("/api/v1/usage", headers=ALICE).get_json()
    print(f"\n{usage['spend']}")
    # The truncated answer was billed, so Alice keeps both charges; the re-run is not hers.
    assert usage["monthly"]["used"] == 2
    spend = usage["spend"]
    assert spend["costUsd"] == f"{(GOOD + TRUNCATED).normalize():f}"
    assert (spend["promptTokens"], spend["completionTokens"]) == (246, 456 + 8192)
    assert spend["budgetUsd"] == "1.5"
    assert spend["reservedUsd"] == "0"
    assert Decimal(spend["budgetLeftUsd"]) == Decimal("1.5") - GOOD - TRUNCATED
    bob = app.test_client().get("/api/v1/usage", headers=BOB).get_json()["spend"]
    assert bob["costUsd"] == str(PRICED_COST)


def test_prometheus_counts_tokens_and_cost_by_model(app: Flask, spent: dict[str, Any]) -> None:
    after = samples(app.test_client().get("/api/v1/metrics").get_data(as_text=True))
    before = spent["metrics_before"]

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    output = delta("plan_regen_tokens_total", model="fake-small", direction="output")
    cost = delta("plan_regen_cost_usd_total", model="fake-small")
    print(f"\noutput tokens {output}, cost {cost}")
    assert output == 456 * 3 + 8192
    # Four answers of 123 prompt tokens; the priced one read PRICED_CACHED from the cache.
    assert delta("plan_regen_tokens_total", model="fake-small", direction="input") == (
        123 * 4 - PRICED_CACHED
    )
    assert delta("plan_regen_tokens_total", model="fake-small", direction="cached") == (
        PRICED_CACHED
    )
    assert cost == pytest.approx(float(GOOD * 2 + TRUNCATED) + PRICED_COST)


@pytest.mark.postgres
def test_costs_are_summed_exactly_by_postgresql_too(
    pg_app: Flask, openai_server: FakeOpenAI
) -> None:
    from conftest import plan_factory

    make_plan = plan_factory(pg_app)
    openai_server.queue("good", "priced", "length")
    client = pg_app.test_client()
    for topic in ("One", "Two", "Three"):
        regenerate(client, make_plan(topic=topic))
        run_jobs(pg_app)

    (day,) = json.loads(costs(pg_app, "--by", "day", "--format", "json"))
    (user,) = json.loads(costs(pg_app, "--by", "user", "--format", "json"))
    print(f"\nPostgreSQL: {day}")
    assert day["key"].startswith(current_period() + "-")
    assert (
        Decimal(day["costUsd"])
        == Decimal(user["costUsd"])
        == (GOOD + TRUNCATED + Decimal(str(PRICED_COST)))
    )
