"""Canceling a regeneration: stop it where it is, keep the plan as it was."""

from __future__ import annotations

import logging

from redis.exceptions import RedisError
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from sqlalchemy import update

from .errors import ApiError
from .extension import RegenState
from .models import ACTIVE_STATUSES, Regeneration, utcnow

logger = logging.getLogger("flask_plan_regen.cancel")


def cancel_regeneration(state: RegenState, regeneration: Regeneration) -> Regeneration:
    """Mark an active regeneration ``canceled``, then stop its RQ job.

    The database decides: once the row is canceled no delivery can claim it
    and a running attempt cannot commit its content (both are conditional on
    the row's status), so stopping the job only saves the provider's time.
    Raises a 409 ``REGENERATION_FINISHED`` when it had already ended.
    """
    session = state.db.session
    canceled = session.execute(
        update(Regeneration)
        .where(Regeneration.id == regeneration.id, Regeneration.status.in_(ACTIVE_STATUSES))
        .values(status="canceled", finished_at=utcnow(), updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    session.refresh(regeneration)
    if not getattr(canceled, "rowcount", 0):
        raise ApiError(
            409,
            "REGENERATION_FINISHED",
            "This regeneration has already finished.",
            details={"generationId": regeneration.id, "status": regeneration.status},
        )
    stop_job(state, regeneration.id)
    return regeneration


def stop_job(state: RegenState, job_id: str) -> None:
    """Stop the job if a worker runs it, else take it off its queue; best effort."""
    try:
        job = Job.fetch(job_id, connection=state.redis, serializer=JSONSerializer)
        if job.get_status() == JobStatus.STARTED:
            send_stop_job_command(state.redis, job_id, serializer=JSONSerializer)
        else:
            job.cancel()
    except (NoSuchJobError, InvalidJobOperation):
        pass  # finished or gone: nothing left to stop
    except RedisError:
        logger.warning("could not stop job %s; its row is canceled, so it will not run", job_id)
