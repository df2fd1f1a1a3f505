"""Crash recovery: attempts whose worker died, and rows no job will ever pick up.

Three paths lead here, from fastest to slowest:

* ``RecoveringWorker`` (what ``flask plan-regen worker`` runs) hears from RQ
  when its work horse was killed (SIGKILL, OOM) and releases the attempt at once.
* RQ's maintenance finds a job whose worker died altogether (heartbeat expired)
  and calls the job's failure callback, :func:`on_job_failure`.
* :func:`sweep` (``flask plan-regen sweep``; also run by ``RecoveringWorker``
  at start and at every RQ maintenance pass) releases rows ``processing``
  longer than the job timeout or whose RQ job is no longer running, and
  re-enqueues ``pending`` rows whose RQ job is gone.

Releasing a lost attempt counts it: the regeneration goes back to ``pending``
if it has attempts left (RQ redelivers the job, it was enqueued with a
``Retry``), else ends ``failed``. The plan is never touched: content is only
replaced in the same commit that marks the attempt succeeded.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app
from rq import Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from sqlalchemy import or_, select

from .config import job_timeout
from .errors import ProviderError
from .extension import RegenState, get_state
from .jobs import conclude_failure, worker_app
from .models import Regeneration, utcnow
from .queueing import enqueue_job

logger = logging.getLogger("flask_plan_regen.recovery")

# A pending row younger than this may still be on its way to the queue.
PENDING_GRACE = timedelta(seconds=60)
_LIVE_JOB = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.STARTED, JobStatus.DEFERRED}


class WorkerLost(ProviderError):
    """The worker running an attempt died or hung before the attempt ended."""

    public_message = "The worker running this attempt stopped before it finished."


def release_lost_attempt(state: RegenState, generation_id: str, why: str) -> str | None:
    """Count a lost ``processing`` attempt; return the row's new status (or ``None``)."""
    regeneration = state.db.session.get(Regeneration, generation_id)
    if regeneration is None or regeneration.status != "processing":
        return None
    conclude_failure(state, regeneration, regeneration.attempts, WorkerLost(why))
    state.db.session.refresh(regeneration)
    return regeneration.status


def on_job_failure(job: Job, connection: Any, *exc_info: Any) -> None:
    """RQ failure callback: the job raised, or RQ found it abandoned by a dead worker."""
    _release_in_app(job.id, f"job failed: {exc_info[0].__name__ if exc_info else 'unknown'}")


def horse_killed(job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
    """RQ ``work_horse_killed_handler``: the work horse died mid-job."""
    _release_in_app(job.id, f"work horse {retpid} killed (waitpid status {ret_val})")


@contextlib.contextmanager
def _worker_state() -> Iterator[RegenState]:
    """The app's state in a worker process, holding no DB connection afterwards.

    The worker process forks work horses: pooled connections must not be inherited.
    """
    with worker_app().app_context():
        state = get_state()
        state.dispose_engines_after_fork()
        try:
            yield state
        finally:
            state.db.session.remove()
            for engine in state.db.engines.values():
                engine.dispose()


def _release_in_app(generation_id: str, why: str) -> None:
    with _worker_state() as state:
        status = release_lost_attempt(state, generation_id, why)
        if status:
            logger.warning("regeneration %s: %s; now %s", generation_id, why, status)


def sweep(state: RegenState, now: datetime | None = None) -> dict[str, int]:
    """Recover stuck rows (see the module docs); return how many were released / requeued."""
    now = now or utcnow()
    session = state.db.session
    stuck_before = now - timedelta(seconds=job_timeout(current_app.config))
    released = requeued = 0
    for row in session.scalars(
        select(Regeneration).where(
            Regeneration.status.in_(("processing", "pending")),
            or_(Regeneration.status == "processing", Regeneration.updated_at < now - PENDING_GRACE),
        )
    ).all():
        live = _job_is_live(state, row)
        if row.status == "processing":
            if live and row.started_at is not None and _aware(row.started_at) >= stuck_before:
                continue
            if release_lost_attempt(state, row.id, "stuck in processing") is None:
                continue
            released += 1
            # The old delivery is dead or will find the row claimed by someone else.
            live = False
        if row.status == "pending" and not live and _requeue(state, row):
            requeued += 1
    if released or requeued:
        logger.warning("sweep released %s attempts, requeued %s jobs", released, requeued)
    return {"released": released, "requeued": requeued}


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; they are UTC here.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _job_is_live(state: RegenState, row: Regeneration) -> bool:
    try:
        job = Job.fetch(row.id, connection=state.redis, serializer=JSONSerializer)
    except NoSuchJobError:
        return False
    return job.get_status(refresh=False) in _LIVE_JOB


def _requeue(state: RegenState, row: Regeneration) -> bool:
    """Replace whatever RQ still has under the row's job id with a fresh job.

    Workers sweep concurrently (every one at start-up and maintenance): a lock
    per row and attempt lets only one of them requeue it, since two deliveries
    of one job id would let the second find the first one's attempt in
    ``processing`` with an RQ record that says it has finished.
    """
    lock = f"plan_regen:requeue:{row.id}:{row.attempts}"
    if not state.redis.set(lock, 1, nx=True, ex=int(PENDING_GRACE.total_seconds())):
        return False
    with contextlib.suppress(NoSuchJobError):
        Job.fetch(row.id, connection=state.redis, serializer=JSONSerializer).delete()
    enqueue_job(state, row)
    return True


class RecoveringWorker(Worker):
    """An RQ ``Worker`` that releases attempts of killed work horses and sweeps.

    Use it with plain RQ too: ``rq worker -w flask_plan_regen.recovery.RecoveringWorker``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("work_horse_killed_handler", horse_killed)
        super().__init__(*args, **kwargs)

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        try:
            with _worker_state() as state:
                sweep(state)
        except Exception:  # a failed sweep must not stop the worker
            logger.exception("recovery sweep failed; the next maintenance pass tries again")
