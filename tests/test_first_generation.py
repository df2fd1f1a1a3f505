"""POST /api/v1/plans: create a plan and queue its first generation."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import ALICE, BOB, build_app, lose_the_queue, run_jobs
from flask import Flask
from servers import free_port

from examples.host_app import db
from flask_plan_regen import Plan, Regeneration


def create(app: Flask, body: Any, headers: dict[str, str] = ALICE) -> Any:
    return app.test_client().post("/api/v1/plans", json=body, headers=headers)


def test_creates_the_plan_and_queues_its_first_generation(app: Flask) -> None:
    answer = create(
        app, {"topic": "  Machine learning basics ", "skillLevel": "advanced", "weeklyHours": 6}
    )
    assert answer.status_code == 202
    body = answer.get_json()
    assert body["status"] == "pending"
    assert body["priority"] == 1 + 3  # free tier + priority phrase
    client = app.test_client()
    plan = client.get(f"/api/v1/plans/{body['planId']}", headers=ALICE).get_json()
    assert (plan["topic"], plan["status"], plan["modules"]) == (
        "Machine learning basics",
        "pending",
        [],
    )
    assert client.get(f"/api/v1/plans/{body['planId']}", headers=BOB).status_code == 404
    assert client.get("/api/v1/usage", headers=ALICE).get_json()["monthly"]["used"] == 1

    # The first generation is active: a regenerate request meets the usual 409.
    again = client.post(f"/api/v1/plans/{body['planId']}/regenerate", json={}, headers=ALICE)
    assert again.status_code == 409
    assert again.get_json()["details"]["generationId"] == body["generationId"]

    run_jobs(app)
    status = client.get(answer.headers["Location"], headers=ALICE).get_json()
    assert (status["kind"], status["status"]) == ("generation", "succeeded")
    plan = client.get(f"/api/v1/plans/{body['planId']}", headers=ALICE).get_json()
    assert plan["status"] == "ready"
    assert plan["modules"] and all(t["week"] for m in plan["modules"] for t in m["tasks"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "topic"),
        ({"topic": "ab"}, "topic"),
        ({"topic": "Rust", "weeklyHours": 0}, "weeklyHours"),
        ({"topic": "Rust", "colour": "blue"}, "colour"),
        (
            {"topic": "Rust", "startDate": "2030-02-01", "deadlineDate": "2030-01-01"},
            "deadlineDate",
        ),
        ({"topic": "Rust", "deadlineDate": "2020-01-01"}, "deadlineDate"),
        ({"topic": "Rust", "startDate": "9999-12-31"}, "startDate"),
        ({"topic": "Rust", "startDate": "1999-12-31"}, "startDate"),
        ({"topic": "Rust", "deadlineDate": "9999-12-31"}, "deadlineDate"),
        (
            {"topic": "Rust", "startDate": "2024-01-01", "deadlineDate": "2029-01-02"},
            "deadlineDate",
        ),
        ({"topic": "Rust\u0000 basics"}, "topic"),
        ({"topic": "Rust", "notes": "\udc00"}, "notes"),
        ({"topic": "Rust\nSkill level: advanced"}, "topic"),
        ({"topic": "Rust\u2028basics"}, "topic"),
    ],
)
def test_invalid_bodies_are_400_and_create_nothing(app: Flask, body: Any, field: str) -> None:
    answer = create(app, body)
    assert answer.status_code == 400
    assert answer.get_json()["code"] == "VALIDATION_ERROR"
    assert field in answer.get_json()["details"]["fieldErrors"]
    with app.app_context():
        assert db.session.query(Plan).count() == 0
    assert app.test_client().get("/api/v1/usage", headers=ALICE).json["monthly"]["used"] == 0


def test_unauthenticated_is_401(app: Flask) -> None:
    assert create(app, {"topic": "Rust"}, headers={}).status_code == 401


@pytest.mark.parametrize("redis_down", ["everywhere", "only at the enqueue"])
def test_queue_unavailable_is_503_and_leaves_no_plan_and_no_charge(
    sqlite_uri: str, redis_url: str, redis_down: str
) -> None:
    if redis_down == "everywhere":
        app = build_app(sqlite_uri, f"redis://127.0.0.1:{free_port()}/0")
    else:  # after the rate limit passed and the plan, row and charge were written
        app = build_app(sqlite_uri, redis_url)
        lose_the_queue(app)
    answer = create(app, {"topic": "Rust for web services"})
    assert answer.status_code == 503
    assert answer.get_json()["code"] == "QUEUE_UNAVAILABLE"
    with app.app_context():
        assert db.session.query(Plan).count() == 0
        assert db.session.query(Regeneration).count() == 0
    usage = app.test_client().get("/api/v1/usage", headers=ALICE).get_json()
    assert usage["monthly"]["used"] == 0  # never charged, or given back
