"""The OpenAPI 3 document of the blueprint, built with apispec from the marshmallow schemas.

Served at ``GET <prefix>/openapi.json`` and printed by ``flask plan-regen openapi``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import Schema

from . import documents, schemas
from .idempotency import HEADER as IDEMPOTENCY_HEADER
from .idempotency import MAX_KEY_LENGTH, REPLAYED_HEADER
from .metrics import enabled as metrics_enabled
from .state import get_state
from .streams import LAST_EVENT_ID_HEADER, MIMETYPE

# Nested schemas before the schemas that use them, so references use these names.
COMPONENTS: dict[str, type[Schema]] = {
    "Error": documents.ErrorSchema,
    "Overrides": schemas.OverridesSchema,
    "CreatePlan": schemas.CreatePlanSchema,
    "RegenerateRequest": schemas.RegenerateRequestSchema,
    "Accepted": documents.AcceptedSchema,
    "Attempt": documents.AttemptSchema,
    "RegenerationSummary": documents.RegenerationSummarySchema,
    "Regeneration": documents.RegenerationSchema,
    "RegenerationPage": documents.RegenerationPageSchema,
    "RegenerationEvent": documents.RegenerationEventSchema,
    "ModuleEvent": documents.ModuleEventSchema,
    "TaskDocument": documents.TaskDocumentSchema,
    "ModuleDocument": documents.ModuleDocumentSchema,
    "PlanDocument": documents.PlanDocumentSchema,
    "MonthlyUsage": documents.MonthlyUsageSchema,
    "RateLimitUsage": documents.RateLimitUsageSchema,
    "Usage": documents.UsageSchema,
    "WebhookReceipt": documents.WebhookReceiptSchema,
}

ERROR_DESCRIPTIONS = {
    400: "Malformed JSON, invalid fields or a malformed Idempotency-Key.",
    401: "Not authenticated.",
    404: "No such plan or regeneration for this user.",
    409: "The plan already has an active regeneration (REGENERATION_ALREADY_QUEUED), it "
    "has finished (REGENERATION_FINISHED, cancel), or a request with this Idempotency-Key "
    "is still running.",
    413: "The body is larger than PLAN_REGEN_MAX_BODY_BYTES.",
    415: "The request's Content-Type is not application/json (UNSUPPORTED_MEDIA_TYPE); "
    "nothing was recorded.",
    422: "The Idempotency-Key was used with a different request (IDEMPOTENCY_KEY_REUSED).",
    429: "Over the rate limit (RATE_LIMITED, with Retry-After), the monthly quota "
    "(QUOTA_EXCEEDED) or the monthly spend budget (BUDGET_EXCEEDED).",
    500: "A server misconfiguration, logged; nothing was queued: the auth hook returned an "
    "unusable user id (INVALID_USER_ID), or the tier resolver a tier "
    "PLAN_REGEN_TIER_PRIORITY does not know (UNKNOWN_TIER).",
    503: "Nothing was changed: the database (DATABASE_UNAVAILABLE, with Retry-After) or the "
    "queue (QUEUE_UNAVAILABLE, with Retry-After) is unavailable, regeneration is "
    "switched off (REGENERATION_DISABLED), or this month's spend reached the app's budget "
    "(BUDGET_PAUSED).",
}

RATE_LIMIT_HEADERS = {
    name: {"schema": {"type": "string"}, "description": description}
    for name, description in [
        ("RateLimit-Limit", "Requests allowed in the window."),
        ("RateLimit-Remaining", "Requests left in the window."),
        ("RateLimit-Reset", "Seconds until the window frees up."),
    ]
}


def _errors(*statuses: int) -> dict[int, Any]:
    return {
        status: {"description": ERROR_DESCRIPTIONS[status], "content": _json("Error")}
        for status in statuses
    }


def _json(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


IDEMPOTENCY_PARAM = {
    "name": IDEMPOTENCY_HEADER,
    "in": "header",
    "required": False,
    "description": "Replays the first 2xx answer for 24 h instead of queueing again "
    "(scoped per user).",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
}

ACCEPTED = {
    "description": "Queued; poll the Location.",
    "headers": {
        "Location": {"schema": {"type": "string"}},
        REPLAYED_HEADER: {"schema": {"type": "string", "enum": ["true"]}},
        **RATE_LIMIT_HEADERS,
    },
    "content": _json("Accepted"),
}


# One event of an event stream, as OpenAPI 3.2 describes one (and schemathesis checks
# every event against it): a state (unnamed, ``data`` a RegenerationEvent in JSON) or a
# ``module`` event (``data`` a ModuleEvent).
def _event(id_pattern: str, name: str, data: str, *, named: bool) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "event", "data"] if named else ["id", "data"],
        "properties": {
            "id": {"type": "string", "pattern": id_pattern},
            "event": {"type": "string", "enum": [name]},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": f"#/components/schemas/{data}"},
            },
        },
    }


STATE_EVENT = _event("^[0-9]+$", "message", "RegenerationEvent", named=False)
MODULE_EVENT = _event("^[0-9]+[.][0-9]+$", "module", "ModuleEvent", named=True)
EVENT = {"oneOf": [STATE_EVENT, MODULE_EVENT]}

# (path below the prefix, method, operation), in the order the document lists them.
OPERATIONS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "/plans",
        "post",
        {
            "operationId": "createPlan",
            "summary": "Create a plan for the caller and queue its first generation.",
            "parameters": [IDEMPOTENCY_PARAM],
            "requestBody": {"required": True, "content": _json("CreatePlan")},
            "responses": {
                202: ACCEPTED,
                **_errors(400, 401, 409, 413, 415, 422, 429, 500, 503),
            },
        },
    ),
    (
        "/plans/{planId}/regenerate",
        "post",
        {
            "operationId": "regeneratePlan",
            "summary": "Queue a regeneration of the caller's plan.",
            "parameters": [_path_param("planId"), IDEMPOTENCY_PARAM],
            "requestBody": {"required": False, "content": _json("RegenerateRequest")},
            "responses": {
                202: ACCEPTED,
                **_errors(400, 401, 404, 409, 413, 415, 422, 429, 500, 503),
            },
        },
    ),
    (
        "/plans/{planId}/regenerations/{generationId}/cancel",
        "post",
        {
            "operationId": "cancelRegeneration",
            "summary": "Cancel a pending or running regeneration.",
            "parameters": [
                _path_param("planId"),
                _path_param("generationId"),
                IDEMPOTENCY_PARAM,
            ],
            "requestBody": {
                "required": False,
                "description": "Ignored; send Content-Type: application/json all the same.",
                "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
            },
            "responses": {
                200: {
                    "description": "Canceled (or the replayed answer).",
                    "content": _json("RegenerationSummary"),
                },
                **_errors(400, 401, 404, 409, 413, 415, 422, 500, 503),
            },
        },
    ),
    (
        "/usage",
        "get",
        {
            "operationId": "getUsage",
            "summary": "The caller's tier, rate limit and monthly quota.",
            "responses": {
                200: {"description": "Usage.", "content": _json("Usage")},
                **_errors(401, 500, 503),
            },
        },
    ),
    (
        "/plans/{planId}/regenerations/{generationId}",
        "get",
        {
            "operationId": "getRegeneration",
            "summary": "One regeneration with its attempts.",
            "parameters": [_path_param("planId"), _path_param("generationId")],
            "responses": {
                200: {"description": "The regeneration.", "content": _json("Regeneration")},
                **_errors(401, 404, 500, 503),
            },
        },
    ),
    (
        "/plans/{planId}/regenerations/{generationId}/events",
        "get",
        {
            "operationId": "streamRegenerationEvents",
            "summary": "Server-sent events: the regeneration's state, then each change until "
            "it ends.",
            "parameters": [
                _path_param("planId"),
                _path_param("generationId"),
                {
                    "name": LAST_EVENT_ID_HEADER,
                    "in": "header",
                    "required": False,
                    "description": "The id of the last event received: resume after it.",
                    "schema": {"type": "string", "pattern": "^[0-9]{1,9}([.][0-9]{1,2})?$"},
                },
            ],
            "responses": {
                200: {
                    "description": "An event stream: each event has an increasing `id` and "
                    "`data` holding a RegenerationEvent as JSON, or, for a `module` event "
                    "(id `3n.k`), a ModuleEvent: a module the running attempt has written; "
                    "comment lines keep it open; the server closes it once the "
                    "regeneration has ended.",
                    "content": {MIMETYPE: {"schema": EVENT}},
                },
                204: {"description": "It has ended and Last-Event-ID was its last event."},
                400: {
                    "description": "Last-Event-ID is not an id this stream sent "
                    "(INVALID_LAST_EVENT_ID).",
                    "content": _json("Error"),
                },
                **_errors(401, 404),
                429: {
                    "description": "The user has PLAN_REGEN_STREAM_MAX_PER_USER streams open "
                    "(TOO_MANY_STREAMS_FOR_USER, with Retry-After).",
                    "content": _json("Error"),
                },
                503: {
                    "description": "This process has PLAN_REGEN_STREAM_MAX_OPEN streams open "
                    "(TOO_MANY_STREAMS, with Retry-After).",
                    "content": _json("Error"),
                },
            },
        },
    ),
    (
        "/plans/{planId}/regenerations",
        "get",
        {
            "operationId": "listRegenerations",
            "summary": "The plan's regenerations, newest first.",
            "parameters": [
                _path_param("planId"),
                {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                {
                    "name": "perPage",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                },
            ],
            "responses": {
                200: {"description": "A page.", "content": _json("RegenerationPage")},
                **_errors(400, 401, 404, 500, 503),
            },
        },
    ),
    (
        "/plans/{planId}",
        "get",
        {
            "operationId": "getPlan",
            "summary": "The caller's plan with its modules and tasks.",
            "parameters": [_path_param("planId")],
            "responses": {
                200: {"description": "The plan.", "content": _json("PlanDocument")},
                **_errors(401, 404, 500, 503),
            },
        },
    ),
    (
        "/metrics",
        "get",
        {
            "operationId": "getMetrics",
            "summary": "Prometheus metrics (listed while PLAN_REGEN_METRICS is on).",
            "responses": {
                200: {
                    "description": "Prometheus text format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
            },
        },
    ),
    (
        "/openapi.json",
        "get",
        {
            "operationId": "getOpenApi",
            "summary": "This document.",
            "responses": {
                200: {
                    "description": "OpenAPI 3 document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        },
    ),
]


WEBHOOK_ENDPOINT = "plan_regen_stripe_webhook"
WEBHOOK = {
    "operationId": "stripeWebhook",
    "summary": "Stripe events that refresh a customer's tier (docs/billing.md).",
    "parameters": [
        {"name": "Stripe-Signature", "in": "header", "required": True, "schema": {"type": "string"}}
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    "responses": {
        200: {"description": "Received.", "content": _json("WebhookReceipt")},
        400: {
            "description": "Missing or invalid signature (INVALID_SIGNATURE), or a signed "
            "payload that is not an object with string id and type and an object data.object "
            "(INVALID_EVENT).",
            "content": _json("Error"),
        },
        413: {"description": "Payload over 1 MiB.", "content": _json("Error")},
        503: {
            "description": "Stripe or Redis unavailable; Stripe delivers again.",
            "content": _json("Error"),
        },
    },
}


def package_version() -> str:
    try:
        return version("flask-plan-regen")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def build_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.0 document for ``app``'s mount of the blueprint."""
    prefixes = get_state(app).url_prefixes
    prefix = (prefixes[0] if prefixes else "/api/v1").rstrip("/")
    marshmallow_plugin = MarshmallowPlugin()
    spec = APISpec(
        title="flask-plan-regen",
        version=package_version(),
        openapi_version="3.0.3",
        plugins=[marshmallow_plugin],
        info={"description": "Learning-plan regeneration: queue, status, history."},
    )
    # An ISO 8601 date or date-time: no single OpenAPI format covers both.
    marshmallow_plugin.map_to_openapi_type(schemas.PlanDate, "string", None)  # type: ignore[no-untyped-call]
    for name, schema in COMPONENTS.items():
        spec.components.schema(name, schema=schema)
    for path, method, operation in OPERATIONS:
        if path == "/metrics" and not metrics_enabled(app):
            continue
        spec.path(path=prefix + path, operations={method: operation})
    if WEBHOOK_ENDPOINT in app.view_functions:  # only while Stripe webhooks are configured
        spec.path(path=app.config["PLAN_REGEN_STRIPE_WEBHOOK_PATH"], operations={"post": WEBHOOK})
    return spec.to_dict()
