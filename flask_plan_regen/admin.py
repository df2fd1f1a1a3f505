"""What the operator commands (``flask plan-regen info|requeue-failed``) read and do."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from . import fallbacks, lifecycle, queue
from .config import job_timeout, rq_queue_names
from .errors import ApiError
from .models import FailureClass, Regeneration, Status, utcnow
from .state import RegenState


def status_counts(state: RegenState) -> dict[str, int]:
    rows = state.db.session.execute(
        select(Regeneration.status, func.count()).group_by(Regeneration.status)
    )
    return {str(status): int(count) for status, count in rows}


def stuck_regenerations(state: RegenState) -> list[Regeneration]:
    """Rows in ``processing`` for longer than the job timeout: no job can still be running."""
    cutoff = utcnow() - timedelta(seconds=job_timeout(current_app.config))
    return list(
        state.db.session.scalars(
            select(Regeneration)
            .where(Regeneration.status == Status.PROCESSING, Regeneration.started_at < cutoff)
            .order_by(Regeneration.started_at)
        )
    )


def collect_info(state: RegenState) -> dict[str, Any]:
    """Everything ``flask plan-regen info`` shows, as plain data."""
    names = rq_queue_names(current_app.config)
    return {
        "namespace": state.namespace,
        "queues": queue.queue_stats(state.redis, names),
        "workers": queue.worker_states(state.redis, names),
        "regenerations": status_counts(state),
        "stuck": [
            {"generationId": row.id, "planId": row.plan_id, "startedAt": str(row.started_at)}
            for row in stuck_regenerations(state)
        ],
        "providers": fallbacks.describe(state),
    }


def requeue_candidates(state: RegenState, failure_class: FailureClass | None) -> list[Regeneration]:
    """Failed regenerations that are still their plan's latest one, oldest first.

    A failure that a later regeneration of the same plan superseded (including
    one made by an earlier run of this command) is left alone.
    """
    newer = aliased(Regeneration, name="newer")
    later = select(newer.id).where(
        newer.plan_id == Regeneration.plan_id, newer.created_at > Regeneration.created_at
    )
    query = select(Regeneration).where(Regeneration.status == Status.FAILED, ~later.exists())
    if failure_class is not None:
        query = query.where(Regeneration.failure_class == failure_class)
    return list(state.db.session.scalars(query.order_by(Regeneration.created_at)))


@dataclasses.dataclass
class RequeueOutcome:
    regeneration: Regeneration
    new_id: str | None = None
    skipped: str | None = None


def requeue(state: RegenState, failed: list[Regeneration]) -> Iterator[RequeueOutcome]:
    """Queue a new regeneration like each failed one; skip plans with an active one.

    Stops at the first Redis error (raised as the 503 :class:`ApiError`): the
    remaining rows are untouched and the command can be run again.
    """
    for old in failed:
        try:
            new = lifecycle.submit(
                state,
                plan_id=old.plan_id,
                user_id=old.user_id,
                overrides=old.overrides,
                tier=old.tier,
                priority=old.priority,
                queue_name=old.queue,
                kind=old.kind,
                charge_quota=False,  # the user already paid for the failed one
            )
        except ApiError as error:
            if error.status != 409:
                raise
            yield RequeueOutcome(old, skipped="the plan has an active regeneration")
        else:
            yield RequeueOutcome(old, new_id=new.id)
