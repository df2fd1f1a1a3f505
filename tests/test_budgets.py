"""Spend budgets: a reservation of the worst case at submit (429 BUDGET_EXCEEDED at the
budget's edge, racing or not, on SQLite and PostgreSQL), actual costs charged, the rest
released; the global budget pauses submits (503) and workers (jobs stay pending)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from conftest import (
    ALICE,
    BOB,
    plan_factory,
    regenerate,
    run_jobs,
    statuses,
    wait_for_status,
    wait_until,
    worker_env,
)
from flask import Flask
from openai_server import FakeOpenAI, provider_config
from servers import WorkerProcs
from sqlalchemy import func, select

from examples.host_app import db
from flask_plan_regen import Regeneration, get_state
from flask_plan_regen.config import DEFAULTS
from flask_plan_regen.models import GenerationAttempt, Plan, Spend
from flask_plan_regen.quota import current_period
from flask_plan_regen.spend import GLOBAL_SCOPE, reservation, user_scope
from flask_plan_regen.types import PlanInput

TOPIC = "Budgeted topic"
PRICES = {"fake-small": {"input": "1.25", "output": "2.5"}}
EDGE = 7  # regenerations the budget covers exactly


def base_config(openai_server: FakeOpenAI) -> dict[str, Any]:
    return provider_config(
        openai_server,
        "fake-small",
        PLAN_REGEN_PROVIDER_MAX_OUTPUT_TOKENS=1000,
        PLAN_REGEN_MAX_ATTEMPTS=2,
        PLAN_REGEN_MONTHLY_QUOTAS={"free": "unlimited", "starter": 10, "pro": 50},
        PLAN_REGEN_PRICES=PRICES,
    )


def one_reservation(config: dict[str, Any]) -> Decimal:
    """What one regeneration of a TOPIC plan reserves (computed the way submit does)."""
    plan = PlanInput(id="", owner_id="alice", topic=TOPIC)
    amount = reservation(
        {**DEFAULTS, **config, "PLAN_REGEN_MONTHLY_BUDGETS": {"free": "1"}}, "free", plan
    )
    assert amount is not None
    return amount


@pytest.fixture
def app_config(openai_server: FakeOpenAI) -> dict[str, Any]:
    config = base_config(openai_server)
    budget = one_reservation(config) * EDGE
    return {**config, "PLAN_REGEN_MONTHLY_BUDGETS": {"free": f"{budget:f}"}}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_app(request: pytest.FixtureRequest) -> Flask:
    app: Flask = request.getfixturevalue("app" if request.param == "sqlite" else "pg_app")
    return app


def ledger(app: Flask, scope: str) -> tuple[Decimal, Decimal]:
    """(spent, reserved) of ``scope`` this month."""
    with app.app_context():
        row = db.session.get(Spend, (scope, current_period()))
        found = (row.spent_usd, row.reserved_usd) if row else (Decimal(0), Decimal(0))
        db.session.rollback()
        return found


def test_a_budget_holds_under_20_concurrent_submits_at_its_edge(
    any_app: Flask, app_config: dict[str, Any], openai_server: FakeOpenAI
) -> None:
    make_plan = plan_factory(any_app)
    plans = [make_plan(topic=TOPIC) for _ in range(20)]
    barrier = threading.Barrier(len(plans))
    answers: list[tuple[int, dict[str, Any]]] = []

    def submit(plan_id: str) -> None:
        client = any_app.test_client()
        barrier.wait()
        answer = client.post(f"/api/v1/plans/{plan_id}/regenerate", json={}, headers=ALICE)
        answers.append((answer.status_code, answer.get_json()))

    threads = [threading.Thread(target=submit, args=(plan_id,)) for plan_id in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    codes = sorted(status for status, _ in answers)
    spent, reserved = ledger(any_app, user_scope("alice"))
    budget = one_reservation(app_config) * EDGE
    print(f"\n20 concurrent submits, budget {budget} for {EDGE}: {codes}; reserved {reserved}")
    assert codes == [202] * EDGE + [429] * (20 - EDGE)
    refused = [body for status, body in answers if status == 429]
    assert {body["code"] for body in refused} == {"BUDGET_EXCEEDED"}
    assert refused[0]["details"]["resetsAt"].endswith("T00:00:00Z")
    assert (spent, reserved) == (Decimal(0), budget)
    with any_app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Regeneration)) == EDGE

    # The jobs run: each charges what it cost and releases the rest of its reservation.
    run_jobs(any_app)
    spent, reserved = ledger(any_app, user_scope("alice"))
    with any_app.app_context():
        costs = db.session.scalar(select(func.sum(GenerationAttempt.cost_usd)))
        db.session.rollback()
    print(f"after the jobs: spent {spent} (attempts sum {costs}), reserved {reserved}")
    assert reserved == 0
    assert spent == costs == EDGE * (123 * Decimal("1.25") + 456 * Decimal("2.5")) / 10**6
    assert ledger(any_app, GLOBAL_SCOPE)[0] == spent
    # What was released can be reserved again.
    regenerate(any_app.test_client(), make_plan(topic=TOPIC))


def test_a_retry_charges_each_attempt_and_a_failure_releases_the_rest(
    app: Flask, make_plan: Callable[..., str], openai_server: FakeOpenAI
) -> None:
    openai_server.queue("prose", "length")
    regenerate(app.test_client(), make_plan(topic=TOPIC))
    run_jobs(app)

    spent, reserved = ledger(app, user_scope("alice"))
    expected = (2 * 123 * Decimal("1.25") + (456 + 8192) * Decimal("2.5")) / 10**6
    print(f"\nprose then length: spent {spent}, reserved {reserved}")
    assert (spent, reserved) == (expected, Decimal(0))


@pytest.fixture
def paused_config(openai_server: FakeOpenAI) -> dict[str, Any]:
    cost = (123 * Decimal("1.25") + 456 * Decimal("2.5")) / 10**6
    return {
        **base_config(openai_server),
        "PLAN_REGEN_GLOBAL_MONTHLY_BUDGET": f"{cost * 2:f}",  # two good answers
        "PLAN_REGEN_BUDGET_RECHECK": 1,
    }


@pytest.mark.slow
def test_the_global_budget_pauses_calls_and_submits_then_resumes(
    app: Flask,
    paused_config: dict[str, Any],
    openai_server: FakeOpenAI,
    worker_procs: WorkerProcs,
    sqlite_uri: str,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app.config.update(paused_config)
    make_plan = plan_factory(app)
    client = app.test_client()
    first = [regenerate(client, make_plan(topic=f"First {n}"))["generationId"] for n in range(2)]
    waiting = [regenerate(client, make_plan(topic=f"Later {n}"))["generationId"] for n in range(2)]

    def start(config: dict[str, Any]) -> Any:
        env = worker_env(
            sqlite_uri,
            redis_url,
            **{k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()},
        )
        return worker_procs.spawn(["flask", "plan-regen", "worker"], env)

    # One worker runs the first two; the budget is then spent.
    with app.app_context():
        get_state().redis  # noqa: B018 (the app's Redis is up)
    worker = start(paused_config)
    wait_for_status(app, first)
    worker_procs.wait_for_log(worker, "provider calls are paused", timeout=60)
    calls_when_paused = len(openai_server.requests)
    with caplog.at_level(logging.WARNING):
        paused = client.post(
            f"/api/v1/plans/{make_plan(topic='Refused')}/regenerate", json={}, headers=ALICE
        )
    assert (paused.status_code, paused.json["code"]) == (503, "BUDGET_PAUSED")
    assert paused.headers["Retry-After"] == str(app.config["PLAN_REGEN_BUDGET_RECHECK"])
    # The waiting jobs are put off again and again, never claimed, nothing failed.
    wait_until(
        lambda: worker_procs.log(worker).count("scheduled for retry") >= 4,
        timeout=60,
        what="the paused jobs being put off twice each",
    )
    assert statuses(app, waiting) == dict.fromkeys(waiting, "pending")
    assert len(openai_server.requests) == calls_when_paused == 2
    log = worker_procs.log(worker)
    print(
        f"\npaused after {calls_when_paused} calls; put-offs so far: "
        f"{log.count('scheduled for retry')}; pause logged {log.count('calls are paused')} time(s)"
    )
    assert log.count("provider calls are paused") == 1
    with app.app_context():
        attempts = db.session.scalar(
            select(func.count())
            .select_from(GenerationAttempt)
            .where(GenerationAttempt.regeneration_id.in_(waiting))
        )
        db.session.rollback()
    assert attempts == 0

    # The operator raises the budget: a worker with the new config runs what waited.
    worker.terminate()
    worker.wait(30)
    start({**paused_config, "PLAN_REGEN_GLOBAL_MONTHLY_BUDGET": "unlimited"})
    assert wait_for_status(app, waiting, timeout=60) == dict.fromkeys(waiting, "succeeded")
    assert len(openai_server.requests) == 4


def test_a_first_generation_reserves_too_and_a_refusal_creates_nothing(
    app: Flask, app_config: dict[str, Any]
) -> None:
    client = app.test_client()
    body = {"topic": TOPIC}
    accepted = client.post("/api/v1/plans", json=body, headers=ALICE)
    assert accepted.status_code == 202, accepted.get_json()
    assert ledger(app, user_scope("alice"))[1] == one_reservation(app_config)

    app.config["PLAN_REGEN_MONTHLY_BUDGETS"] = {"free": "0.000001"}  # below one reservation
    refused = client.post("/api/v1/plans", json={"topic": "Another"}, headers=BOB)
    print(f"\n{refused.status_code} {refused.get_json()}")
    assert (refused.status_code, refused.get_json()["code"]) == (429, "BUDGET_EXCEEDED")
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Plan)) == 1
        assert db.session.get(Spend, (user_scope("bob"), current_period())) is None


def test_a_billed_call_of_unknown_cost_is_charged_its_worst_case_and_counted_apart(
    app: Flask, make_plan: Callable[..., str], openai_server: FakeOpenAI
) -> None:
    openai_server.queue("no_usage")
    regenerate(app.test_client(), make_plan(topic=TOPIC))
    run_jobs(app)

    spent, reserved = ledger(app, user_scope("alice"))
    spend = app.test_client().get("/api/v1/usage", headers=ALICE).get_json()["spend"]
    worst_call = (Decimal(1000) * Decimal("2.5")) / 10**6  # no prompt tokens reported
    print(f"\nunknown cost: ledger spent {spent}, usage {spend}")
    assert (spent, reserved) == (worst_call, Decimal(0))  # never 0 for unknown
    assert (spend["costUsd"], spend["unknownCostAttempts"]) == ("0", 1)
