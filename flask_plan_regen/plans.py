"""Creating a plan and queueing its first generation (``POST /plans``)."""

from __future__ import annotations

from typing import Any

from flask import current_app

from . import lifecycle
from .errors import ApiError
from .identity import tier_of
from .models import Regeneration
from .priority import compute_priority, queue_for_priority
from .state import RegenState


def create_and_generate(state: RegenState, user_id: str, fields: dict[str, Any]) -> Regeneration:
    """Create the caller's plan (status ``pending``) and queue its first generation.

    The generation goes through the same pipeline as a regeneration (kind
    ``generation``, no overrides) and counts against the monthly quota like
    one: otherwise creating plans would be a way around it. If it cannot be queued, the new plan is
    removed again when the store can (``delete_plan``), so a 503 leaves nothing.
    """
    config = current_app.config
    tier = tier_of(state, user_id)
    priority = compute_priority(tier, fields["topic"], config)
    # The plan is committed with its regeneration and quota charge, so a 429
    # rolls all three back.
    plan_id = state.store.create_plan(user_id, fields)
    try:
        return lifecycle.submit(
            state,
            plan_id=plan_id,
            user_id=user_id,
            overrides={},
            tier=tier,
            priority=priority,
            queue_name=queue_for_priority(priority, config),
            kind="generation",
        )
    except ApiError as error:
        delete_plan = getattr(state.store, "delete_plan", None)
        if error.status == 503 and delete_plan is not None:
            delete_plan(plan_id)
            state.db.session.commit()
        raise
