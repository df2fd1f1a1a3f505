"""Creating a plan: :func:`create_plan` for the host's code, and ``POST /plans``,
which also queues its first generation."""

from __future__ import annotations

import dataclasses
from datetime import date
from typing import Any

from flask import current_app
from marshmallow import ValidationError

from . import lifecycle
from .errors import ApiError
from .identity import tier_of
from .models import Regeneration
from .priority import compute_priority, queue_for_priority
from .schemas import CreatePlanSchema, field_errors
from .state import RegenState, get_state
from .types import PlanInput


def create_plan(owner_id: str, topic: str, **fields: Any) -> str:
    """Create a plan owned by ``owner_id`` in the app's plan store, commit it, return its id.

    ``fields`` are the other fields of ``POST /api/v1/plans``, in snake_case
    (``skill_level``, ``weekly_hours``, ``learning_style``, ``start_date``,
    ``deadline_date`` as dates, ``notes``), checked the same way: a wrong one
    raises ``ValueError``. The plan has no modules until it is regenerated.
    Needs an app context (a CLI command, ``flask shell``, a test).
    """
    schema = CreatePlanSchema()
    values = {"topic": topic, **fields}
    unknown = sorted(set(values) - set(schema.fields))
    if unknown:
        raise ValueError(f"Unknown plan fields: {', '.join(unknown)}")
    # In the wire form, so that it is checked exactly as a request body is.
    wire = {
        schema.fields[name].data_key or name: value.isoformat()
        if isinstance(value, date)
        else value
        for name, value in values.items()
    }
    try:
        checked = schema.load(wire)
    except ValidationError as error:
        raise ValueError(f"Invalid plan: {field_errors(error)}") from None
    state = get_state()
    plan_id = state.store.create_plan(owner_id, checked)
    state.db.session.commit()
    return plan_id


def plan_input(plan_id: str, owner_id: str, fields: dict[str, Any]) -> PlanInput:
    """The plan a generation will be asked for, from the fields it was created with."""
    names = {field.name for field in dataclasses.fields(PlanInput)} - {"id", "owner_id"}
    return PlanInput(
        id=plan_id, owner_id=owner_id, **{k: v for k, v in fields.items() if k in names}
    )


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
            plan=plan_input(plan_id, user_id, fields),
        )
    except ApiError as error:
        delete_plan = getattr(state.store, "delete_plan", None)
        if error.status == 503 and delete_plan is not None:
            delete_plan(plan_id)
            state.db.session.commit()
        raise
