"""The console's blueprint: HTML pages, a JSON document under each, and the actions.

Every URL of the blueprint (its static files included) asks the operator hook
first; every POST also needs the form's CSRF token (guard.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from marshmallow import Schema
from redis.exceptions import RedisError
from werkzeug.wrappers import Response as BaseResponse

from .. import fallbacks
from ..database import UNAVAILABLE_ERRORS, database_unavailable
from ..documents import dump, error_schema, iso_utc, usd
from ..errors import ApiError
from ..models import FailureClass, Status, as_utc, utcnow
from ..state import get_state
from .actions import (
    ActionResult,
    cancel_regeneration,
    recent,
    record,
    requeue_class_count,
    requeue_failed,
    requeue_failure_class,
    set_switch,
)
from .charts import hourly_cost, hourly_outcomes
from .guard import (
    CSRF_FIELD,
    check_csrf,
    csrf_token,
    current_operator,
    read_notice,
    signed_notice,
)
from .queries import (
    BadFilter,
    failed_by_class,
    overview_data,
    read_filters,
    regeneration_detail,
    regeneration_page,
    switch_state,
    timeline,
)
from .schemas import (
    action_result_schema,
    actions_schema,
    overview_schema,
    providers_schema,
    regeneration_detail_schema,
    regeneration_list_schema,
    requeue_preview_schema,
    spend_schema,
)
from .spending import hourly_spend, spend_data

regen_admin_bp = Blueprint(
    "plan_regen_admin",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
"""The operator console; register it at a prefix of your choice (docs/operations.md)."""


@regen_admin_bp.before_request
def _operators_only() -> None:
    current_operator()
    if request.method == "POST":
        check_csrf()


@regen_admin_bp.after_request
def _never_framed_or_cached(response: Response) -> Response:
    # Its buttons act in one click (a framing page could trick an operator into them),
    # and its pages carry CSRF tokens and user ids.
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _wants_json() -> bool:
    return request.path.startswith(_api_prefix()) or request.is_json


def _api_prefix() -> str:
    return url_for("plan_regen_admin.overview_json").removesuffix("overview")


@regen_admin_bp.errorhandler(ApiError)
def _api_error(error: ApiError) -> tuple[Response | str, int]:
    if _wants_json():
        return _json(error_schema, error), error.status
    return render_template("plan_regen_console/error.html", error=error, page="error"), error.status


@regen_admin_bp.errorhandler(RedisError)
def _redis_unavailable(error: RedisError) -> tuple[Response | str, int]:
    return _api_error(
        ApiError(503, "REDIS_UNAVAILABLE", "Redis is unavailable; nothing was changed.")
    )


def _database_unavailable(error: Exception) -> tuple[Response | str, int]:
    state = get_state()
    state.database_outage.failed(error, state.db.engines.values())
    return _api_error(database_unavailable())


for _error_class in UNAVAILABLE_ERRORS:
    regen_admin_bp.register_error_handler(_error_class, _database_unavailable)


@regen_admin_bp.context_processor
def _helpers() -> dict[str, Any]:
    return {
        "csrf_field": CSRF_FIELD,
        "csrf_token": csrf_token,
        "operator": g.get("plan_regen_operator"),  # None on the 403 page
        "ago": _ago,
        "seconds": _seconds,
        "iso": iso_utc,
        "usd": usd,
        "statuses": [str(status) for status in Status],
        "failure_classes": [str(name) for name in FailureClass],
    }


def _ago(value: datetime | None) -> str:
    if value is None:
        return "-"
    return _seconds((utcnow() - as_utc(value)).total_seconds()) + " ago"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f} s"
    return str(timedelta(seconds=int(value)))


def _json(schema: Schema, data: Any) -> Response:
    return jsonify(dump(schema, data))


def _overview() -> dict[str, Any]:
    state = get_state()
    data = overview_data(state)
    data["spend_hours"] = hourly_spend(state, data["hours"][0]["hour"])
    return data


@regen_admin_bp.get("/")
def overview() -> str:
    data = _overview()
    return render_template(
        "plan_regen_console/overview.html",
        data=data,
        chart=hourly_outcomes(data["hours"]),
        spend_chart=hourly_cost(data["spend_hours"]),
        page="overview",
    )


@regen_admin_bp.get("/api/overview")
def overview_json() -> Response:
    return _json(overview_schema, _overview())


@regen_admin_bp.get("/spend")
def spend() -> str:
    return render_template(
        "plan_regen_console/spend.html", data=spend_data(get_state()), page="spend"
    )


@regen_admin_bp.get("/api/spend")
def spend_json() -> Response:
    return _json(spend_schema, spend_data(get_state()))


def _providers() -> dict[str, Any]:
    return {"providers": fallbacks.describe(get_state())}


@regen_admin_bp.get("/providers")
def providers() -> str:
    return render_template("plan_regen_console/providers.html", data=_providers(), page="providers")


@regen_admin_bp.get("/api/providers")
def providers_json() -> Response:
    return _json(providers_schema, _providers())


def _page() -> dict[str, Any]:
    try:
        filters = read_filters(request.args)
        rows, cursor = regeneration_page(get_state(), filters, request.args.get("after") or None)
    except BadFilter as error:
        raise ApiError(400, "INVALID_FILTER", str(error)) from None
    return {"items": rows, "next": cursor, "filters": filters.as_args()}


@regen_admin_bp.get("/regenerations")
def regenerations() -> str:
    return render_template(
        "plan_regen_console/regenerations.html", data=_page(), page="regenerations"
    )


@regen_admin_bp.get("/api/regenerations")
def regenerations_json() -> Response:
    return _json(regeneration_list_schema, _page())


def _detail(generation_id: str) -> dict[str, Any]:
    state = get_state()
    row = regeneration_detail(state, generation_id)
    if row is None:
        raise ApiError(404, "REGENERATION_NOT_FOUND", f"There is no regeneration {generation_id}.")
    return {
        "regeneration": row,
        "timeline": timeline(row, recent(state, touching=generation_id)),
    }


@regen_admin_bp.get("/regenerations/<generation_id>")
def regeneration(generation_id: str) -> str:
    return render_template(
        "plan_regen_console/regeneration.html",
        data=_detail(generation_id),
        page="regenerations",
        notice=read_notice(),
    )


@regen_admin_bp.get("/api/regenerations/<generation_id>")
def regeneration_json(generation_id: str) -> Response:
    return _json(regeneration_detail_schema, _detail(generation_id))


def _actions_page() -> dict[str, Any]:
    state = get_state()
    return {
        "switch": switch_state(state),
        "failed_by_class": failed_by_class(state),
        "recent": recent(state),
        "csrf_token": csrf_token(),
    }


@regen_admin_bp.get("/actions")
def actions_page() -> str:
    return render_template(
        "plan_regen_console/actions.html",
        data=_actions_page(),
        page="actions",
        notice=read_notice(),
    )


@regen_admin_bp.get("/api/actions")
def actions_json() -> Response:
    return _json(actions_schema, _actions_page())


def _failure_class() -> FailureClass:
    body = request.get_json(silent=True) if request.is_json else None
    value = (
        request.values.get("failure_class")
        or (body.get("failureClass") if isinstance(body, dict) else None)
        or ""
    )
    try:
        return FailureClass(value)
    except ValueError:
        raise ApiError(
            400,
            "INVALID_FAILURE_CLASS",
            f"failure_class must be one of {', '.join(FailureClass)}.",
        ) from None


def _preview() -> dict[str, Any]:
    failure_class = _failure_class()
    return {
        "failure_class": failure_class,
        "count": requeue_class_count(get_state(), failure_class),
        "csrf_token": csrf_token(),
    }


@regen_admin_bp.get("/actions/requeue-class")
def requeue_class_confirm() -> str:
    return render_template("plan_regen_console/confirm.html", data=_preview(), page="actions")


@regen_admin_bp.get("/api/actions/requeue-class")
def requeue_class_preview_json() -> Response:
    return _json(requeue_preview_schema, _preview())


def _done(result: ActionResult, then: str) -> Response | BaseResponse:
    """Log the action; answer JSON to a JSON request, else send the browser to ``then``."""
    record(get_state(), current_operator(), result)
    if _wants_json():
        return _json(action_result_schema, result)
    return redirect(f"{then}?{_notice(result.message)}", code=303)


def _notice(message: str) -> str:
    return urlencode({"notice": signed_notice(message)})


@regen_admin_bp.post("/actions/requeue/<generation_id>")
def requeue_one(generation_id: str) -> Response | BaseResponse:
    result = requeue_failed(get_state(), generation_id)
    target = result.created[0] if result.created else generation_id
    return _done(result, url_for(".regeneration", generation_id=target))


@regen_admin_bp.post("/actions/requeue-class")
def requeue_class() -> Response | BaseResponse:
    result = requeue_failure_class(get_state(), _failure_class())
    return _done(result, url_for(".actions_page"))


@regen_admin_bp.post("/actions/cancel/<generation_id>")
def cancel_one(generation_id: str) -> Response | BaseResponse:
    result = cancel_regeneration(get_state(), generation_id)
    return _done(result, url_for(".regeneration", generation_id=generation_id))


@regen_admin_bp.post("/actions/switch")
def kill_switch() -> Response | BaseResponse:
    body = request.get_json(silent=True) if request.is_json else None
    wanted = request.form.get("enabled") or (
        str(body.get("enabled")).lower() if isinstance(body, dict) else ""
    )
    if wanted not in {"on", "off", "true", "false"}:
        raise ApiError(400, "INVALID_SWITCH", "enabled must be on or off.")
    result = set_switch(get_state(), current_operator(), wanted in {"on", "true"})
    return _done(result, url_for(".actions_page"))
