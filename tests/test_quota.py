"""Monthly quota per tier: 429 past it, atomic under concurrency, refunds, GET /usage."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import ALICE, BOB, build_app, plan_factory, regenerate, run_jobs
from flask import Flask
from servers import free_port
from sqlalchemy import func, select

from examples.host_app import db
from flask_plan_regen import ConfigurationError, Regeneration, get_state
from flask_plan_regen.documents import iso_utc
from flask_plan_regen.models import Usage
from flask_plan_regen.quota import current_period, period_resets_at, refund


@pytest.fixture
def app_config() -> dict[str, Any]:
    # The rate limit (10/hour) is tested on its own; keep it out of the way here.
    return {"PLAN_REGEN_RATE_LIMIT": "1000/hour"}


def used(app: Flask, user_id: str = "alice") -> int:
    with app.app_context():
        row = db.session.get(Usage, (user_id, current_period()))
        return row.used if row is not None else 0


def test_free_tier_gets_five_a_month_then_429_with_details(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    client = app.test_client()
    plans = [make_plan() for _ in range(6)]
    for plan_id in plans[:5]:
        regenerate(client, plan_id)  # 202
    denied = client.post(f"/api/v1/plans/{plans[5]}/regenerate", json={}, headers=ALICE)

    assert denied.status_code == 429
    assert denied.json["code"] == "QUOTA_EXCEEDED"
    assert denied.json["details"] == {
        "limit": 5,
        "remaining": 0,
        "resetsAt": iso_utc(period_resets_at(current_period())),
    }
    assert used(app) == 5
    # Another user's quota is their own.
    regenerate(client, make_plan(owner="bob"), BOB)  # 202


def test_resets_at_is_the_first_instant_of_next_month_utc() -> None:
    assert iso_utc(period_resets_at("2026-11")) == "2026-12-01T00:00:00Z"
    assert iso_utc(period_resets_at("2026-12")) == "2027-01-01T00:00:00Z"
    assert current_period(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == "2026-12"


def test_usage_reports_tier_limits_used_and_remaining(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    client = app.test_client()
    regenerate(client, make_plan())
    regenerate(client, make_plan())

    answer = client.get("/api/v1/usage", headers=ALICE)

    assert answer.status_code == 200
    assert answer.json["tier"] == "free"
    assert answer.json["monthly"] == {
        "period": current_period(),
        "limit": 5,
        "used": 2,
        "remaining": 3,
        "resetsAt": iso_utc(period_resets_at(current_period())),
    }
    assert answer.json["rateLimit"]["limit"] == 1000
    assert answer.json["rateLimit"]["remaining"] == 998
    assert client.get("/api/v1/usage").status_code == 401


@pytest.mark.parametrize(
    "app_config", [{"PLAN_REGEN_MONTHLY_QUOTAS": {"free": "unlimited", "starter": 10, "pro": 50}}]
)
def test_unlimited_tier_is_never_denied_but_still_counted(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    client = app.test_client()

    for _ in range(7):
        regenerate(client, make_plan())  # 202

    usage = client.get("/api/v1/usage", headers=ALICE).json["monthly"]
    assert (usage["limit"], usage["used"], usage["remaining"]) == (None, 7, None)


def test_duplicate_request_gives_the_quota_back(app: Flask, make_plan: Callable[..., str]) -> None:
    client = app.test_client()
    plan_id = make_plan()

    regenerate(client, plan_id)  # 202
    duplicate = client.post(f"/api/v1/plans/{plan_id}/regenerate", json={}, headers=ALICE)

    assert duplicate.status_code == 409
    assert used(app) == 1


def test_queue_down_gives_the_quota_back(sqlite_uri: str, redis_url: str, tmp_path: Path) -> None:
    app = build_app(sqlite_uri, f"redis://127.0.0.1:{free_port()}/0", PLAN_REGEN_REDIS_TIMEOUT=0.5)
    plan_id = plan_factory(app)()

    answer = app.test_client().post(f"/api/v1/plans/{plan_id}/regenerate", json={}, headers=ALICE)

    assert answer.status_code == 503
    assert answer.json["code"] == "QUEUE_UNAVAILABLE"
    assert used(app) == 0
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Regeneration)) == 0


@pytest.mark.parametrize(
    ("failure", "used_after"),
    [("provider_error", 0), ("rate_limit", 0), ("timeout", 0), ("validation", 1)],
)
def test_failure_of_ours_gives_the_quota_back_and_the_users_does_not(
    sqlite_uri: str, redis_url: str, redis_conn: redis.Redis, failure: str, used_after: int
) -> None:
    app = build_app(
        sqlite_uri, redis_url, PLAN_REGEN_BUILTIN_FAILURE=failure, PLAN_REGEN_RETRY_BACKOFF_BASE=0
    )
    regenerate(app.test_client(), plan_factory(app)())

    run_jobs(app)

    with app.app_context():
        regeneration = db.session.scalars(select(Regeneration)).one()
        assert (regeneration.status, regeneration.failure_class) == ("failed", failure)
    assert used(app) == used_after


def test_a_failed_regeneration_is_refunded_once(
    sqlite_uri: str, redis_url: str, redis_conn: redis.Redis
) -> None:
    app = build_app(
        sqlite_uri,
        redis_url,
        PLAN_REGEN_BUILTIN_FAILURE="provider_error",
        PLAN_REGEN_RETRY_BACKOFF_BASE=0,  # the retries run at once in the burst worker
    )
    make_plan = plan_factory(app)
    client = app.test_client()
    regenerate(client, make_plan())
    run_jobs(app)  # fails with provider_error: refunded
    regenerate(client, make_plan())  # queued, counted
    assert used(app) == 1

    with app.app_context():
        failed = db.session.scalars(select(Regeneration).where(Regeneration.status == "failed"))
        refunded_again = refund(get_state(), failed.one())
        db.session.commit()

    assert refunded_again is False
    assert used(app) == 1


@pytest.mark.parametrize(
    "quotas",
    [
        {"free": -1, "starter": 10, "pro": 50},
        {"free": 5, "starter": 10},
        {"free": "lots", "starter": 10, "pro": 50},
    ],
)
def test_bad_quota_config_is_refused_at_init(
    sqlite_uri: str, redis_url: str, quotas: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError, match="PLAN_REGEN_MONTHLY_QUOTAS"):
        build_app(sqlite_uri, redis_url, PLAN_REGEN_MONTHLY_QUOTAS=quotas)


@pytest.mark.postgres
def test_concurrent_requests_on_postgres_accept_exactly_the_remaining_quota(
    pg_app: Flask,
) -> None:
    make_plan = plan_factory(pg_app)
    for _ in range(2):
        regenerate(pg_app.test_client(), make_plan())  # 202
    plans = [make_plan() for _ in range(20)]
    barrier = threading.Barrier(len(plans))
    statuses: list[int] = []

    def request(plan_id: str) -> None:
        client = pg_app.test_client()
        barrier.wait()
        answer = client.post(f"/api/v1/plans/{plan_id}/regenerate", json={}, headers=ALICE)
        statuses.append(answer.status_code)

    threads = [threading.Thread(target=request, args=(plan_id,)) for plan_id in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [202] * 3 + [429] * 17
    assert used(pg_app) == 5
    with pg_app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Regeneration)) == 5


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_app(request: pytest.FixtureRequest) -> Flask:
    """The app on each database: PostgreSQL records and charges in one statement."""
    app: Flask = request.getfixturevalue("app" if request.param == "sqlite" else "pg_app")
    return app


def regenerations(app: Flask) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Regeneration)) or 0


@pytest.mark.parametrize(
    "app_config",
    [{"PLAN_REGEN_RATE_LIMIT": "1000/hour", "PLAN_REGEN_MONTHLY_QUOTAS": {
        "free": 1, "starter": 10, "pro": 50}}],
)  # fmt: skip
def test_a_busy_plan_is_409_before_a_used_up_quota_and_429_records_nothing(
    app_config: dict[str, Any], any_app: Flask
) -> None:
    make_plan = plan_factory(any_app)
    client = any_app.test_client()
    busy = make_plan()
    regenerate(client, busy)  # 202: the quota of 1 is used up

    again = client.post(f"/api/v1/plans/{busy}/regenerate", json={}, headers=ALICE)
    other = client.post(f"/api/v1/plans/{make_plan()}/regenerate", json={}, headers=ALICE)

    assert (again.status_code, again.json["code"]) == (409, "REGENERATION_ALREADY_QUEUED")
    assert (other.status_code, other.json["code"]) == (429, "QUOTA_EXCEEDED")
    assert (used(any_app), regenerations(any_app)) == (1, 1)


@pytest.mark.parametrize(
    "app_config",
    [{"PLAN_REGEN_RATE_LIMIT": "1000/hour", "PLAN_REGEN_MONTHLY_QUOTAS": {
        "free": "unlimited", "starter": 0, "pro": 50}}],
)  # fmt: skip
def test_unlimited_and_zero_quotas_on_each_database(
    app_config: dict[str, Any], any_app: Flask
) -> None:
    make_plan = plan_factory(any_app)
    client = any_app.test_client()
    for _ in range(3):
        regenerate(client, make_plan())  # free: unlimited, still counted
    any_app.config["PLAN_REGEN_DEFAULT_TIER"] = "starter"
    denied = client.post(f"/api/v1/plans/{make_plan()}/regenerate", json={}, headers=ALICE)

    assert (denied.status_code, denied.json["details"]["limit"]) == (429, 0)
    assert (used(any_app), regenerations(any_app)) == (3, 3)
