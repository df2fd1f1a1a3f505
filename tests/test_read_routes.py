"""GET routes (status, history, plan) and JSON answers for unknown routes and methods."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests
from app_server import serve
from conftest import ALICE, BOB, plan_factory, regenerate, run_jobs, status_of
from flask import Flask
from flask.testing import FlaskClient


def test_status_of_a_finished_regeneration(
    app: Flask, client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id, skillLevel="advanced")["generationId"]
    pending = status_of(client, plan_id, generation_id)
    assert pending["status"] == "pending"
    assert pending["attemptLog"] == []
    run_jobs(app)
    body = status_of(client, plan_id, generation_id)
    assert body["status"] == "succeeded"
    assert body["attempts"] == 1
    assert body["failureClass"] is None
    assert body["overrides"] == {"skillLevel": "advanced"}
    assert body["result"]["provider"] == "builtin"
    assert body["result"]["modules"] >= 3
    assert body["createdAt"] <= body["startedAt"] <= body["finishedAt"]
    [attempt] = body["attemptLog"]
    assert attempt["outcome"] == "succeeded"
    assert attempt["modules"] == body["result"]["modules"]
    assert len(attempt["promptHash"]) == 64


def test_status_is_owner_only_and_scoped_to_the_plan(
    client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    plan_id, other_plan = make_plan(), make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    url = f"/api/v1/plans/{plan_id}/regenerations/{generation_id}"
    assert client.get(url, headers=BOB).status_code == 404
    assert client.get(url).status_code == 401
    wrong_plan = client.get(
        f"/api/v1/plans/{other_plan}/regenerations/{generation_id}", headers=ALICE
    )
    assert wrong_plan.status_code == 404
    assert wrong_plan.json["code"] == "REGENERATION_NOT_FOUND"


def test_history_is_newest_first_and_paginated(
    app: Flask, client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    plan_id = make_plan()
    ids = []
    for hours in (2, 3, 4):
        ids.append(regenerate(client, plan_id, weeklyHours=hours)["generationId"])
        run_jobs(app)
    url = f"/api/v1/plans/{plan_id}/regenerations"
    first = client.get(f"{url}?perPage=2", headers=ALICE).json
    assert [item["generationId"] for item in first["items"]] == ids[::-1][:2]
    assert (first["total"], first["page"], first["perPage"], first["hasMore"]) == (3, 1, 2, True)
    second = client.get(f"{url}?perPage=2&page=2", headers=ALICE).json
    assert [item["generationId"] for item in second["items"]] == [ids[0]]
    assert second["hasMore"] is False
    assert client.get(url, headers=BOB).status_code == 404


@pytest.mark.parametrize("query", ["page=0", "perPage=101", "page=abc"])
def test_bad_pagination_is_400(
    client: FlaskClient, make_plan: Callable[..., str], query: str
) -> None:
    response = client.get(f"/api/v1/plans/{make_plan()}/regenerations?{query}", headers=ALICE)
    assert response.status_code == 400
    assert response.json["code"] == "VALIDATION_ERROR"


def test_plan_detail_has_ordered_modules_and_tasks(
    app: Flask, client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    plan_id = make_plan(topic="Kubernetes operations")
    empty = client.get(f"/api/v1/plans/{plan_id}", headers=ALICE).json
    assert (empty["status"], empty["modules"]) == ("pending", [])
    regenerate(client, plan_id)
    run_jobs(app)
    plan = client.get(f"/api/v1/plans/{plan_id}", headers=ALICE).json
    assert plan["status"] == "ready"
    assert plan["topic"] == "Kubernetes operations"
    assert [m["position"] for m in plan["modules"]] == list(range(len(plan["modules"])))
    for module in plan["modules"]:
        assert [t["position"] for t in module["tasks"]] == list(range(len(module["tasks"])))
        assert "Kubernetes operations" in module["title"]
    assert client.get(f"/api/v1/plans/{plan_id}", headers=BOB).status_code == 404


def test_unknown_routes_and_methods_under_the_prefix_answer_json(client: FlaskClient) -> None:
    missing = client.get("/api/v1/no/such/thing")
    assert missing.status_code == 404
    assert missing.json == {"error": "No such endpoint.", "code": "NOT_FOUND"}
    wrong_method = client.delete("/api/v1/plans/abc/regenerate")
    assert wrong_method.status_code == 405
    assert wrong_method.json["code"] == "METHOD_NOT_ALLOWED"
    assert "POST" in wrong_method.headers["Allow"]


def test_the_hosts_other_pages_keep_their_own_errors(app: Flask, client: FlaskClient) -> None:
    response = client.get("/not-ours")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert client.get("/api/v1beta/x").mimetype == "text/html"


@pytest.mark.parametrize(
    ("bad_plan", "bad_generation"),
    [
        pytest.param("a%00b", "a%00b", id="NUL"),
        pytest.param("a" * 65, "a" * 37, id="one over the column"),
        pytest.param("a" * 5000, "b" * 5000, id="far too long"),
    ],
)
def test_ids_the_database_cannot_store_are_404_on_every_route(
    pg_app: Flask, bad_plan: str, bad_generation: str
) -> None:
    """Over HTTP against PostgreSQL, which refuses NUL in text (it used to answer 500)."""
    client = pg_app.test_client()
    plan_id = plan_factory(pg_app)()
    generation_id = regenerate(client, plan_id)["generationId"]
    gets = [
        f"/plans/{bad_plan}",
        f"/plans/{bad_plan}/regenerations",
        f"/plans/{bad_plan}/regenerations/{generation_id}",
        f"/plans/{plan_id}/regenerations/{bad_generation}",
    ]
    posts = [
        f"/plans/{bad_plan}/regenerate",
        f"/plans/{bad_plan}/regenerations/{generation_id}/cancel",
        f"/plans/{plan_id}/regenerations/{bad_generation}/cancel",
    ]
    with serve(pg_app) as base_url:
        api = base_url + "/api/v1"
        answers = [requests.get(api + path, headers=ALICE, timeout=10) for path in gets]
        answers += [requests.post(api + path, json={}, headers=ALICE, timeout=10) for path in posts]
    codes = [(answer.status_code, answer.json()["code"]) for answer in answers]
    print(f"\n{codes}")
    assert {status for status, _ in codes} == {404}
    assert {code for _, code in codes} <= {"PLAN_NOT_FOUND", "REGENERATION_NOT_FOUND"}
    assert status_of(client, plan_id, generation_id)["status"] == "pending"  # not canceled
