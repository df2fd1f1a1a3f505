"""The example app tested as its own developers would: its auth hook, its CLI command,
its reaction to signals, and what its users see, with every job run in the request."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_plan_regen import create_plan, signals
from flask_plan_regen.testing import run_pending_jobs

from .conftest import ALICE, BOB

PLAN = {"topic": "Interview prep: data structures", "weeklyHours": 4}


def new_plan(client: FlaskClient) -> dict[str, Any]:
    response = client.post("/api/v1/plans", json=PLAN, headers=ALICE)
    assert response.status_code == 202, response.json
    answer: dict[str, Any] = response.json
    return answer


def regeneration(client: FlaskClient, plan_id: str, generation_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/plans/{plan_id}/regenerations/{generation_id}", headers=ALICE)
    assert response.status_code == 200, response.json
    document: dict[str, Any] = response.json
    return document


def test_the_auth_hook_refuses_a_request_without_a_user(client: FlaskClient) -> None:
    response = client.post("/api/v1/plans", json=PLAN)
    assert response.status_code == 401
    assert response.json["code"] == "UNAUTHORIZED"


def test_a_new_plan_is_generated_before_the_next_request(client: FlaskClient) -> None:
    queued = new_plan(client)
    assert queued["status"] == "pending"  # what a client is told: the job was queued
    done = regeneration(client, queued["planId"], queued["generationId"])
    assert done["status"] == "succeeded"
    plan = client.get(f"/api/v1/plans/{queued['planId']}", headers=ALICE).json
    assert plan["status"] == "ready"
    assert plan["modules"] and all(module["tasks"] for module in plan["modules"])


def test_a_plan_is_only_shown_to_its_owner(client: FlaskClient) -> None:
    plan_id = new_plan(client)["planId"]
    assert client.get(f"/api/v1/plans/{plan_id}", headers=BOB).status_code == 404
    assert (
        client.post(f"/api/v1/plans/{plan_id}/regenerate", json={}, headers=BOB).status_code == 404
    )


def test_regenerating_applies_the_overrides(client: FlaskClient) -> None:
    plan_id = create_plan("alice", "Rust for web services")
    response = client.post(
        f"/api/v1/plans/{plan_id}/regenerate",
        json={"overrides": {"skillLevel": "advanced"}},
        headers=ALICE,
    )
    assert response.status_code == 202, response.json
    done = regeneration(client, plan_id, response.json["generationId"])
    assert (done["status"], done["overrides"]) == ("succeeded", {"skillLevel": "advanced"})


def test_the_app_hears_when_a_plan_is_ready(app: Flask, client: FlaskClient) -> None:
    ready: list[str] = []

    def plan_ready(sender: Flask, regeneration: dict[str, Any]) -> None:
        ready.append(regeneration["planId"])

    with signals.regeneration_succeeded.connected_to(plan_ready, app):
        plan_id = new_plan(client)["planId"]
    assert ready == [plan_id]


@pytest.mark.parametrize("app_config", [{"PLAN_REGEN_BUILTIN_FAILURE": "validation"}])
def test_a_failed_generation_is_reported_and_leaves_no_content(client: FlaskClient) -> None:
    queued = new_plan(client)
    failed = regeneration(client, queued["planId"], queued["generationId"])
    assert (failed["status"], failed["failureClass"]) == ("failed", "validation")
    plan = client.get(f"/api/v1/plans/{queued['planId']}", headers=ALICE).json
    assert plan["modules"] == []


@pytest.mark.parametrize("app_config", [{"PLAN_REGEN_EAGER": False}])
def test_a_queued_regeneration_can_be_canceled(app: Flask, client: FlaskClient) -> None:
    queued = new_plan(client)
    plan_id, generation_id = queued["planId"], queued["generationId"]
    assert regeneration(client, plan_id, generation_id)["status"] == "pending"
    cancel = client.post(
        f"/api/v1/plans/{plan_id}/regenerations/{generation_id}/cancel", json={}, headers=ALICE
    )
    assert cancel.json["status"] == "canceled"
    assert run_pending_jobs(app) == 0  # its job was taken off the queue

    again = client.post(f"/api/v1/plans/{plan_id}/regenerate", json={}, headers=ALICE).json
    assert run_pending_jobs(app) == 1
    assert regeneration(client, plan_id, again["generationId"])["status"] == "succeeded"


@pytest.mark.parametrize("app_config", [{"PLAN_REGEN_RATE_LIMIT": "2/hour"}])
def test_the_rate_limit_holds_without_a_redis_server(client: FlaskClient) -> None:
    plan_id = new_plan(client)["planId"]
    second = client.post(f"/api/v1/plans/{plan_id}/regenerate", json={}, headers=ALICE)
    assert second.status_code == 202
    third = client.post(f"/api/v1/plans/{plan_id}/regenerate", json={}, headers=ALICE)
    assert third.status_code == 429
    assert third.json["code"] == "RATE_LIMITED"


def test_a_retried_request_is_answered_once(client: FlaskClient) -> None:
    headers = {**ALICE, "Idempotency-Key": "create-1"}
    first = client.post("/api/v1/plans", json=PLAN, headers=headers)
    again = client.post("/api/v1/plans", json=PLAN, headers=headers)
    assert again.status_code == 202
    assert again.json["generationId"] == first.json["generationId"]


def test_the_create_plan_command_prints_the_new_plans_id(app: Flask, client: FlaskClient) -> None:
    result = app.test_cli_runner().invoke(
        args=["create-plan", "--owner", "alice", "--topic", "Baroque music"]
    )
    assert result.exit_code == 0, result.output
    plan_id = result.output.strip().splitlines()[-1]
    plan = client.get(f"/api/v1/plans/{plan_id}", headers=ALICE).json
    assert (plan["topic"], plan["modules"]) == ("Baroque music", [])


def test_the_create_plan_command_refuses_a_deadline_before_the_start(app: Flask) -> None:
    dates = ["--start-date", "2027-03-01", "--deadline", "2027-01-01"]
    result = app.test_cli_runner().invoke(
        args=["create-plan", "--owner", "alice", "--topic", "Baroque music", *dates]
    )
    assert result.exit_code == 2
    assert "deadlineDate" in result.output
