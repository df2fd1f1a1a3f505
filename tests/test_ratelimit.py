"""Per-user rate limit on regeneration requests: headers, 429, per tier, across processes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import redis
import requests
from conftest import ALICE, BOB, build_app, wait_until, worker_env
from flask import Flask
from servers import WorkerProcs, free_port

from flask_plan_regen import ConfigurationError


def missing_plan_url() -> str:
    return f"/api/v1/plans/{uuid.uuid4()}/regenerate"


def test_every_answer_carries_the_headers_and_the_eleventh_is_429(app: Flask) -> None:
    client = app.test_client()
    # Unknown plans: each request is counted even though it ends in 404.
    answers = [client.post(missing_plan_url(), json={}, headers=ALICE) for _ in range(11)]

    assert [a.status_code for a in answers] == [404] * 10 + [429]
    assert [a.headers["RateLimit-Limit"] for a in answers] == ["10"] * 11
    assert [int(a.headers["RateLimit-Remaining"]) for a in answers] == [*range(9, -1, -1), 0]
    assert all(0 < int(a.headers["RateLimit-Reset"]) <= 3600 for a in answers)
    denied = answers[-1]
    assert denied.json["code"] == "RATE_LIMITED"
    assert 0 < int(denied.headers["Retry-After"]) <= 3600
    # Per user: Bob is not affected.
    assert client.post(missing_plan_url(), json={}, headers=BOB).status_code == 404


def test_unauthenticated_requests_are_not_counted(app: Flask) -> None:
    client = app.test_client()
    answer = client.post(missing_plan_url(), json={})

    assert answer.status_code == 401
    assert "RateLimit-Limit" not in answer.headers


def test_limit_is_configurable_per_tier(
    sqlite_uri: str, redis_url: str, redis_conn: redis.Redis
) -> None:
    app = build_app(
        sqlite_uri,
        redis_url,
        PLAN_REGEN_RATE_LIMIT="50/hour",
        PLAN_REGEN_TIER_RATE_LIMITS={"free": "2 per minute"},
    )
    client = app.test_client()

    statuses = [
        client.post(missing_plan_url(), json={}, headers=ALICE).status_code for _ in range(3)
    ]

    assert statuses == [404, 404, 429]
    assert client.get("/api/v1/usage", headers=ALICE).json["rateLimit"] == {
        "limit": 2,
        "window": "1 minute",
        "remaining": 0,
        "resetsIn": pytest.approx(60, abs=2),
    }


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PLAN_REGEN_RATE_LIMIT", "ten an hour"),
        ("PLAN_REGEN_RATE_LIMIT", "10/hour;100/day"),
        ("PLAN_REGEN_TIER_RATE_LIMITS", {"platinum": "10/hour"}),
    ],
)
def test_bad_rate_limit_config_is_refused_at_init(
    sqlite_uri: str, redis_url: str, key: str, value: Any
) -> None:
    with pytest.raises(ConfigurationError, match=key):
        build_app(sqlite_uri, redis_url, **{key: value})


def serving(base_url: str) -> bool:
    """Whether a web process answers on ``base_url`` yet (any status will do)."""
    try:
        requests.get(f"{base_url}/api/v1/usage", timeout=1)
    except requests.ConnectionError:
        return False
    return True


@pytest.mark.slow
def test_limit_holds_across_two_web_processes(
    app: Flask,
    make_plan: Callable[..., str],
    sqlite_uri: str,
    redis_url: str,
    worker_procs: WorkerProcs,
) -> None:
    plans = [make_plan() for _ in range(12)]
    env = worker_env(
        sqlite_uri,
        redis_url,
        # Only the rate limit may refuse here.
        PLAN_REGEN_MONTHLY_QUOTAS=json.dumps({"free": "unlimited", "starter": 10, "pro": 50}),
    )
    urls = []
    for _ in range(2):
        port = free_port()
        worker_procs.spawn(["flask", "run", "--host", "127.0.0.1", "--port", str(port)], env)
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        wait_until(partial(serving, url), 30, f"{url} to start")

    answers = [
        requests.post(
            f"{urls[n % 2]}/api/v1/plans/{plan_id}/regenerate", headers=ALICE, json={}, timeout=10
        )
        for n, plan_id in enumerate(plans)
    ]

    assert [a.status_code for a in answers] == [202] * 10 + [429] * 2
    assert {a.json()["code"] for a in answers[10:]} == {"RATE_LIMITED"}
    assert [a.headers["RateLimit-Remaining"] for a in answers[8:]] == ["1", "0", "0", "0"]
