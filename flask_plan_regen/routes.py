"""The HTTP surface: the ``regen_bp`` blueprint and its JSON error answers."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from marshmallow import Schema, ValidationError
from sqlalchemy import func, select
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from . import documents, lifecycle, previews
from .bodies import read_body, require_json_content_type
from .cost_report import monthly_spend
from .database import UNAVAILABLE_ERRORS, database_unavailable
from .errors import ApiError
from .idempotency import idempotent
from .identity import current_user_id, findable_id, owned_plan, rate_limit_tier, tier_of
from .metrics import count_response, exposition
from .metrics import enabled as metrics_enabled
from .models import ID_LENGTH, Regeneration
from .openapi import build_document
from .pacing import schedule_problems
from .plans import create_and_generate
from .priority import compute_priority, queue_for_priority
from .quota import monthly_usage
from .ratelimit import add_rate_limit_headers, enforce_rate_limit, rate_limit_usage
from .recovery import sweep_eager_leftovers
from .schemas import (
    CreatePlanSchema,
    PaginationSchema,
    field_errors,
    overrides_schema,
    regenerate_request_schema,
)
from .state import RegenState, get_state
from .streams import LAST_EVENT_ID_HEADER, event_stream
from .switch import is_enabled
from .types import PlanInput

logger = logging.getLogger("flask_plan_regen")

regen_bp = Blueprint("plan_regen", __name__, url_prefix="/api/v1")
"""The package's routes; register it after ``PlanRegen.init_app``."""
regen_bp.after_request(add_rate_limit_headers)
regen_bp.after_request(count_response)

_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "TOO_MANY_REQUESTS",
}


@regen_bp.record
def _remember_prefix(setup: Any) -> None:
    # "" for the root ("" or "/"), where no URL outside the package's routes is ours.
    get_state(setup.app).url_prefixes.append((setup.url_prefix or "").rstrip("/"))


def error_response(error: ApiError) -> Response:
    response = jsonify(documents.dump(documents.error_schema, error))
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


@regen_bp.errorhandler(ApiError)
def _api_error(error: ApiError) -> Response:
    if error.status >= 500:
        logger.error("%s: %s", error.code, error.__cause__ or error.message)
    return error_response(error)


@regen_bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> Response:
    return error_response(http_api_error(error))


def _database_unavailable(error: Exception) -> Response:
    state = get_state()
    state.database_outage.failed(error, state.db.engines.values())
    return error_response(database_unavailable())


for _error_class in UNAVAILABLE_ERRORS:
    regen_bp.register_error_handler(_error_class, _database_unavailable)


@regen_bp.before_request
def _json_bodies_only() -> None:
    """Every POST takes only JSON: a cross-site form cannot reach a view (bodies.py)."""
    if request.method == "POST":
        require_json_content_type()


@regen_bp.before_request
def _recover_eager_leftovers() -> None:
    """Eager jobs outside tests have no worker to sweep for them (recovery.py)."""
    sweep_eager_leftovers(get_state())


@regen_bp.errorhandler(Exception)
def _unexpected_error(error: Exception) -> Response:
    logger.exception("unhandled error in %s %s", request.method, request.path)
    return error_response(ApiError(500, "INTERNAL_ERROR", "An internal error occurred."))


def http_api_error(error: HTTPException) -> ApiError:
    status = error.code or 500
    headers = {}
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        headers["Allow"] = ", ".join(sorted(error.valid_methods))
    messages = {
        404: "No such endpoint.",
        405: f"Method {request.method} is not allowed here.",
        413: "The request body is too large.",
    }
    message = messages.get(status, error.description or error.name)
    return ApiError(status, _HTTP_CODES.get(status, "HTTP_ERROR"), message, headers=headers)


def json_routing_errors() -> Response | None:
    """Answer unknown URLs and wrong methods of the package's routes in JSON.

    Blueprint error handlers never see routing errors, and an app-wide 404
    handler would take over the host's own pages, so this app-level
    ``before_request`` only answers a URL under the blueprint's prefix (never
    the root's), or a wrong method on one of the package's routes.
    """
    routing_error = request.routing_exception
    if isinstance(routing_error, NotFound | MethodNotAllowed) and _is_ours(routing_error):
        return error_response(http_api_error(routing_error))
    return None


def _is_ours(routing_error: NotFound | MethodNotAllowed) -> bool:
    """A URL under one of the blueprint's prefixes, or one of its routes with another method."""
    path = request.path
    if any(
        prefix and (path == prefix or path.startswith(prefix + "/"))
        for prefix in get_state().url_prefixes
    ):
        return True
    if not isinstance(routing_error, MethodNotAllowed):
        return False
    adapter = current_app.create_url_adapter(request)
    for method in routing_error.valid_methods or ():
        try:
            endpoint, _ = adapter.match(method=method)  # type: ignore[union-attr]
        except HTTPException:
            continue
        if str(endpoint).startswith(f"{regen_bp.name}."):
            return True
    return False


def read_json_body() -> Any:
    """The body as JSON; empty means ``{}``. 413 past the size limit, 400 if malformed."""
    raw = read_body(current_app.config["PLAN_REGEN_MAX_BODY_BYTES"])
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "INVALID_JSON", "The request body is not valid JSON.") from None


def load_body(schema: Schema, body: Any, message: str) -> Any:
    try:
        return schema.load(body)
    except ValidationError as error:
        raise ApiError(
            400, "VALIDATION_ERROR", message, details={"fieldErrors": field_errors(error)}
        ) from None


def check_dates(plan: PlanInput) -> None:
    """The merged plan's dates must be schedulable (checked after the overrides)."""
    problems = schedule_problems(plan.start_date, plan.deadline_date)
    if problems:
        raise ApiError(
            400, "VALIDATION_ERROR", "Invalid overrides.", details={"fieldErrors": problems}
        )


def ensure_enabled() -> None:
    if not is_enabled(get_state()):
        raise ApiError(
            503,
            "REGENERATION_DISABLED",
            "Plan regeneration is switched off for now; nothing was queued. Try again later.",
        )


def accepted(regeneration: Regeneration) -> Response:
    response = jsonify(documents.dump(documents.accepted_schema, regeneration))
    response.status_code = 202
    response.headers["Location"] = url_for(
        "plan_regen.regeneration_status",
        plan_id=regeneration.plan_id,
        generation_id=regeneration.id,
    )
    return response


@regen_bp.post("/plans/<plan_id>/regenerate")
@idempotent(rate_limited=True)
def regenerate(plan_id: str) -> Response:
    """Queue a regeneration of the caller's plan, with optional overrides."""
    state = get_state()
    user_id = current_user_id(state)
    enforce_rate_limit(state.rate_limiter, user_id, rate_limit_tier(state, user_id))
    body = read_json_body()
    overrides = load_body(regenerate_request_schema, body, "Invalid overrides.")["overrides"]
    ensure_enabled()
    plan = owned_plan(state, plan_id, user_id)
    merged = plan.with_overrides(overrides)
    check_dates(merged)
    config = current_app.config
    tier = tier_of(state, user_id)
    priority = compute_priority(tier, merged.topic, config)
    regeneration = lifecycle.submit(
        state,
        plan_id=plan.id,
        user_id=user_id,
        overrides=overrides_schema.dump(overrides),
        tier=tier,
        priority=priority,
        queue_name=queue_for_priority(priority, config),
        plan=merged,
    )
    return accepted(regeneration)


@regen_bp.get("/usage")
def usage() -> Response:
    """The caller's tier, rate limit, monthly quota and spend."""
    state = get_state()
    user_id = current_user_id(state)
    tier = tier_of(state, user_id)
    document = {
        "tier": tier,
        "monthly": monthly_usage(state, user_id, tier),
        "spend": monthly_spend(state, user_id, tier),
        "rate_limit": rate_limit_usage(state.rate_limiter, user_id, tier),
    }
    return jsonify(documents.dump(documents.usage_schema, document))


@regen_bp.post("/plans")
@idempotent(rate_limited=True)
def create_plan() -> Response:
    """Create a plan for the caller and queue its first generation."""
    state = get_state()
    user_id = current_user_id(state)
    enforce_rate_limit(state.rate_limiter, user_id, rate_limit_tier(state, user_id))
    fields = load_body(CreatePlanSchema(), read_json_body(), "Invalid plan.")
    ensure_enabled()
    return accepted(create_and_generate(state, user_id, fields))


def owned_regeneration(state: RegenState, plan_id: str, generation_id: str) -> Regeneration:
    """A regeneration of the caller's plan; 404 otherwise."""
    plan = owned_plan(state, plan_id, current_user_id(state))
    regeneration = (
        state.db.session.get(Regeneration, generation_id)
        if findable_id(generation_id, ID_LENGTH)
        else None
    )
    if regeneration is None or regeneration.plan_id != plan.id:
        raise ApiError(404, "REGENERATION_NOT_FOUND", "Regeneration not found.")
    return regeneration


@regen_bp.post("/plans/<plan_id>/regenerations/<generation_id>/cancel")
@idempotent(rate_limited=False)
def cancel(plan_id: str, generation_id: str) -> Response:
    """Cancel a pending or running regeneration; 409 once it has finished."""
    state = get_state()
    regeneration = lifecycle.cancel(state, owned_regeneration(state, plan_id, generation_id))
    return jsonify(documents.dump(documents.regeneration_summary_schema, regeneration))


@regen_bp.get("/plans/<plan_id>/regenerations/<generation_id>")
def regeneration_status(plan_id: str, generation_id: str) -> Response:
    """One regeneration with its attempts."""
    state = get_state()
    regeneration = owned_regeneration(state, plan_id, generation_id)
    return jsonify(previews.regeneration_document(state, regeneration))


@regen_bp.get("/plans/<plan_id>/regenerations/<generation_id>/events")
def regeneration_events(plan_id: str, generation_id: str) -> Response:
    """Server-sent events of the regeneration's progress until it ends (streams.py)."""
    state = get_state()
    regeneration = owned_regeneration(state, plan_id, generation_id)
    return event_stream(state, regeneration, request.headers.get(LAST_EVENT_ID_HEADER))


@regen_bp.get("/plans/<plan_id>/regenerations")
def regeneration_history(plan_id: str) -> Response:
    """The plan's regenerations, newest first, a page at a time."""
    state = get_state()
    plan = owned_plan(state, plan_id, current_user_id(state))
    query = load_body(PaginationSchema(), request.args, "Invalid pagination.")
    page = query["page"]
    per_page = query["per_page"] or current_app.config["PLAN_REGEN_PAGE_SIZE"]
    session = state.db.session
    total = (
        session.scalar(
            select(func.count()).select_from(Regeneration).where(Regeneration.plan_id == plan.id)
        )
        or 0
    )
    rows = session.scalars(
        select(Regeneration)
        .where(Regeneration.plan_id == plan.id)
        .order_by(Regeneration.created_at.desc(), Regeneration.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    ).all()
    document = {
        "items": rows,
        "page": page,
        "per_page": per_page,
        "total": total,
        "has_more": page * per_page < total,
    }
    return jsonify(documents.dump(documents.regeneration_page_schema, document))


@regen_bp.get("/plans/<plan_id>")
def plan_detail(plan_id: str) -> Response:
    """The caller's plan with its modules and tasks."""
    state = get_state()
    plan = owned_plan(state, plan_id, current_user_id(state))
    document = state.store.plan_document(plan.id)
    if document is None:
        raise ApiError(404, "PLAN_NOT_FOUND", "Plan not found.")
    return jsonify(document)


@regen_bp.get("/openapi.json")
def openapi_document() -> Response:
    """The OpenAPI 3 document of these routes."""
    return jsonify(build_document(current_app._get_current_object()))  # type: ignore[attr-defined]


@regen_bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics, when ``PLAN_REGEN_METRICS`` is on (else 404)."""
    if not metrics_enabled():
        raise ApiError(404, "NOT_FOUND", "No such endpoint.")
    return exposition()
