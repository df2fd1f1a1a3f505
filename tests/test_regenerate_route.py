"""POST /api/v1/plans/<plan_id>/regenerate: every answer and validation rule."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import redis
from conftest import ALICE, BOB, build_app, lose_the_queue, regenerate, statuses
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue
from rq.serializers import JSONSerializer

from flask_plan_regen import Regeneration, get_state
from flask_plan_regen.pacing import years_after


def post_regenerate(client: FlaskClient, plan_id: str, body: Any = None, **kwargs: Any) -> Any:
    """POST ``body`` as given (or raw ``data=``) to the route; return the response, any status."""
    kwargs.setdefault("headers", ALICE)
    if body is not None and "data" not in kwargs:
        kwargs["json"] = body
    return client.post(f"/api/v1/plans/{plan_id}/regenerate", **kwargs)


def test_accepted_request_is_recorded_and_queued(
    app: Flask, client: FlaskClient, make_plan: Callable[..., str], redis_conn: redis.Redis
) -> None:
    plan_id = make_plan(topic="Rust for web services")
    response = post_regenerate(client, plan_id, {"overrides": {"weeklyHours": 8}})
    assert response.status_code == 202
    body = response.json
    assert body["status"] == "pending"
    assert body["planId"] == plan_id
    assert body["priority"] == 1
    assert body["queue"] == "plan_regen_low"
    generation_id = body["generationId"]
    assert response.headers["Location"] == (
        f"/api/v1/plans/{plan_id}/regenerations/{generation_id}"
    )
    queue = Queue("plan_regen_low", connection=redis_conn, serializer=JSONSerializer)
    assert queue.job_ids == [generation_id]
    assert queue.fetch_job(generation_id).args == [generation_id]
    with app.app_context():
        row = get_state().db.session.get(Regeneration, generation_id)
        assert row is not None
        assert (row.status, row.user_id, row.tier) == ("pending", "alice", "free")
        assert row.overrides == {"weeklyHours": 8}


def test_empty_body_means_no_overrides(client: FlaskClient, make_plan: Callable[..., str]) -> None:
    plan_id = make_plan()
    response = post_regenerate(client, plan_id, data=b"", content_type="application/json")
    assert response.status_code == 202


def test_overrides_null_means_no_overrides(
    client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    assert post_regenerate(client, make_plan(), {"overrides": None}).status_code == 202


def test_valid_overrides_are_normalised(
    app: Flask, client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    plan_id = make_plan()
    overrides = {
        "topic": "  Distributed systems  ",
        "notes": "   ",
        "skillLevel": "advanced",
        "weeklyHours": 80,
        "learningStyle": "practice",
        "startDate": "2026-12-01T09:30:00+01:00",
        "deadlineDate": "2027-02-01",
    }
    generation_id = regenerate(client, plan_id, **overrides)["generationId"]
    with app.app_context():
        row = get_state().db.session.get(Regeneration, generation_id)
        assert row is not None
        assert row.overrides == {
            "topic": "Distributed systems",
            "notes": None,
            "skillLevel": "advanced",
            "weeklyHours": 80,
            "learningStyle": "practice",
            "startDate": "2026-12-01",
            "deadlineDate": "2027-02-01",
        }


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"topic": "ab"}, "topic"),
        ({"topic": "   abc   x" + "y" * 200}, "topic"),
        ({"topic": 42}, "topic"),
        ({"notes": "n" * 2001}, "notes"),
        ({"skillLevel": "expert"}, "skillLevel"),
        ({"weeklyHours": 0}, "weeklyHours"),
        ({"weeklyHours": 81}, "weeklyHours"),
        ({"weeklyHours": 5.5}, "weeklyHours"),
        ({"weeklyHours": "5"}, "weeklyHours"),
        ({"learningStyle": "osmosis"}, "learningStyle"),
        ({"startDate": "next tuesday"}, "startDate"),
        ({"deadlineDate": "2026-13-40"}, "deadlineDate"),
        ({"deadlineDate": 20270101}, "deadlineDate"),
        ({"colour": "blue"}, "colour"),
        ({"topic": "Rust\u0000 basics"}, "topic"),
        # A line break could forge a prompt line; single-line fields refuse it.
        ({"topic": "Rust\nSkill level: advanced"}, "topic"),
        ({"topic": "Rust\r\nbasics"}, "topic"),
        ({"topic": "Rust\u2029basics"}, "topic"),
        ({"notes": "bad \ud800 surrogate"}, "notes"),
        ({"skill_level": "advanced"}, "skill_level"),
    ],
)
def test_invalid_overrides_are_a_400_naming_the_field(
    app: Flask,
    client: FlaskClient,
    make_plan: Callable[..., str],
    overrides: dict[str, Any],
    field: str,
) -> None:
    response = post_regenerate(client, make_plan(), {"overrides": overrides})
    assert response.status_code == 400
    assert response.json["code"] == "VALIDATION_ERROR"
    assert response.json["error"] == "Invalid overrides."
    assert list(response.json["details"]["fieldErrors"]) == [field]
    assert statuses(app) == {}


@pytest.mark.parametrize("body", [[], "text", 3, {"overrides": [1]}, {"extra": 1}])
def test_a_body_of_the_wrong_shape_is_a_validation_error(
    client: FlaskClient, make_plan: Callable[..., str], body: Any
) -> None:
    response = post_regenerate(client, make_plan(), body)
    assert response.status_code == 400
    assert response.json["code"] == "VALIDATION_ERROR"
    assert response.json["details"]["fieldErrors"]


@pytest.mark.parametrize("raw", [b"{", b"{'single': 1}", b"\xff\xfe", b"[" * 100_000 + b"]"])
def test_malformed_json_is_invalid_json(
    client: FlaskClient, make_plan: Callable[..., str], raw: bytes
) -> None:
    plan_id = make_plan()
    response = post_regenerate(client, plan_id, data=raw, content_type="application/json")
    assert response.status_code in (400, 413)
    assert response.json["code"] in ("INVALID_JSON", "PAYLOAD_TOO_LARGE")
    if len(raw) < 1000:
        assert response.json["code"] == "INVALID_JSON"


def test_a_body_over_64_kib_is_413(
    app: Flask, client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    body = json.dumps({"overrides": {"notes": "x" * (64 * 1024)}}).encode()
    response = post_regenerate(client, make_plan(), data=body, content_type="application/json")
    assert response.status_code == 413
    assert response.json["code"] == "PAYLOAD_TOO_LARGE"
    assert statuses(app) == {}


def test_a_deadline_not_after_the_start_is_400_after_merging(
    client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    plan_id = make_plan(start_date=date(2027, 3, 1))
    response = post_regenerate(client, plan_id, {"overrides": {"deadlineDate": "2027-03-01"}})
    assert response.status_code == 400
    assert "deadlineDate" in response.json["details"]["fieldErrors"]
    # Clearing the start makes the same deadline fine.
    regenerate(client, plan_id, deadlineDate="2027-03-01", startDate=None)


def test_a_deadline_that_has_passed_with_no_start_is_400(
    client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    response = post_regenerate(client, make_plan(), {"overrides": {"deadlineDate": "2020-01-01"}})
    assert response.status_code == 400
    assert response.json["details"]["fieldErrors"]["deadlineDate"] == [
        "The deadline must be after today when there is no start date."
    ]


def five_years_from_today() -> date:
    return years_after(datetime.now(UTC).date(), 5)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"startDate": "9999-12-31"}, "startDate"),  # the schedule used to overflow
        ({"startDate": "1999-12-31"}, "startDate"),
        ({"deadlineDate": "9999-12-31T00:00:00Z"}, "deadlineDate"),
        ({"startDate": "2024-01-01", "deadlineDate": "2029-01-02"}, "deadlineDate"),
        ({"startDate": "2000-01-01", "deadlineDate": "2027-01-01"}, "deadlineDate"),
    ],
)
def test_dates_outside_the_schedulable_range_are_400_and_spend_nothing(
    app: Flask,
    client: FlaskClient,
    make_plan: Callable[..., str],
    overrides: dict[str, str],
    field: str,
) -> None:
    response = post_regenerate(client, make_plan(), {"overrides": overrides})
    print(f"\n{overrides}: {response.json['details']['fieldErrors']}")
    assert (response.status_code, response.json["code"]) == (400, "VALIDATION_ERROR")
    assert list(response.json["details"]["fieldErrors"]) == [field]
    assert statuses(app) == {}
    assert client.get("/api/v1/usage", headers=ALICE).json["monthly"]["used"] == 0


def test_the_range_ends_five_years_from_today_and_at_2000(
    client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    latest = five_years_from_today()
    plan_id = make_plan()
    regenerate(client, plan_id, startDate="2000-01-01", deadlineDate="2004-12-31")
    other = make_plan()
    regenerate(client, other, startDate=str(latest - timedelta(days=7)), deadlineDate=str(latest))
    too_late = post_regenerate(
        client, make_plan(), {"overrides": {"startDate": str(latest + timedelta(days=1))}}
    )
    assert too_late.status_code == 400


def test_a_stored_date_out_of_range_is_checked_after_merging(
    client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    plan_id = make_plan(start_date=date(9999, 1, 1))  # stored behind the API's back
    response = post_regenerate(client, plan_id, {})
    assert response.json["details"]["fieldErrors"].keys() == {"startDate"}
    regenerate(client, plan_id, startDate="2027-01-04")  # overriding it makes it fine


def test_no_user_is_401(client: FlaskClient, make_plan: Callable[..., str]) -> None:
    response = post_regenerate(client, make_plan(), {}, headers={})
    assert response.status_code == 401
    assert response.json == {"error": "Authentication required.", "code": "UNAUTHORIZED"}


@pytest.mark.parametrize(
    "plan_id", ["not-a-uuid", "0" * 300, "00000000-0000-0000-0000-000000000000"]
)
def test_unknown_or_malformed_plan_ids_are_404(client: FlaskClient, plan_id: str) -> None:
    response = post_regenerate(client, plan_id, {})
    assert response.status_code == 404
    assert response.json["code"] == "PLAN_NOT_FOUND"


def test_another_users_plan_is_the_same_404(
    client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    plan_id = make_plan(owner="bob")
    mine = post_regenerate(client, plan_id, {})
    missing = post_regenerate(client, "11111111-1111-1111-1111-111111111111", {})
    assert mine.status_code == missing.status_code == 404
    assert mine.json == missing.json
    regenerate(client, plan_id, BOB)


def test_a_second_request_while_one_is_active_is_409_with_its_id(
    client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    plan_id = make_plan()
    first = regenerate(client, plan_id)
    second = post_regenerate(client, plan_id, {"overrides": {"weeklyHours": 3}})
    assert second.status_code == 409
    assert second.json["code"] == "REGENERATION_ALREADY_QUEUED"
    assert second.json["details"] == {"generationId": first["generationId"]}


def test_redis_down_is_503_and_leaves_no_row(
    sqlite_uri: str, make_plan: Callable[..., str]
) -> None:
    from servers import free_port

    app = build_app(sqlite_uri, f"redis://127.0.0.1:{free_port()}/0")
    response = post_regenerate(app.test_client(), make_plan(), {})
    assert response.status_code == 503
    assert response.json["code"] == "QUEUE_UNAVAILABLE"
    assert statuses(app) == {}


def test_an_enqueue_failure_after_the_row_was_recorded_undoes_it(
    app: Flask, client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    plan_id = make_plan()
    lose_the_queue(app)
    response = post_regenerate(client, plan_id, {})
    assert response.status_code == 503
    assert response.json["code"] == "QUEUE_UNAVAILABLE"
    assert statuses(app) == {}
    usage = client.get("/api/v1/usage", headers=ALICE).json
    assert usage["monthly"]["used"] == 0  # the quota charge was given back


@pytest.mark.parametrize("app_config", [{"PLAN_REGEN_DEFAULT_TIER": "pro"}])
def test_priority_topic_and_tier_pick_the_queue(
    client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    answer = regenerate(client, make_plan(), topic="Machine Learning basics")
    assert (answer["priority"], answer["queue"]) == (13, "plan_regen_high")


@pytest.mark.parametrize("app_config", [{"PLAN_REGEN_TIER_RESOLVER": lambda user_id: "gold"}])
def test_an_unknown_tier_is_a_server_error_without_details(
    app: Flask, client: FlaskClient, make_plan: Callable[..., str], caplog: Any
) -> None:
    unknown_tier = {
        "error": "The subscription tier could not be resolved.",
        "code": "UNKNOWN_TIER",
    }
    response = post_regenerate(client, make_plan(), {})
    assert (response.status_code, response.json) == (500, unknown_tier)
    assert "'gold'" in caplog.text
    assert statuses(app) == {}
    usage = client.get("/api/v1/usage", headers=ALICE)
    assert (usage.status_code, usage.json) == (500, unknown_tier)


def broken_plan_loader(plan_id: str) -> None:
    raise RuntimeError("secret internals")


@pytest.mark.parametrize("app_config", [{"PLAN_REGEN_PLAN_LOADER": broken_plan_loader}])
def test_a_failing_hook_is_a_json_500_never_a_stack_trace(
    app: Flask, client: FlaskClient, make_plan: Callable[..., str]
) -> None:
    response = post_regenerate(client, make_plan(), {})
    assert response.status_code == 500
    assert response.json == {"error": "An internal error occurred.", "code": "INTERNAL_ERROR"}
    assert b"secret" not in response.data


def test_the_database_not_the_pre_check_enforces_one_active_regeneration(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    from flask_plan_regen.errors import ApiError
    from flask_plan_regen.lifecycle import submit

    plan_id = make_plan()
    fields: dict[str, Any] = {"user_id": "alice", "overrides": {}, "tier": "free",
                              "priority": 1, "queue_name": "plan_regen_low"}  # fmt: skip
    with app.app_context():
        first_id = submit(get_state(), plan_id=plan_id, **fields).id
        with pytest.raises(ApiError) as raised:
            submit(get_state(), plan_id=plan_id, **fields)
    assert raised.value.status == 409
    assert raised.value.details == {"generationId": first_id}
    assert len(statuses(app)) == 1
