"""What the operator commands (``flask plan-regen info|requeue-failed``) read and do."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from flask import current_app
from rq import Worker
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from .config import job_timeout
from .errors import ApiError
from .extension import RegenState
from .models import Regeneration, utcnow
from .queueing import submit_regeneration


def queue_stats(state: RegenState) -> list[dict[str, Any]]:
    """Per queue, highest priority first: queued, running, failed and scheduled jobs."""
    stats = []
    for name, _ in current_app.config["PLAN_REGEN_QUEUES"]:
        queue = state.queue(name)
        stats.append(
            {
                "queue": name,
                "queued": queue.count,
                "started": StartedJobRegistry(queue=queue).count,
                "failed": FailedJobRegistry(queue=queue).count,
                "scheduled": ScheduledJobRegistry(queue=queue).count,  # type: ignore[no-untyped-call]
            }
        )
    return stats


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
            .where(Regeneration.status == "processing", Regeneration.started_at < cutoff)
            .order_by(Regeneration.started_at)
        )
    )


def collect_info(state: RegenState) -> dict[str, Any]:
    """Everything ``flask plan-regen info`` shows, as plain data."""
    workers = Worker.all(connection=state.redis)
    return {
        "queues": queue_stats(state),
        "workers": [{"name": w.name, "state": str(w.get_state())} for w in workers],
        "regenerations": status_counts(state),
        "stuck": [
            {"generationId": row.id, "planId": row.plan_id, "startedAt": str(row.started_at)}
            for row in stuck_regenerations(state)
        ],
    }


def requeue_candidates(state: RegenState, failure_class: str | None) -> list[Regeneration]:
    """Failed regenerations that are still their plan's latest one, oldest first.

    A failure that a later regeneration of the same plan superseded (including
    one made by an earlier run of this command) is left alone.
    """
    newer = aliased(Regeneration, name="newer")
    later = select(newer.id).where(
        newer.plan_id == Regeneration.plan_id, newer.created_at > Regeneration.created_at
    )
    query = select(Regeneration).where(Regeneration.status == "failed", ~later.exists())
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
            new = submit_regeneration(
                state,
                plan_id=old.plan_id,
                user_id=old.user_id,
                overrides=old.overrides,
                tier=old.tier,
                priority=old.priority,
                queue=old.queue,
                kind=old.kind,
                charge_quota=False,  # the user already paid for the failed one
            )
        except ApiError as error:
            if error.status != 409:
                raise
            yield RequeueOutcome(old, skipped="the plan has an active regeneration")
        else:
            yield RequeueOutcome(old, new_id=new.id)
