"""Recording a regeneration and putting its job on the RQ queue for its priority."""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app
from redis.exceptions import RedisError
from rq import Callback
from rq.job import Job
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .config import job_timeout
from .errors import ApiError, queue_unavailable
from .extension import RegenState
from .logs import context_of
from .metrics import count_enqueue
from .models import ACTIVE_STATUSES, Regeneration
from .quota import charge, current_period, give_back
from .retries import crash_retry

JOB_FUNCTION = "flask_plan_regen.jobs.run_regeneration"
# Called by RQ when the job raised or its worker was found dead (abandoned job).
LOST_ATTEMPT_CALLBACK = "flask_plan_regen.recovery.on_job_failure"

logger = logging.getLogger("flask_plan_regen.queueing")


def submit_regeneration(
    state: RegenState,
    *,
    plan_id: str,
    user_id: str,
    overrides: dict[str, Any],
    tier: str,
    priority: int,
    queue: str,
    kind: str = "regeneration",
    charge_quota: bool = True,
) -> Regeneration:
    """Insert a pending regeneration and enqueue its job, or raise an :class:`ApiError`.

    One transaction inserts the row (the unique index answers 409 when the
    plan is busy) and charges the monthly quota (429 when used up), so a
    refused request spends nothing. It is committed before the job is
    enqueued so that a worker always finds the row; if Redis refuses the job,
    the row is deleted and the quota given back, so nothing is left pending
    without a job.
    """
    session = state.db.session
    regeneration = Regeneration(
        plan_id=plan_id,
        user_id=user_id,
        kind=kind,
        status="pending",
        overrides=overrides,
        tier=tier,
        priority=priority,
        queue=queue,
        attempts=0,
        error_history=[],
        quota_period=current_period() if charge_quota else None,
    )
    session.add(regeneration)
    try:
        session.flush()
        if charge_quota:
            charge(state, regeneration)
        # Detached with its values loaded, so reading them after the commit
        # (enqueue, the 202 answer) costs no refreshing SELECT.
        session.expunge(regeneration)
        session.commit()
    except IntegrityError:
        session.rollback()
        raise already_queued(state, plan_id) from None
    except ApiError:
        session.rollback()
        raise
    try:
        enqueue_job(state, regeneration)
    except RedisError as error:
        session.delete(regeneration)
        give_back(state, regeneration)
        session.commit()
        raise queue_unavailable() from error
    return regeneration


def enqueue_job(state: RegenState, regeneration: Regeneration) -> Job:
    """Put the job for ``regeneration`` on its queue (job id = generation id).

    One pipeline, so the enqueue is one Redis round trip instead of RQ's two.
    """
    config = current_app.config
    with state.redis.pipeline() as pipe:
        job: Job = state.queue(regeneration.queue).enqueue_call(
            JOB_FUNCTION,
            args=(regeneration.id,),
            job_id=regeneration.id,
            timeout=job_timeout(config),
            retry=crash_retry(config),
            on_failure=Callback(LOST_ATTEMPT_CALLBACK),
            result_ttl=config["PLAN_REGEN_RESULT_TTL"],
            failure_ttl=config["PLAN_REGEN_RESULT_TTL"],
            description=f"{regeneration.kind} of plan {regeneration.plan_id}",
            pipeline=pipe,
        )
        pipe.execute()
    logger.info("queued %s %s", regeneration.kind, regeneration.id, extra=context_of(regeneration))
    count_enqueue(regeneration.queue)
    return job


def active_regeneration_id(state: RegenState, plan_id: str) -> str | None:
    return state.db.session.scalar(
        select(Regeneration.id).where(
            Regeneration.plan_id == plan_id, Regeneration.status.in_(ACTIVE_STATUSES)
        )
    )


def already_queued(state: RegenState, plan_id: str) -> ApiError:
    return ApiError(
        409,
        "REGENERATION_ALREADY_QUEUED",
        "This plan already has a regeneration pending or in progress.",
        details={"generationId": active_regeneration_id(state, plan_id)},
    )
