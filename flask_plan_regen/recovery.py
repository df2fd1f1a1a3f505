"""Recovery without an operator: lost attempts and lost jobs are found and run again.

* A worker killed with its work horse stops renewing its attempt's lease
  (leases.py). Every :class:`RecoveringWorker`, idle or busy, sweeps every
  ``PLAN_REGEN_SWEEP_INTERVAL`` seconds; a sweep releases the attempts whose
  lease lapsed (lifecycle.release) and queues them again.
* A work horse killed alone (SIGKILL, OOM) is heard of at once by its worker
  (:meth:`RecoveringWorker.horse_killed`), which releases the attempt and queues
  it again. A job that raised calls :func:`on_job_failure`, which releases the
  attempt; RQ then records the job as failed, and the sweep queues it again.
* The sweep also queues again the ``pending`` rows whose RQ job is gone (Redis
  lost its data, a failover lost the last writes), or was taken by a worker
  that went silent before claiming the row (killed between dequeue and claim).
* One worker sweeps at a time (:func:`sweep_if_due`, a lease on the sweep), and
  a sweep's Redis commands do not grow with the backlog (:func:`sweep`).
* The sweep also moves the ``pending`` rows left on a queue that is no longer
  configured (renamed in ``PLAN_REGEN_QUEUES``) to the queue their priority
  goes to now: only this app's rows, so it never touches another app's jobs.

Use the worker with plain RQ too:
``rq worker -w flask_plan_regen.recovery.RecoveringWorker``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import ColumnElement, select

from . import leases, lifecycle, queue
from .config import job_timeout, rq_queue_names
from .jobs import worker_app
from .models import Regeneration, Status, as_utc, utcnow
from .priority import queue_for_priority
from .state import RegenState, get_state

logger = logging.getLogger("flask_plan_regen.recovery")


SWEEP_BATCH = 1000
"""Pending rows read from the database at a time."""


def _in_namespace() -> ColumnElement[bool]:
    """This namespace's rows: queued on ``<namespace>_...``. An app that shares its
    database with another namespace (one moving to a new namespace while the old one
    drains) sweeps only its own: the other's leases live under the other's keys."""
    escaped = current_app.config["PLAN_REGEN_NAMESPACE"]
    for special in ("\\", "%", "_"):
        escaped = escaped.replace(special, "\\" + special)
    return Regeneration.queue.like(escaped + "\\_%", escape="\\")


def sweep(
    state: RegenState,
    now: datetime | None = None,
    *,
    stopping: Callable[[], bool] = lambda: False,
) -> dict[str, int]:
    """Release lost attempts and requeue lost jobs; return how many of each.

    Its Redis cost does not grow with the backlog: one pipelined look at each
    queue and its registries (:func:`queue.live_job_ids`), then only the rows that
    can be lost are looked at one by one: attempts running (their leases), and
    pending rows whose job is missing, or taken by a worker that went silent
    before claiming the row (a worker killed between dequeue and claim).

    It ends early once ``stopping()`` says so (a worker asked to stop): what it
    did not reach is found by the next sweep.
    """
    now = now or utcnow()
    config = current_app.config
    released = _release_lapsed(state, now, stopping)
    moved = move_off_unconfigured_queues(state, now)
    names = rq_queue_names(config)
    live, running = queue.live_job_ids(state.redis, names)
    silent_after = 3 * int(config["PLAN_REGEN_SWEEP_INTERVAL"])
    stuck = queue.stuck_after_dequeue(state.redis, names, silent_after)
    session = state.db.session
    lost: list[str] = []
    query = (
        select(Regeneration.id)
        .where(
            Regeneration.status == Status.PENDING,
            Regeneration.updated_at < now - lifecycle.PENDING_GRACE,
            _in_namespace(),
        )
        .execution_options(yield_per=SWEEP_BATCH)
    )
    for batch in session.execute(query).scalars().partitions():
        if stopping():
            break
        # Confirmed one by one (there are few): a job between a worker's pop and its
        # start is in neither the queue nor a registry for a moment.
        lost += [
            row_id
            for row_id in batch
            if row_id not in live and not queue.job_is_live(state.redis, row_id)
        ]
        lost += [row_id for row_id in batch if row_id in stuck]
        unclaimed = [row_id for row_id in batch if row_id in running]
        if unclaimed:
            silent = queue.silent_for(state.redis, unclaimed)
            lost += [row_id for row_id in unclaimed if silent[row_id] > silent_after]
    session.rollback()
    requeued = moved
    for row_id in dict.fromkeys(lost):  # a row can look lost two ways
        if stopping():
            break
        regeneration = session.get(Regeneration, row_id)
        if regeneration is not None and regeneration.status == Status.PENDING:
            if row_id in stuck:
                queue.forget_dequeued(state.redis, names, row_id)
            requeued += lifecycle.requeue_job(state, regeneration)
        session.rollback()
    if released or requeued:
        logger.warning("sweep released %s attempts, requeued %s jobs", released, requeued)
    return {"released": released, "requeued": requeued}


def _release_lapsed(state: RegenState, now: datetime, stopping: Callable[[], bool]) -> int:
    """Release the running attempts whose lease lapsed or that ran past the job timeout."""
    config = current_app.config
    lease_ttl = timedelta(seconds=config["PLAN_REGEN_LEASE_TTL"])
    # A backstop for an attempt whose process renews its lease but never ends.
    hung_before = now - timedelta(seconds=job_timeout(config)) - 2 * lease_ttl
    session = state.db.session
    rows = session.execute(
        select(Regeneration.id, Regeneration.started_at).where(
            Regeneration.status == Status.PROCESSING, _in_namespace()
        )
    ).all()
    session.rollback()
    lapsed = leases.lapsed(state, [row.id for row in rows])
    released = 0
    for row in rows:
        if stopping():
            break
        started = as_utc(row.started_at) if row.started_at else now
        if started >= now - lease_ttl:
            continue  # just claimed: its lease may not be set yet
        if row.id in lapsed:
            why = "its worker stopped renewing the lease"
        elif started < hung_before:
            why = "it ran past the job timeout"
        else:
            continue
        if lifecycle.release(state, row.id, why, requeue=True) is not None:
            released += 1
    return released


def sweep_if_due(
    state: RegenState, holder: str, *, stopping: Callable[[], bool] = lambda: False
) -> dict[str, int] | None:
    """Sweep unless another process swept in the last ``PLAN_REGEN_SWEEP_INTERVAL`` seconds.

    A lease on the sweep itself (one ``SET NX``) makes one worker of a fleet
    sweep at a time, so the fleet's sweep cost does not grow with its size.
    ``None`` when another holds the lease.
    """
    interval = int(current_app.config["PLAN_REGEN_SWEEP_INTERVAL"])
    # Slightly under the interval: the holder's next pass finds it free again.
    lease_ms = max(500, interval * 1000 - 500)
    if not state.redis.set(state.key("sweep_lease"), holder, nx=True, px=lease_ms):
        return None
    return sweep(state, stopping=stopping)


def move_off_unconfigured_queues(state: RegenState, now: datetime) -> int:
    """Move the pending rows on a queue no longer configured to their priority's queue now.

    Queues renamed in ``PLAN_REGEN_QUEUES`` (or a name that no longer fits the
    namespace rule) strand nothing: this app's rows, read from its own database,
    move; another app's jobs are never touched. Returns how many moved.
    """
    config = current_app.config
    session = state.db.session
    rows = session.execute(
        select(Regeneration.id, Regeneration.priority).where(
            Regeneration.status == Status.PENDING,
            Regeneration.queue.not_in(rq_queue_names(config)),
            Regeneration.updated_at < now - lifecycle.PENDING_GRACE,
            _in_namespace(),
        )
    ).all()
    session.rollback()
    return sum(
        _move_to_configured_queue(state, row.id, queue_for_priority(row.priority, config))
        for row in rows
    )


def sweep_eager_leftovers(state: RegenState) -> None:
    """With eager jobs outside tests (one process that opted in), recover in process.

    No worker sweeps there: at most once per ``PLAN_REGEN_SWEEP_INTERVAL``, a
    request sweeps first and runs what it queued again (the rows a killed
    process left behind). Never raises: recovery must not fail the request.
    """
    config = current_app.config
    if not config["PLAN_REGEN_EAGER"] or config.get("TESTING"):
        return
    try:
        due = state.redis.set(
            state.key("eager-sweep"), 1, nx=True, ex=int(config["PLAN_REGEN_SWEEP_INTERVAL"])
        )
        if due and any(sweep(state).values()):
            queue.run_queued(state.redis, rq_queue_names(config))
    except Exception:
        logger.exception("in-process sweep failed; the next one tries again")


def _move_to_configured_queue(state: RegenState, generation_id: str, queue_name: str) -> bool:
    """Put a pending row's job on ``queue_name``, taking it off a queue no longer listened to.

    Left alone while a worker runs it: a retry it asks for lands on the old queue,
    and the next sweep moves that.
    """
    if queue.job_is_running(state.redis, generation_id):
        return False
    session = state.db.session
    regeneration = session.get(Regeneration, generation_id)
    if regeneration is None or regeneration.status != Status.PENDING:
        session.rollback()
        return False
    regeneration.queue = queue_name  # the new job goes where the row now says
    if not lifecycle.requeue_job(state, regeneration):
        session.rollback()  # another sweep moves it
        return False
    session.commit()  # an UPDATE of the queue alone: a claim meanwhile keeps its status
    logger.warning("moved %s to queue %s, where its priority goes now", generation_id, queue_name)
    return True


def on_job_failure(job: Any, connection: Any, *exc_info: Any) -> None:
    """RQ failure callback: the job raised, or RQ found it abandoned by a dead worker."""
    if exc_info and issubclass(exc_info[0], queue.RegenerationFailed):
        return  # the attempt ended its regeneration: nothing left to release
    why = f"job failed: {exc_info[0].__name__ if exc_info else 'unknown'}"
    # The pool is kept: a work horse exits after its job, a forked child never uses the
    # pool it inherits (dispose_engines_after_fork), and a job run in process
    # (PLAN_REGEN_EAGER, tests) shares it with the app, e.g. an in-memory SQLite.
    with _worker_state(dispose_pool=False) as state:
        if exc_info and queue.is_abandoned(exc_info[0]) and _runs_again(state, job.id):
            logger.info("regeneration %s: RQ found an old execution abandoned; it runs again "
                        "elsewhere, left alone", job.id)  # fmt: skip
            return
        # Not queued again here: RQ marks this job failed after the callback returns.
        lifecycle.release(state, job.id, why, requeue=False)


def _runs_again(state: RegenState, generation_id: str) -> bool:
    """Whether an attempt of ``generation_id`` runs now: its lease is held, or it was
    claimed less than a lease TTL ago (its lease is set a third of a TTL in). RQ reports
    a dead worker's execution a minute or more after the sweep queued it again."""
    if leases.is_held(state, generation_id):
        return True
    regeneration = state.db.session.get(Regeneration, generation_id)
    running = regeneration is not None and regeneration.status == Status.PROCESSING
    started = regeneration.started_at if regeneration is not None else None
    state.db.session.rollback()
    just_claimed = utcnow() - timedelta(seconds=leases.lease_ttl())
    return running and started is not None and as_utc(started) > just_claimed


@contextlib.contextmanager
def _worker_state(*, dispose_pool: bool = True) -> Iterator[RegenState]:
    """The app's state in a worker's main process, holding no DB connection afterwards.

    The worker forks work horses: pooled connections must not be inherited.
    """
    with worker_app().app_context():
        state = get_state()
        state.dispose_engines_after_fork()
        try:
            yield state
        finally:
            state.db.session.remove()
            if dispose_pool:
                for engine in state.db.engines.values():
                    engine.dispose()


class RecoveringWorker(queue.ResilientWorker):
    """The worker ``flask plan-regen worker`` runs: RQ's ``Worker``, plus recovery.

    It outlives Redis outages, releases the attempt of a work horse that was
    killed, and sweeps every ``PLAN_REGEN_SWEEP_INTERVAL`` seconds, idle or busy.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.maintain_every = int(worker_app().config["PLAN_REGEN_SWEEP_INTERVAL"])
        super().__init__(*args, **kwargs)

    def maintain(self) -> None:
        # A worker that runs its jobs in threads shares its pool with them: kept.
        with _worker_state(dispose_pool=queue.is_forking(type(self))) as state:
            sweep_if_due(state, str(self.name), stopping=self.stop_asked)

    def horse_killed(self, job_id: str, why: str) -> None:
        with _worker_state() as state:
            lifecycle.release(state, job_id, why, requeue=True)
