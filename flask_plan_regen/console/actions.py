"""The console's actions: requeue, cancel, the kill switch; each one logged.

Status changes go through :mod:`flask_plan_regen.lifecycle` (via
:mod:`flask_plan_regen.admin` for requeues, as ``flask plan-regen
requeue-failed`` does). Every action is written to the
``flask_plan_regen.console`` logger with the operator's identity and the ids it
touched, and kept in a capped Redis list shown on the Actions page.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError

from .. import admin, lifecycle, switch
from ..errors import ApiError
from ..identity import findable_id
from ..models import ID_LENGTH, FailureClass, Regeneration, as_utc, utcnow
from ..state import RegenState

logger = logging.getLogger("flask_plan_regen.console")

ACTIONS_KEPT = 200


@dataclasses.dataclass
class ActionResult:
    """What an action did: a sentence for the operator and the ids it touched."""

    action: str
    message: str
    touched: list[str] = dataclasses.field(default_factory=list)
    created: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)


def _log_key(state: RegenState) -> str:
    return state.key("console", "actions")


def record(state: RegenState, operator: str, result: ActionResult) -> None:
    """Log the action (always) and keep it for the Actions page (while Redis answers)."""
    entry = {
        "at": utcnow().isoformat(),
        "operator": operator,
        "action": result.action,
        "detail": result.message,
        "touched": result.touched,
        "created": result.created,
    }
    logger.info(
        "operator %s: %s: %s (touched %s, created %s)",
        operator,
        result.action,
        result.message,
        ", ".join(result.touched) or "nothing",
        ", ".join(result.created) or "nothing",
        extra={"operator": operator, "action": result.action, "touched": result.touched},
    )
    try:
        with state.redis.pipeline() as pipe:
            pipe.lpush(_log_key(state), json.dumps(entry))
            pipe.ltrim(_log_key(state), 0, ACTIONS_KEPT - 1)
            pipe.execute()
    except RedisError as error:
        logger.warning("console action not kept for the Actions page: %s", error)


def recent(state: RegenState, touching: str | None = None) -> list[dict[str, Any]]:
    """The actions kept, newest first; only those that touched ``touching`` if given."""
    try:
        raw: list[bytes] = state.redis.lrange(  # type: ignore[assignment]
            _log_key(state), 0, ACTIONS_KEPT - 1
        )
    except RedisError:
        return []
    entries = []
    for item in raw:
        entry = json.loads(item)
        entry["at"] = as_utc(datetime.fromisoformat(entry["at"]))
        if touching is None or touching in entry["touched"] or touching in entry["created"]:
            entries.append(entry)
    return entries


def _row(state: RegenState, generation_id: str) -> Regeneration:
    row = (
        state.db.session.get(Regeneration, generation_id)
        if findable_id(generation_id, ID_LENGTH)
        else None
    )
    if row is None:
        raise _not_found(generation_id)
    return row


def _not_found(generation_id: str) -> ApiError:
    return ApiError(404, "REGENERATION_NOT_FOUND", f"There is no regeneration {generation_id}.")


def requeue_failed(state: RegenState, generation_id: str) -> ActionResult:
    """Queue a new regeneration like a failed one that is still its plan's latest."""
    row = _row(state, generation_id)
    candidates = {
        candidate.id: candidate
        for candidate in admin.requeue_candidates(state, None, plan_id=row.plan_id)
    }
    if generation_id not in candidates:
        raise ApiError(
            409,
            "NOT_REQUEUEABLE",
            "Only a failed regeneration that is still its plan's latest can be requeued.",
            details={"generationId": generation_id, "status": row.status},
        )
    return _requeue(state, "requeue", [candidates[generation_id]])


def requeue_class_count(state: RegenState, failure_class: FailureClass) -> int:
    """How many regenerations :func:`requeue_class` would requeue now."""
    return admin.count_requeue_candidates(state, failure_class)


def requeue_failure_class(state: RegenState, failure_class: FailureClass) -> ActionResult:
    failed = admin.requeue_candidates(state, failure_class)
    return _requeue(state, f"requeue class {failure_class}", failed)


def _requeue(state: RegenState, action: str, failed: list[Regeneration]) -> ActionResult:
    result = ActionResult(action, "")
    for outcome in admin.requeue(state, failed):
        result.touched.append(outcome.regeneration.id)
        if outcome.new_id:
            result.created.append(outcome.new_id)
        else:
            result.skipped.append(outcome.regeneration.id)
    result.message = f"requeued {len(result.created)} failed regeneration(s)" + (
        f", skipped {len(result.skipped)} (plan busy)" if result.skipped else ""
    )
    return result


def cancel_regeneration(state: RegenState, generation_id: str) -> ActionResult:
    row = _row(state, generation_id)
    lifecycle.cancel(state, row)
    return ActionResult("cancel", f"canceled regeneration {generation_id}", [generation_id])


def set_switch(state: RegenState, operator: str, enabled: bool) -> ActionResult:
    if enabled:
        switch.switch_on(state)
        return ActionResult("switch on", "new regenerations are accepted again")
    switch.switch_off(state, operator)
    return ActionResult("switch off", "new regenerations are refused (503) until switched on")
