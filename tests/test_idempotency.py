"""Idempotency-Key on POST /plans/<id>/regenerate: replays, reuse, concurrent retries."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests
from app_server import serve
from conftest import ALICE, BOB, regenerate
from flask import Flask
from sqlalchemy import func, select

from examples.host_app import db
from flask_plan_regen import Plan, Regeneration, get_state, queue
from flask_plan_regen.config import DEFAULTS, rq_queue_names
from flask_plan_regen.idempotency import in_progress_ttl

BODY = {"overrides": {"topic": "Go concurrency"}}


def post(client, plan_id: str, key: str | None, body=BODY, user=ALICE):  # type: ignore[no-untyped-def]
    """POST ``body`` with an Idempotency-Key (None: without one); return the response."""
    headers = dict(user)
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(f"/api/v1/plans/{plan_id}/regenerate", json=body, headers=headers)


def regeneration_count(app: Flask, plan_id: str) -> int:
    with app.app_context():
        query = select(func.count()).where(Regeneration.plan_id == plan_id)
        return int(db.session.scalar(query) or 0)


def queued_jobs(app: Flask) -> int:
    with app.app_context():
        stats = queue.queue_stats(get_state().redis, rq_queue_names(app.config))
        return sum(entry["queued"] for entry in stats)


def test_same_key_same_body_replays_first_answer(app: Flask, make_plan: Callable[..., str]) -> None:
    plan_id = make_plan()
    client = app.test_client()
    first = post(client, plan_id, "key-1")
    # Key order and whitespace do not make a different request.
    second = client.post(
        f"/api/v1/plans/{plan_id}/regenerate",
        data='{ "overrides" : {"topic":"Go concurrency"} }',
        headers={**ALICE, "Idempotency-Key": "key-1", "Content-Type": "application/json"},
    )
    assert first.status_code == second.status_code == 202
    assert second.json == first.json
    assert second.headers["Location"] == first.headers["Location"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert regeneration_count(app, plan_id) == 1
    assert queued_jobs(app) == 1


def test_same_key_different_body_is_422(app: Flask, make_plan: Callable[..., str]) -> None:
    plan_id = make_plan()
    client = app.test_client()
    assert post(client, plan_id, "key-2").status_code == 202
    reused = post(client, plan_id, "key-2", body={"overrides": {"topic": "Other topic"}})
    assert reused.status_code == 422
    assert reused.json["code"] == "IDEMPOTENCY_KEY_REUSED"
    other_plan = make_plan()
    assert post(client, other_plan, "key-2").json["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert regeneration_count(app, other_plan) == 0


def test_keys_are_scoped_per_user(app: Flask, make_plan: Callable[..., str]) -> None:
    alice_plan, bob_plan = make_plan("alice"), make_plan("bob")
    client = app.test_client()
    assert post(client, alice_plan, "shared").status_code == 202
    bob = post(client, bob_plan, "shared", user=BOB)
    assert bob.status_code == 202
    assert "Idempotent-Replayed" not in bob.headers
    assert queued_jobs(app) == 2


def test_error_answers_are_not_kept(app: Flask, make_plan: Callable[..., str]) -> None:
    plan_id = make_plan()
    client = app.test_client()
    invalid = post(client, plan_id, "key-3", body={"overrides": {"weeklyHours": 0}})
    assert invalid.status_code == 400
    # The 400 changed nothing, so the key is free for the corrected request.
    fixed = post(client, plan_id, "key-3", body={"overrides": {"weeklyHours": 4}})
    assert fixed.status_code == 202
    assert regeneration_count(app, plan_id) == 1


def test_answer_expires_after_ttl(
    app: Flask, make_plan: Callable[..., str], redis_conn: redis.Redis
) -> None:
    plan_id = make_plan()
    client = app.test_client()
    assert post(client, plan_id, "key-4").status_code == 202
    (stored,) = redis_conn.keys("plan_regen:idempotency:*")
    assert 23 * 3600 < redis_conn.ttl(stored) <= 24 * 3600
    assert json.loads(redis_conn.get(stored))["status"] == 202


def test_malformed_key_is_400(app: Flask, make_plan: Callable[..., str]) -> None:
    plan_id = make_plan()
    response = post(app.test_client(), plan_id, "x" * 256)
    assert response.status_code == 400
    assert response.json["code"] == "INVALID_IDEMPOTENCY_KEY"
    assert regeneration_count(app, plan_id) == 0


def rate_limit_headers(response) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {k: v for k, v in response.headers.items() if k.startswith("RateLimit-")}


@pytest.mark.parametrize("app_config", [{"PLAN_REGEN_IDEMPOTENCY_WAIT": 0}])
def test_answers_from_the_record_carry_rate_limit_headers_without_counting(
    app: Flask, make_plan: Callable[..., str], redis_conn: redis.Redis
) -> None:
    plan_id = make_plan()
    # A real server: pytest-flask's request context would carry `g` across test-client calls.
    with serve(app) as base_url:

        def send(body: object = BODY, key: str | None = "key-rl", plan: str = plan_id):  # type: ignore[no-untyped-def]
            headers = {**ALICE, **({"Idempotency-Key": key} if key else {})}
            url = f"{base_url}/api/v1/plans/{plan}/regenerate"
            return requests.post(url, json=body, headers=headers, timeout=30)

        first = send()
        replayed = send()
        reused = send({"overrides": {"topic": "Other topic"}})
        (stored,) = redis_conn.keys("plan_regen:idempotency:*")
        fingerprint = json.loads(redis_conn.get(stored))["fingerprint"]
        redis_conn.set(stored, json.dumps({"state": "in_progress", "fingerprint": fingerprint}))
        in_progress = send()
        counted = send(key=None, plan=make_plan())

    assert first.headers["RateLimit-Remaining"] == "9"
    assert [replayed.status_code, reused.status_code, in_progress.status_code] == [202, 422, 409]
    for answer in (replayed, reused, in_progress):
        assert rate_limit_headers(answer) == rate_limit_headers(first)  # nothing counted
    assert counted.headers["RateLimit-Remaining"] == "8"


def test_malformed_key_without_authentication_is_401(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    plan_id = make_plan()
    response = post(app.test_client(), plan_id, "x" * 256, user={})
    assert response.status_code == 401
    assert response.json["code"] == "UNAUTHORIZED"


def test_in_progress_marker_outlives_the_slowest_request() -> None:
    stripe_on = {
        **DEFAULTS,
        "PLAN_REGEN_STRIPE_API_KEY": "sk_test_x",
        "PLAN_REGEN_STRIPE_TIMEOUT": 30.0,
        "PLAN_REGEN_STRIPE_MAX_NETWORK_RETRIES": 3,
    }
    # Four Stripe attempts of 30 s alone take 120 s; the marker lives at least twice that.
    assert in_progress_ttl(stripe_on) >= 2 * (4 * 30 + 6 * DEFAULTS["PLAN_REGEN_REDIS_TIMEOUT"])
    assert in_progress_ttl(DEFAULTS) >= 60


@pytest.mark.parametrize("app_config", [{"PLAN_REGEN_IDEMPOTENCY_WAIT": 0.2}])
def test_request_in_progress_is_409_after_the_wait(
    app: Flask, make_plan: Callable[..., str], redis_conn: redis.Redis
) -> None:
    plan_id = make_plan()
    client = app.test_client()
    assert post(client, plan_id, "key-5").status_code == 202
    (stored,) = redis_conn.keys("plan_regen:idempotency:*")
    # Turn the record back into a marker, as if the first request were still running.
    record = json.loads(redis_conn.get(stored))
    marker = {"state": "in_progress", "fingerprint": record["fingerprint"]}
    redis_conn.set(stored, json.dumps(marker))
    response = post(client, plan_id, "key-5")
    assert response.status_code == 409
    assert response.json["code"] == "IDEMPOTENCY_REQUEST_IN_PROGRESS"
    assert response.headers["Retry-After"] == "1"


def test_concurrent_retries_are_processed_once(app: Flask, make_plan: Callable[..., str]) -> None:
    plan_id = make_plan()
    with serve(app) as base_url, ThreadPoolExecutor(max_workers=16) as pool:
        url = f"{base_url}/api/v1/plans/{plan_id}/regenerate"
        headers = {**ALICE, "Idempotency-Key": "retry-storm"}
        send = lambda _: requests.post(url, json=BODY, headers=headers, timeout=30)  # noqa: E731
        responses = list(pool.map(send, range(16)))
    assert [r.status_code for r in responses] == [202] * 16
    assert len({r.json()["generationId"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 15
    assert regeneration_count(app, plan_id) == 1
    assert queued_jobs(app) == 1


def test_create_plan_is_idempotent(app: Flask) -> None:
    client = app.test_client()
    headers = {**ALICE, "Idempotency-Key": "new-plan"}
    body = {"topic": "Kubernetes operations", "weeklyHours": 4}
    first = client.post("/api/v1/plans", json=body, headers=headers)
    second = client.post("/api/v1/plans", json=body, headers=headers)
    assert first.status_code == second.status_code == 202
    assert second.json == first.json  # same plan, same generation
    assert second.headers["Idempotent-Replayed"] == "true"
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Plan)) == 1
    assert queued_jobs(app) == 1


def test_cancel_is_idempotent(app: Flask, make_plan: Callable[..., str]) -> None:
    plan_id = make_plan()
    client = app.test_client()
    generation_id = regenerate(client, plan_id, **BODY["overrides"])["generationId"]
    url = f"/api/v1/plans/{plan_id}/regenerations/{generation_id}/cancel"
    headers = {**ALICE, "Idempotency-Key": "cancel-1"}
    first = client.post(url, json={}, headers=headers)
    retried = client.post(url, json={}, headers=headers)
    assert first.status_code == retried.status_code == 200
    assert retried.json == first.json and retried.json["status"] == "canceled"
    # Without the key, the same request is evaluated again: it has finished by now.
    assert client.post(url, json={}, headers=ALICE).json["code"] == "REGENERATION_FINISHED"
