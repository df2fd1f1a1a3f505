"""Refunds follow the money: a free user who farms answers the provider bills gets at most
their quota of paid calls in a month. Through a real ``flask plan-regen worker`` and the
official SDK against tests/openai_server.py, which counts the calls it was paid for."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from conftest import ALICE, regenerate, run_jobs, status_of, wait_for_status, worker_env
from flask import Flask
from openai_server import FakeOpenAI, provider_config
from servers import WorkerProcs

FREE_QUOTA = 5


@pytest.fixture
def app_config(openai_server: FakeOpenAI) -> dict[str, Any]:
    return provider_config(
        openai_server,
        PLAN_REGEN_MAX_ATTEMPTS=3,
        PLAN_REGEN_MONTHLY_QUOTAS={"free": FREE_QUOTA, "starter": 10, "pro": 50},
    )


@pytest.fixture
def start_worker(
    worker_procs: WorkerProcs, sqlite_uri: str, redis_url: str, app_config: dict[str, Any]
) -> Callable[[], subprocess.Popen[bytes]]:
    def start() -> subprocess.Popen[bytes]:
        config = {k: v if isinstance(v, str) else json.dumps(v) for k, v in app_config.items()}
        env = worker_env(sqlite_uri, redis_url, **config)
        return worker_procs.spawn(["flask", "plan-regen", "worker"], env)

    return start


def used(app: Flask) -> int:
    return int(app.test_client().get("/api/v1/usage", headers=ALICE).json["monthly"]["used"])


def farm(app: Flask, make_plan: Callable[..., str], tries: int) -> dict[str, Any]:
    """Ask again and again, each time once the last one ended, as a patient farmer would."""
    client = app.test_client()
    plan_id = make_plan(topic="An exhaustive plan of everything")
    outcomes: dict[str, Any] = {"accepted": 0, "refused": 0, "classes": [], "errors": set()}
    for _ in range(tries):
        answer = client.post(f"/api/v1/plans/{plan_id}/regenerate", json={}, headers=ALICE)
        if answer.status_code == 429:
            assert answer.json["code"] == "QUOTA_EXCEEDED"
            outcomes["refused"] += 1
            continue
        assert answer.status_code == 202, answer.json
        outcomes["accepted"] += 1
        generation_id = answer.json["generationId"]
        wait_for_status(app, [generation_id])
        document = status_of(client, plan_id, generation_id)
        outcomes["classes"].append(document["failureClass"])
        outcomes["errors"].add(document["error"])
    return outcomes


@pytest.mark.parametrize(
    ("behaviour", "failure_class"), [("length", "truncated"), ("prose", "provider_error")]
)
def test_a_free_user_farming_billed_failures_gets_at_most_their_quota_of_paid_calls(
    app: Flask,
    make_plan: Callable[..., str],
    openai_server: FakeOpenAI,
    start_worker: Callable[[], subprocess.Popen[bytes]],
    behaviour: str,
    failure_class: str,
) -> None:
    openai_server.default = behaviour
    start_worker()

    outcomes = farm(app, make_plan, tries=12)

    paid_calls = len(openai_server.requests)
    print(
        f"\n{behaviour}: 12 tries -> {outcomes['accepted']} accepted, {outcomes['refused']} "
        f"refused (429), {paid_calls} paid calls for a quota of {FREE_QUOTA}, used {used(app)}"
    )
    assert paid_calls <= FREE_QUOTA
    assert paid_calls == FREE_QUOTA  # the quota is the bound, not fewer calls than paid for
    assert used(app) == FREE_QUOTA
    assert set(outcomes["classes"]) == {failure_class}
    assert outcomes["refused"] == 12 - outcomes["accepted"] > 0


def test_a_billed_retry_takes_one_more_unit_and_the_last_one_fails_with_the_quotas_message(
    app: Flask, make_plan: Callable[..., str], openai_server: FakeOpenAI
) -> None:
    openai_server.default = "prose"
    client = app.test_client()
    first = regenerate(client, make_plan(topic="First"))
    run_jobs(app)
    assert used(app) == 3  # three billed attempts, one unit each
    second_plan = make_plan(topic="Second")
    second = regenerate(client, second_plan)["generationId"]
    run_jobs(app)

    document = status_of(client, second_plan, second)
    print(f"\n{document['attempts']} attempts, used {used(app)}: {document['error']}")
    assert (document["status"], document["failureClass"], document["attempts"]) == (
        "failed",
        "provider_error",
        2,
    )
    assert "quota is used up" in document["error"]
    assert used(app) == FREE_QUOTA == len(openai_server.requests)
    assert first["status"] == "pending"


def test_unbilled_failures_give_everything_back_and_a_billed_one_keeps_one_unit_per_call(
    app: Flask, make_plan: Callable[..., str], openai_server: FakeOpenAI
) -> None:
    client = app.test_client()
    # 500, 429 without usage, then a connection-level failure: nothing billed.
    openai_server.script("Unbilled", "status_500", "status_429", "status_503")
    regenerate(client, make_plan(topic="Unbilled"))
    run_jobs(app)
    assert used(app) == 0
    # An unbilled error, then a billed no-JSON answer, then success: two billed calls.
    openai_server.script("Mixed", "status_500", "prose", "good")
    plan_id = make_plan(topic="Mixed")
    generation_id = regenerate(client, plan_id)["generationId"]
    run_jobs(app)
    document = status_of(client, plan_id, generation_id)
    billed = [a["billed"] for a in document["attemptLog"]]
    print(f"\nattempts billed {billed}, used {used(app)}")
    assert (document["status"], billed) == ("succeeded", [False, True, True])
    assert used(app) == 2
