"""RQ, in one place: queues, enqueueing, retries, stopping and looking up jobs,
and the worker class that keeps running through Redis outages.

Jobs are JSON-serialised and carry only the generation id; the job id is the
generation id. The dotted paths stored in jobs (:data:`JOB_FUNCTION`,
:data:`FAILURE_CALLBACK`) stay importable across releases, so jobs already in
Redis keep working after an upgrade.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import multiprocessing
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from redis import ConnectionPool, Redis
from redis.exceptions import RedisError
from rq import Callback, Queue, Retry, SimpleWorker, Worker
from rq.command import send_stop_job_command
from rq.exceptions import AbandonedJobError, InvalidJobOperation, NoSuchJobError, StopRequested
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException, TimerDeathPenalty
from rq.utils import now, utcparse
from rq.worker import DequeueStrategy, WorkerStatus
from rq.worker_pool import WorkerPool

from .config import job_timeout
from .redis_client import TRANSIENT_ERRORS, is_transient

JOB_FUNCTION = "flask_plan_regen.jobs.run_regeneration"
# Called by RQ when a job raised, or when a worker finds it abandoned by a dead worker.
FAILURE_CALLBACK = "flask_plan_regen.recovery.on_job_failure"

JobTimeout = JobTimeoutException
"""Raised inside a job when RQ's job timeout is reached."""

Redelivery = Retry
"""What a job returns to be delivered again later (:func:`retry_in`, :func:`put_off`)."""

SERIALIZER = JSONSerializer
_LIVE = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.STARTED, JobStatus.DEFERRED})
_REDIS_DOWN = TRANSIENT_ERRORS
# The pool's workers are forked: they start with the app its process loaded.
_FORK = multiprocessing.get_context("fork")

logger = logging.getLogger("flask_plan_regen.queue")

_queues: weakref.WeakKeyDictionary[Redis, dict[str, Queue]] = weakref.WeakKeyDictionary()


class RegenerationFailed(Exception):
    """Raised by a job whose regeneration ended ``failed``: RQ then records the job failed
    (failed registry, ``rq info``, rq-dashboard) with the failure class and the sanitised
    message. Jobs carry no RQ ``Retry``, so RQ does not run it again."""

    def __init__(self, failure_class: str | None, message: str | None) -> None:
        super().__init__(f"{failure_class}: {message}")


class Enqueueable(Protocol):
    """What a job is made from (a regeneration row)."""

    id: str
    plan_id: str
    kind: str
    queue: str


def rq_queue(redis: Redis, name: str) -> Queue:
    """The RQ queue ``name`` on ``redis`` (one object per connection and name)."""
    per_connection = _queues.setdefault(redis, {})
    if name not in per_connection:
        per_connection[name] = Queue(name, connection=redis, serializer=SERIALIZER)
    return per_connection[name]


def enqueue(redis: Redis, regeneration: Enqueueable, config: Mapping[str, Any]) -> None:
    """Put the job for ``regeneration`` on its queue, in one Redis round trip.

    No RQ ``Retry``: retries are decided by the job (:func:`retry_in`), and an
    attempt lost with its worker is found by its lapsed lease (recovery.py).
    """
    with redis.pipeline() as pipe:
        rq_queue(redis, regeneration.queue).enqueue_call(
            JOB_FUNCTION,
            args=(regeneration.id,),
            job_id=regeneration.id,
            timeout=job_timeout(config),
            on_failure=Callback(FAILURE_CALLBACK),
            result_ttl=config["PLAN_REGEN_RESULT_TTL"],
            failure_ttl=config["PLAN_REGEN_FAILURE_TTL"],
            description=f"{regeneration.kind} of plan {regeneration.plan_id}",
            pipeline=pipe,
        )
        pipe.execute()


def retry_in(seconds: int, config: Mapping[str, Any]) -> Retry:
    """What a job returns to be delivered again after ``seconds`` (needs RQ's scheduler).

    ``max`` is only RQ's safety net: the job never asks for more retries than
    ``PLAN_REGEN_MAX_ATTEMPTS`` allows, but RQ also counts the deliveries put off
    without an attempt (:func:`put_off`).
    """
    return Retry(max=int(config["PLAN_REGEN_MAX_ATTEMPTS"]) + PUT_OFF_LIMIT, interval=[seconds])


# Deliveries a job may be put off without an attempt (RQ counts them as retries): a
# month of re-checks every 30 s.
PUT_OFF_LIMIT = 100_000


def put_off(seconds: int) -> Retry:
    """What a job returns to be delivered again after ``seconds`` without having claimed
    its row or made an attempt (its regeneration stays pending): an RQ scheduled job."""
    return Retry(max=PUT_OFF_LIMIT, interval=[seconds])


def job_is_live(redis: Redis, job_id: str) -> bool:
    """Whether RQ still has the job queued, scheduled, deferred or running."""
    try:
        job = Job.fetch(job_id, connection=redis, serializer=SERIALIZER)
    except NoSuchJobError:
        return False
    return job.get_status(refresh=False) in _LIVE


def live_job_ids(redis: Redis, names: Iterable[str]) -> tuple[set[str], set[str]]:
    """``(every live job id, the running ones)`` on queues ``names``: queued, scheduled,
    deferred or running.

    One round trip of four commands a queue, whatever the backlog: the sweep's
    cost must not grow with the number of pending jobs.
    """
    parsers: list[tuple[Callable[[Any], str], bool]] = []
    with redis.pipeline(transaction=False) as pipe:
        for name in names:
            rq = rq_queue(redis, name)
            pipe.lrange(rq.key, 0, -1)
            parsers.append((_decoded, False))
            started = rq.started_job_registry
            for registry in (started, rq.scheduled_job_registry, rq.deferred_job_registry):
                pipe.zrange(registry.key, 0, -1)
                parsers.append((registry.parse_job_id, registry is started))
        answers = pipe.execute()
    live: set[str] = set()
    running: set[str] = set()
    for (parse, is_started), members in zip(parsers, answers, strict=True):
        ids = {parse(member) for member in members}
        live |= ids
        if is_started:
            running |= ids
    return live, running


def _decoded(raw: bytes) -> str:
    return raw.decode()


def silent_for(redis: Redis, job_ids: Iterable[str]) -> dict[str, float]:
    """Seconds since each running job's worker last reported it alive (RQ's heartbeat)."""
    ids = list(job_ids)
    with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(Job.key_for(job_id), "last_heartbeat")
        beats = pipe.execute()
    current = now()
    return {
        job_id: (current - utcparse(raw.decode())).total_seconds() if raw else float("inf")
        for job_id, raw in zip(ids, beats, strict=True)
    }


def stuck_after_dequeue(redis: Redis, names: Iterable[str], seconds: float) -> set[str]:
    """Jobs a worker took off a queue and died with before starting them: in RQ's
    intermediate queue, not in its started registry, first seen there over ``seconds``
    ago (RQ's own mark, which its maintenance would act on only every ten minutes).
    A few commands a queue while none is stuck."""
    stuck: set[str] = set()
    for name in names:
        rq = rq_queue(redis, name)
        taken = rq.intermediate_queue
        for job_id in taken.get_job_ids():
            if job_id in rq.started_job_registry:
                continue
            taken.set_first_seen(job_id)
            first_seen = taken.get_first_seen(job_id)
            if first_seen is not None and (now() - first_seen).total_seconds() > seconds:
                stuck.add(job_id)
    return stuck


def forget_dequeued(redis: Redis, names: Iterable[str], job_id: str) -> None:
    """Take ``job_id`` out of the intermediate queues, so RQ does not fail the job that
    recovery queues again under the same id."""
    for name in names:
        rq_queue(redis, name).intermediate_queue.remove(job_id)


def is_abandoned(error_class: type[BaseException]) -> bool:
    """Whether RQ failed a job because its execution's worker went silent (found by its
    clean-up of expired started entries, long after the worker died)."""
    return issubclass(error_class, AbandonedJobError)


def delete_job(redis: Redis, job_id: str) -> None:
    """Delete whatever RQ has under ``job_id`` (its queue and registry entries too)."""
    with contextlib.suppress(NoSuchJobError):
        Job.fetch(job_id, connection=redis, serializer=SERIALIZER).delete()


def stop_job(redis: Redis, job_id: str, *, kill_running: bool = True) -> None:
    """Stop the job if a worker runs it (unless not ``kill_running``: it stops itself),
    else take it off its queue; best effort."""
    try:
        job = Job.fetch(job_id, connection=redis, serializer=SERIALIZER)
        if job.get_status() == JobStatus.STARTED:
            if kill_running:
                send_stop_job_command(redis, job_id, serializer=SERIALIZER)
        else:
            job.cancel()
    except (NoSuchJobError, InvalidJobOperation):
        pass  # finished or gone: nothing left to stop
    except RedisError:
        logger.warning("could not stop job %s; its row is canceled, so it will not run", job_id)


def job_is_running(redis: Redis, job_id: str) -> bool:
    """Whether a worker has started the job (it is not taken off its queue then)."""
    try:
        job = Job.fetch(job_id, connection=redis, serializer=SERIALIZER)
    except NoSuchJobError:
        return False
    return job.get_status(refresh=False) == JobStatus.STARTED


def queue_stats(redis: Redis, names: Iterable[str]) -> list[dict[str, Any]]:
    """Per queue: queued, running, failed and scheduled jobs."""
    stats = []
    for name in names:
        queue = rq_queue(redis, name)
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


def worker_states(redis: Redis, names: Iterable[str]) -> list[dict[str, str]]:
    """The workers listening on any of the queues ``names``, with their state."""
    wanted = set(names)
    return [
        {"name": worker.name, "state": str(worker.get_state())}
        for worker in Worker.all(connection=redis)
        if wanted & set(worker.queue_names())
    ]


def queue_details(redis: Redis, names: Iterable[str]) -> list[dict[str, Any]]:
    """Per queue, for the console: jobs waiting and since when, scheduled retries and
    when the next is due, jobs running. Times are aware UTC datetimes (or ``None``)."""
    details = []
    for name in names:
        queue = rq_queue(redis, name)
        scheduled = ScheduledJobRegistry(queue=queue)  # type: ignore[no-untyped-call]
        head = queue.get_job_ids(0, 1)
        oldest = None
        if head:
            with contextlib.suppress(NoSuchJobError):
                job = Job.fetch(head[0], connection=redis, serializer=SERIALIZER)
                oldest = _aware(job.enqueued_at)
        next_due: list[tuple[bytes, float]] = redis.zrange(  # type: ignore[assignment]
            scheduled.key, 0, 0, withscores=True
        )
        details.append(
            {
                "queue": name,
                "waiting": queue.count,
                "oldest_enqueued_at": oldest,
                "scheduled": scheduled.count,
                "next_scheduled_at": (
                    datetime.fromtimestamp(next_due[0][1], UTC) if next_due else None
                ),
                "running": StartedJobRegistry(queue=queue).count,
            }
        )
    return details


def worker_details(redis: Redis, names: Iterable[str]) -> list[dict[str, Any]]:
    """The workers listening on any of the queues ``names``: where they run and what."""
    wanted = set(names)
    return [
        {
            "name": worker.name,
            "hostname": worker.hostname,
            "pid": worker.pid,
            "state": str(worker.get_state()),
            "queues": worker.queue_names(),
            "current_job": worker.get_current_job_id(),
            "last_heartbeat": _aware(worker.last_heartbeat),
            "successful_jobs": worker.successful_job_count,
            "failed_jobs": worker.failed_job_count,
        }
        for worker in Worker.all(connection=redis, serializer=SERIALIZER)
        if wanted & set(worker.queue_names())
    ]


def _aware(value: datetime | None) -> datetime | None:
    """RQ's times are naive UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def run_burst(redis: Redis, names: Iterable[str]) -> int:
    """Run every queued job in this process (RQ's ``SimpleWorker``); return how many were queued."""
    queues = [rq_queue(redis, name) for name in names]
    queued = sum(queue.count for queue in queues)
    SimpleWorker(queues, connection=redis, serializer=SERIALIZER).work(burst=True)
    return queued


def run_now(redis: Redis, job_id: str) -> bool:
    """Run the queued job ``job_id`` in this process, to its end; ``False`` if there is none.

    For ``PLAN_REGEN_EAGER`` and tests: RQ's synchronous queue (``is_async=False``)
    runs the job and records its outcome, calling its failure callback if it
    raises, as a worker would. A retry the job asks for runs at once: RQ's
    synchronous run does not retry, and a test should not wait out a backoff.
    """
    try:
        job = Job.fetch(job_id, connection=redis, serializer=SERIALIZER)
    except NoSuchJobError:
        return False
    # A timer, not SIGALRM, bounds the callbacks: this may run in any thread of a server.
    here = Queue(
        job.origin,
        connection=redis,
        serializer=SERIALIZER,
        is_async=False,
        death_penalty_class=TimerDeathPenalty,
    )
    here.remove(job)  # runs here: no worker may take it too
    while True:
        job._result = None  # RQ keeps what the job returned here; a raise leaves it None
        here.run_sync(job)
        if job.get_status(refresh=False) == JobStatus.FAILED:
            result = job.latest_result()
            logger.error("job %s raised:\n%s", job_id, result.exc_string if result else "")
        if not isinstance(job._result, Retry):
            return True


def run_queued(redis: Redis, names: Iterable[str]) -> int:
    """Run every job queued on ``names`` in this process, highest priority first; return how many.

    Jobs queued meanwhile (by the jobs run) are run too, until the queues are empty.
    """
    queues = [rq_queue(redis, name) for name in names]
    ran = 0
    while head := next(((q, ids[0]) for q in queues if (ids := q.get_job_ids(0, 1))), None):
        queue, job_id = head
        queue.remove(job_id)  # even if its job is gone, so that the loop ends
        ran += run_now(redis, job_id)
    return ran


def is_forking(worker_class: type) -> bool:
    """Whether the worker class runs each job in a forked work horse."""
    return not issubclass(worker_class, SimpleWorker) and getattr(
        worker_class, "forks_work_horses", True
    )


def start_worker(
    worker_class: type,
    redis: Redis,
    names: list[str],
    *,
    name: str | None,
    rq_options: Mapping[str, Any],
    work_options: Mapping[str, Any],
) -> str:
    """Build a worker of ``worker_class`` on queues ``names`` and run it; return its name.

    In burst mode with the scheduler, it also waits for the delayed retries of the
    jobs it ran and runs them, so that it ends once their regenerations have.
    """
    worker = worker_class(
        [rq_queue(redis, queue) for queue in names],
        connection=redis,
        serializer=SERIALIZER,
        name=name,
        **rq_options,
    )
    options = {
        **work_options,
        "dequeue_strategy": DequeueStrategy(work_options.get("dequeue_strategy", "default")),
    }
    worker.work(**options)
    if options.get("burst") and options.get("with_scheduler"):
        _run_own_retries(worker, options)
    return str(worker.name)


def _run_own_retries(worker: Worker, options: Mapping[str, Any]) -> None:
    """Burst again each time a retry this worker scheduled is due, until none is left."""
    try:
        while not worker._stop_requested and (due := _next_own_retry(worker)) is not None:
            # Past the due second: RQ's scheduler moves jobs once a second.
            wait = max(due - time.time(), 0.0) + 1.0
            worker.log.info("Worker %s: waiting %.0f s for a retry it scheduled", worker.name, wait)
            time.sleep(wait)
            worker.work(**options)
    except StopRequested:  # SIGTERM/SIGINT while waiting: the retries stay scheduled
        worker.log.info("Worker %s: stopping; its scheduled retries stay scheduled", worker.name)


def _next_own_retry(worker: Worker) -> float | None:
    """When the earliest retry scheduled by ``worker`` (of a job it ran) is due (epoch s)."""
    due: list[float] = []
    for queue in worker.queues:
        registry = ScheduledJobRegistry(queue=queue)  # type: ignore[no-untyped-call]
        ids = registry.get_job_ids()
        jobs = Job.fetch_many(ids, connection=worker.connection, serializer=SERIALIZER)
        due += [
            registry.get_scheduled_time(job).timestamp()
            for job in jobs
            if job is not None and job.worker_name == worker.name
        ]
    return min(due, default=None)


def run_worker_pool(
    count: int,
    worker_class: type,
    redis: Redis,
    names: list[str],
    *,
    name: str | None,
    rq_options: Mapping[str, Any],
    work_options: Mapping[str, Any],
    in_each_worker: Callable[[], None] | None = None,
) -> None:
    """Run ``count`` workers forked from this process (RQ's ``WorkerPool``) until they stop.

    Whatever this process has loaded (the app, imported modules) is shared
    copy-on-write with the workers rather than loaded once per worker. The
    pool replaces a worker that exits, except in burst mode; SIGINT or SIGTERM
    asks every worker for a warm shutdown (its current job finishes) and the
    pool exits once they all have. ``in_each_worker`` runs first in each one.
    """
    pool = _WorkerPool(
        names,
        connection=redis,
        num_workers=count,
        worker_class=worker_class,
        serializer=SERIALIZER,
        worker_target=functools.partial(
            _run_pool_worker,
            worker_class=worker_class,
            queue_names=names,
            connection_kwargs=dict(redis.connection_pool.connection_kwargs),
            connection_class=redis.connection_pool.connection_class,
            name_prefix=name,
            rq_options=dict(rq_options),
            work_options=dict(work_options),
            in_each_worker=in_each_worker,
        ),
    )
    # Objects loaded so far are never collected: the cyclic GC would otherwise write
    # to every one of them in each worker, turning shared pages into private copies.
    gc.freeze()
    pool.start(burst=bool(work_options["burst"]), logging_level=work_options["logging_level"])


class _WorkerPool(WorkerPool):
    """RQ's ``WorkerPool``, running each worker with all of the command's options.

    RQ's own pool passes a worker only a few of them (and always runs the scheduler).
    """

    def __init__(self, *args: Any, worker_target: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._worker_target = worker_target

    def get_worker_process(
        self, name: str, burst: bool, _sleep: float = 0, logging_level: str = "INFO"
    ) -> BaseProcess:
        return _FORK.Process(
            target=self._worker_target, args=(name,), name=f"Worker {name} (pool {self.name})"
        )


def _run_pool_worker(
    pool_name: str,
    *,
    worker_class: type,
    queue_names: list[str],
    connection_class: type,
    connection_kwargs: dict[str, Any],
    name_prefix: str | None,
    rq_options: dict[str, Any],
    work_options: dict[str, Any],
    in_each_worker: Callable[[], None] | None,
) -> None:
    """One worker of the pool, in its forked process, on a Redis connection of its own."""
    if in_each_worker is not None:
        in_each_worker()
    redis = Redis(
        connection_pool=ConnectionPool(connection_class=connection_class, **connection_kwargs)
    )
    name = f"{name_prefix}-{pool_name[:8]}" if name_prefix else pool_name
    start_worker(
        worker_class,
        redis,
        queue_names,
        name=name,
        rq_options=rq_options,
        work_options=work_options,
    )


class _OneLinePerOutage(logging.Filter):
    """Drops RQ's own line per failed dequeue: :class:`ResilientWorker` logs the outage once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Worker %s: could not connect to Redis instance")


_ONE_LINE_PER_OUTAGE = _OneLinePerOutage()


class ResilientWorker(Worker):
    """RQ's forking ``Worker``, made to run unattended.

    * A Redis error that ends by itself (:data:`~flask_plan_regen.redis_client.TRANSIENT_ERRORS`:
      connection lost, timeout, READONLY from a demoted primary, LOADING, OOM under
      ``noeviction``, MASTERDOWN), idle, mid-job or at start-up, never ends it: it
      waits for Redis with backoff and carries on, logging one line when the outage
      starts and one when it ends (plain RQ quits, or logs every retry).
    * A stop request (SIGTERM/SIGINT, RQ's ``StopRequested``) is never swallowed,
      whatever the worker was doing: sweeping, waiting for Redis.
    * :meth:`maintain` runs every :attr:`maintain_every` seconds whether the worker
      is idle (the blocking dequeue is bounded by it) or busy (the work horse
      monitor wakes up as often).
    * :meth:`horse_killed` hears of a work horse that died mid-job, once RQ has
      recorded the job's failure (so that it may queue the job again).
    * On the same schedule it keeps itself registered (Redis may have lost its
      record) and RQ's scheduler running: a Redis outage kills the scheduler
      process, and the scheduler lock of a killed worker must be taken over,
      else delayed retries wait for RQ's own maintenance pass (600 s).
    * It starts under the name of a worker that was killed without a word
      (plain RQ refuses until the dead one's record expires, up to 8 minutes).
    """

    maintain_every: int = 10
    max_redis_backoff: float = 5.0
    """The longest wait, in seconds, between two tries while Redis is unavailable."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("work_horse_killed_handler", self._on_horse_killed)
        self._outage_since: float | None = None  # RQ's __init__ already talks to Redis
        self._stop_asked = False
        super().__init__(*args, **kwargs)
        self.job_monitoring_interval = min(self.job_monitoring_interval, self.maintain_every)
        self._next_maintenance = 0.0
        self._killed: tuple[str, str] | None = None
        if _ONE_LINE_PER_OUTAGE not in self.log.filters:
            self.log.addFilter(_ONE_LINE_PER_OUTAGE)

    def maintain(self) -> None:
        """Periodic work of the subclass; exceptions are logged, never raised."""

    def horse_killed(self, job_id: str, why: str) -> None:
        """A work horse died while running ``job_id``."""

    def stop_asked(self) -> bool:
        """Whether SIGTERM/SIGINT asked this worker to stop (long work checks it as it goes).

        RQ raises ``StopRequested`` wherever the signal lands, and code that catches
        every exception (a logging handler, a finalizer) may swallow it: the flag stays.
        """
        return self._stop_asked

    def handle_warm_shutdown_request(self) -> None:
        self._stop_asked = True
        super().handle_warm_shutdown_request()  # type: ignore[no-untyped-call]

    def _stop_if_asked(self) -> None:
        """Raise ``StopRequested`` again if it was asked for while idle (it may have been lost)."""
        if self._stop_asked and self.get_state() != WorkerStatus.BUSY:
            raise StopRequested()

    def redis_unavailable(self, error: BaseException, doing: str) -> None:
        """Note a Redis error that ends by itself; the first of an outage is logged."""
        if self._outage_since is not None:
            return
        self._outage_since = time.monotonic()
        self.log.warning(
            "Worker %s: Redis unavailable while %s (%s: %s); waiting it out with backoff "
            "(logged once per outage)",
            self.name,
            doing,
            type(error).__name__,
            error,
        )

    def redis_available(self) -> None:
        """Redis answered a write: end the outage, if there is one."""
        if self._outage_since is None:
            return
        lasted, self._outage_since = time.monotonic() - self._outage_since, None
        self.log.info("Worker %s: Redis is back after %.1f s", self.name, lasted)

    def _until_redis_answers(self, action: Callable[[], None], doing: str) -> None:
        """Run ``action`` until Redis lets it through, waiting with backoff in between.

        A stop request while waiting stops the worker (RQ raises ``StopRequested``).
        """
        delay = 1.0
        while True:
            self._stop_if_asked()
            try:
                action()
            except _REDIS_DOWN as error:
                self.redis_unavailable(error, doing)
                time.sleep(delay)
                delay = min(delay * 2, self.max_redis_backoff)
            else:
                self.redis_available()
                return

    def _set_ip_address(self, connection: Redis) -> None:
        # The first Redis command of a worker: it may start during an outage.
        set_ip_address = super()._set_ip_address
        self._until_redis_answers(lambda: set_ip_address(connection), "starting")

    def _on_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        self._killed = (job.id, f"work horse {retpid} killed (waitpid status {ret_val})")

    @property
    def dequeue_timeout(self) -> int:
        return max(1, min(int(super().dequeue_timeout), self.maintain_every))

    @property
    def should_run_maintenance_tasks(self) -> bool:
        rq_due = bool(super().should_run_maintenance_tasks)
        return rq_due or time.monotonic() >= self._next_maintenance

    def run_maintenance_tasks(self) -> None:
        if super().should_run_maintenance_tasks:
            try:
                super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
            except _REDIS_DOWN as error:
                self.redis_unavailable(error, "running RQ's maintenance")
        self._maintain_when_due()

    def _maintain_when_due(self) -> None:
        if time.monotonic() < self._next_maintenance:
            return
        self._next_maintenance = time.monotonic() + self.maintain_every
        try:
            self._keep_registered()
            self._keep_scheduler_running()
            self.maintain()
        except StopRequested:
            raise  # SIGTERM/SIGINT arrived mid-pass: the worker must stop, not sweep on
        except _REDIS_DOWN as error:
            self.redis_unavailable(error, "sweeping")
        except Exception:  # the worker must outlive whatever its maintenance meets
            if not self._stop_asked:
                logger.exception("maintenance failed; the next pass tries again")
        self._stop_if_asked()

    def _keep_registered(self) -> None:
        if not self.connection.hexists(self.key, "birth"):
            self.log.warning(
                "Worker %s: Redis lost this worker's record; registering again", self.name
            )
            self.connection.delete(self.key)
            self.register_birth()

    def _keep_scheduler_running(self) -> None:
        scheduler = self.scheduler
        if scheduler is not None and not (scheduler._process and scheduler._process.is_alive()):
            scheduler.acquire_locks(auto_start=True)  # type: ignore[no-untyped-call]

    def register_birth(self) -> None:
        """Register, first waiting for Redis (a worker may start during an outage) and out
        the record of a namesake that died without a word.

        A live ``ResilientWorker`` heartbeats every :attr:`maintain_every` seconds, so
        a record silent for three of those belongs to a dead worker: it is taken over.
        """
        stale_after = 3 * self.maintain_every
        while True:
            try:
                self._until_redis_answers(super().register_birth, "registering")
                return
            except ValueError:  # "There exists an active worker named ... already"
                silent = self._silent_for()
                if silent is not None and silent < stale_after:
                    self.log.warning(
                        "Worker %s: a worker of this name was alive %.0f s ago; waiting for "
                        "its record to go stale (%s s)",
                        self.name,
                        silent,
                        stale_after,
                    )
                    time.sleep(max(1.0, stale_after - silent))
                    continue
                self.log.warning("Worker %s: taking over the record of a dead worker", self.name)
                self.connection.delete(self.key)

    def _silent_for(self) -> float | None:
        """Seconds since the last heartbeat recorded under this worker's name."""
        raw = self.connection.hget(self.key, "last_heartbeat")
        if raw is None:
            return None
        last = utcparse(raw.decode() if isinstance(raw, bytes) else str(raw))
        return (now() - last).total_seconds()

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        # RQ's loop retries a lost connection itself; the other transient errors
        # (READONLY, UNBLOCKED, OOM, MASTERDOWN) would end the worker.
        while True:
            try:
                return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            except RedisError as error:
                if not is_transient(error):
                    raise
                self.redis_unavailable(error, "waiting for a job")
                self.wait_for_redis()

    def maintain_heartbeats(self, job: Job, execution: Any) -> None:
        try:
            super().maintain_heartbeats(job, execution)
        except _REDIS_DOWN as error:
            self.redis_unavailable(error, f"running job {job.id}")
        self._maintain_when_due()

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        try:
            super().heartbeat(timeout, pipeline)
        except _REDIS_DOWN as error:
            self.redis_unavailable(error, "sending a heartbeat")
            if self.get_state() != WorkerStatus.BUSY:
                # Idle: nothing to do until Redis is back (a busy worker watches its horse).
                self.wait_for_redis()
        else:
            if pipeline is None:
                self.redis_available()

    def set_state(self, state: str, pipeline: Any = None) -> None:
        # RQ keeps the state in memory before writing it: only Redis's copy goes stale.
        with contextlib.suppress(*_REDIS_DOWN):
            super().set_state(state, pipeline)

    def check_for_suspension(self, burst: bool) -> None:
        try:
            super().check_for_suspension(burst)
        except _REDIS_DOWN as error:
            self.redis_unavailable(error, "checking for suspension")

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
            if self._killed is not None:
                killed, self._killed = self._killed, None
                self.horse_killed(*killed)
        except _REDIS_DOWN as error:
            # The job's outcome is in the database; only RQ's record of it is lost.
            self.redis_unavailable(error, f"recording job {job.id}")
            self.wait_for_redis()

    def teardown(self) -> None:
        try:
            super().teardown()  # type: ignore[no-untyped-call]
        except _REDIS_DOWN as error:
            # Stopping during an outage: the record expires by itself (worker_ttl).
            self.log.warning("Worker %s: not unregistered, Redis unavailable: %s", self.name, error)

    def wait_for_redis(self) -> None:
        """Block until Redis takes a write again (backoff up to :attr:`max_redis_backoff`),
        then re-register. A stop request while waiting stops the worker.
        """
        heartbeat = super().heartbeat

        def write_and_register() -> None:
            heartbeat()
            self._keep_registered()

        self._until_redis_answers(write_and_register, "waiting for Redis")
