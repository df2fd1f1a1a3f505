"""The OpenAPI document: served, printed by the CLI, complete, and honoured (schemathesis)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
import redis
import schemathesis
from conftest import ALICE, NO_LIMITS, regenerate, run_jobs
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def test_document_is_served_and_printed(app: Flask) -> None:
    served = app.test_client().get("/api/v1/openapi.json")
    assert served.status_code == 200
    assert served.json["openapi"] == "3.0.3"
    printed = app.test_cli_runner().invoke(args=["plan-regen", "openapi"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output) == served.json


def test_metrics_are_listed_only_while_they_are_on(app: Flask) -> None:
    paths = app.test_client().get("/api/v1/openapi.json").json["paths"]
    assert "/api/v1/metrics" not in paths
    assert "/api/v1/usage" in paths


@pytest.mark.parametrize(
    "app_config",
    [
        {
            "PLAN_REGEN_STRIPE_API_KEY": "sk_test_x",
            "PLAN_REGEN_STRIPE_WEBHOOK_SECRET": "whsec_x",
            "PLAN_REGEN_METRICS": True,
        }
    ],
)
def test_document_lists_every_route_of_the_package(app: Flask) -> None:
    paths = app.test_client().get("/api/v1/openapi.json").json["paths"]
    assert "/api/v1/billing/stripe/webhook" in paths
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("plan_regen"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "{" + _camel(m.group(1)) + "}", rule.rule)
        assert path in paths, f"{rule.rule} is missing from the OpenAPI document"
        documented = set(paths[path])
        assert (rule.methods or set()) - {"HEAD", "OPTIONS"} == {m.upper() for m in documented}


# What each POST route's code can answer: the view's own errors, the idempotency
# layer's (400 bad key, 409 in progress, 422 reused, 503 Redis), body size (413), the
# content type (415), INVALID_USER_ID and UNKNOWN_TIER (500), DATABASE_UNAVAILABLE (503).
POST_STATUSES = {
    "/api/v1/plans": {202, 400, 401, 409, 413, 415, 422, 429, 500, 503},
    "/api/v1/plans/{planId}/regenerate": {202, 400, 401, 404, 409, 413, 415, 422, 429, 500, 503},
    "/api/v1/plans/{planId}/regenerations/{generationId}/cancel": {
        200,
        400,
        401,
        404,
        409,
        413,
        415,
        422,
        500,
        503,
    },
}


def test_post_routes_document_every_status_they_answer(app: Flask) -> None:
    paths = app.test_client().get("/api/v1/openapi.json").json["paths"]
    for path, statuses in POST_STATUSES.items():
        assert {int(status) for status in paths[path]["post"]["responses"]} == statuses, path


@pytest.mark.parametrize("app_config", [{"PLAN_REGEN_IDEMPOTENCY_WAIT": 0}])
def test_create_plan_in_progress_409_is_documented(app: Flask, redis_conn: redis.Redis) -> None:
    client = app.test_client()
    headers = {**ALICE, "Idempotency-Key": "plan-1"}
    body = {"topic": "Kubernetes operations", "weeklyHours": 4}
    assert client.post("/api/v1/plans", json=body, headers=headers).status_code == 202
    (stored,) = redis_conn.keys("plan_regen:idempotency:*")
    fingerprint = json.loads(redis_conn.get(stored))["fingerprint"]
    redis_conn.set(stored, json.dumps({"state": "in_progress", "fingerprint": fingerprint}))
    answer = client.post("/api/v1/plans", json=body, headers=headers)
    assert answer.status_code == 409
    assert answer.json["code"] == "IDEMPOTENCY_REQUEST_IN_PROGRESS"
    responses = client.get("/api/v1/openapi.json").json["paths"]["/api/v1/plans"]["post"]
    assert "409" in responses["responses"]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@pytest.mark.parametrize("app_config", [NO_LIMITS])
def test_api_honours_its_document(app: Flask, make_plan: Callable[..., str]) -> None:
    """Schemathesis, in-process over WSGI: no 5xx, every answer as documented."""
    plan_id = make_plan()
    accepted = regenerate(app.test_client(), plan_id)
    run_jobs(app)
    known = {"planId": plan_id, "generationId": accepted["generationId"]}
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 4  # schemathesis skips the document's own path

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def honours(case: schemathesis.Case) -> None:
            # Half the cases use ids that exist, so the 200 documents are exercised too.
            for name, value in list((case.path_parameters or {}).items()):
                if len(str(value)) % 2 == 0:
                    case.path_parameters[name] = known[name]
            case.call_and_validate(headers=ALICE, checks=CHECKS)

        honours()
