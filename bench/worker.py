"""Worker benchmark: regenerations/s against the hand-written job and bare RQ no-op jobs.

Each run pre-fills a queue, starts 1 or 2 workers of one class, stops them once the queue is
drained and reads the jobs' own ``started_at``/``ended_at`` from Redis: throughput = jobs /
(last end - first start), so process start-up is not counted for any side. The workers run
as in production, not in burst mode: a burst worker pops each of its queues in turn (one
Redis round trip per queue, and the package's jobs wait in the third of its three queues),
a running one pops all its queues in one blocking call. Three sides:

* ``package``: ``flask plan-regen worker`` running regenerations queued by the package's
  route, with the built-in provider at zero delay (every one must end ``succeeded``);
* ``handwritten``: ``rq worker -c bench.handwritten_settings`` running
  ``bench.handwritten.run_regeneration`` on rows queued by the hand-written route (same
  provider, same tables, every one must end ``succeeded``);
* ``bare``: ``rq worker -c bench.rq_settings`` (the host app loaded by RQ's settings
  module) running ``bench.jobs.noop``.

PSS is sampled over the worker processes and their work horses while they drain.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis
from rq import Queue, Worker
from rq.job import Job
from rq.registry import FinishedJobRegistry
from rq.serializers import DefaultSerializer, JSONSerializer
from sqlalchemy import func, select

from bench import handwritten
from bench.common import Database, pss_kib, spawn
from examples.host_app import db
from flask_plan_regen.models import Regeneration

BARE_QUEUE = "bench_bare"
WORKER_CLASSES = {"forking": "rq.Worker", "simple": "rq.SimpleWorker"}
SIDES = ("package", "handwritten", "bare")
# The hand-written route enqueues as plain RQ does (pickle); the others use JSON.
SERIALIZERS = {"package": JSONSerializer, "handwritten": DefaultSerializer, "bare": JSONSerializer}


@dataclass
class DrainResult:
    jobs_per_s: float
    peak_pss_kib: int


def fill_package_queue(database: Database, jobs: int) -> list[str]:
    """Queue ``jobs`` regenerations through the real route (test client); their queues."""
    app = database.app()
    client = app.test_client()
    queues: set[str] = set()
    for plan_id, owner in database.plans[:jobs]:
        response = client.post(
            f"/api/v1/plans/{plan_id}/regenerate", json={}, headers={"X-User-Id": owner}
        )
        if response.status_code != 202:
            raise RuntimeError(f"prefill got {response.status_code}: {response.get_json()}")
        queues.add(response.get_json()["queue"])
    with app.app_context():
        db.engine.dispose()
    return sorted(queues)


def fill_handwritten_queue(database: Database, jobs: int, offset: int = 0) -> None:
    """Queue ``jobs`` regenerations (of plans from ``offset`` on) through the hand-written
    route (test client)."""
    app = handwritten.create_app(database.uri, database.redis_url)
    client = app.test_client()
    for plan_id, owner in database.plans[offset : offset + jobs]:
        response = client.post(
            f"/api/v1/plans/{plan_id}/regenerate", json={}, headers={"X-User-Id": owner}
        )
        if response.status_code != 202:
            raise RuntimeError(f"prefill got {response.status_code}: {response.get_json()}")
    with app.app_context():
        handwritten.db.engine.dispose()


def fill_bare_queue(database: Database, jobs: int) -> None:
    queue = Queue(
        BARE_QUEUE, connection=Redis.from_url(database.redis_url), serializer=JSONSerializer
    )
    queue.enqueue_many([Queue.prepare_data("bench.jobs.noop", timeout=180) for _ in range(jobs)])


def worker_argv(side: str, worker_class: str, database: Database) -> list[str]:
    cls = WORKER_CLASSES[worker_class]
    if side == "package":
        return [
            "flask", "plan-regen", "worker", "--without-scheduler",
            "--worker-class", cls, "--logging-level", "WARNING",
        ]  # fmt: skip
    if side == "handwritten":
        return [
            "rq", "worker", "-c", "bench.handwritten_settings", "-w", cls,
            "--url", database.redis_url, "--logging_level", "WARNING", handwritten.QUEUE,
        ]  # fmt: skip
    return [
        "rq", "worker", "-c", "bench.rq_settings", "-w", cls,
        "-S", "rq.serializers.JSONSerializer", "--url", database.redis_url,
        "--logging_level", "WARNING", BARE_QUEUE,
    ]  # fmt: skip


def drain(
    side: str, worker_class: str, processes: int, database: Database, jobs: int
) -> DrainResult:
    """Fill a queue with ``jobs`` jobs and time ``processes`` workers draining it."""
    database.reset()
    if side == "package":
        queue_names = fill_package_queue(database, jobs)
    elif side == "handwritten":
        fill_handwritten_queue(database, jobs)
        queue_names = [handwritten.QUEUE]
    else:
        fill_bare_queue(database, jobs)
        queue_names = [BARE_QUEUE]
    argv = worker_argv(side, worker_class, database)
    return run_workers(
        [argv] * processes,
        database,
        queue_names,
        jobs,
        serializer=SERIALIZERS[side],
        log_name=f"{side}-{worker_class}",
        regenerations=side != "bare",
    )


def run_workers(
    argvs: list[list[str]],
    database: Database,
    queue_names: list[str],
    jobs: int,
    *,
    serializer: Any = JSONSerializer,
    log_name: str,
    regenerations: bool = True,
    env: dict[str, str] | None = None,
    sample_every: float = 0.02,
) -> DrainResult:
    """Run one process per argv (workers) until ``jobs`` jobs have finished, then stop them.

    Returns the jobs' throughput and the peak PSS of all the processes and their children.
    """
    with contextlib.ExitStack() as stack:
        pids = [
            stack.enter_context(spawn(argv, {**database.env(), **(env or {})}, f"{log_name}-{i}"))
            for i, argv in enumerate(argvs)
        ]
        done = threading.Event()
        peak = [0]

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], sum(pss_kib(pid) for pid in pids))
                time.sleep(sample_every)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        wait_until_drained(database, queue_names, jobs)
        done.set()
        sampler.join()
    if regenerations:
        check_all_succeeded(database, jobs)
    return DrainResult(jobs / job_span(database, queue_names, serializer), peak[0])


def wait_until_drained(database: Database, queue_names: list[str], jobs: int) -> None:
    connection = Redis.from_url(database.redis_url)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        finished = sum(
            FinishedJobRegistry(name, connection=connection).count for name in queue_names
        )
        if finished >= jobs:
            return
        time.sleep(0.05)
    raise RuntimeError(f"queues {queue_names} did not drain in time")


def job_span(database: Database, queue_names: list[str], serializer: Any) -> float:
    """Seconds from the first job's start to the last job's end."""
    times = job_times(database, queue_names, serializer)
    return (max(end for _, end in times) - min(start for start, _ in times)).total_seconds()


def job_times(
    database: Database, queue_names: list[str], serializer: Any
) -> list[tuple[datetime, datetime]]:
    """(started_at, ended_at) of every finished job of the queues."""
    connection = Redis.from_url(database.redis_url)
    times = []
    for name in queue_names:
        ids = FinishedJobRegistry(name, connection=connection).get_job_ids()
        for job in Job.fetch_many(ids, connection=connection, serializer=serializer):
            if job is None or job.started_at is None or job.ended_at is None:
                raise RuntimeError(f"a finished job of {name} lacks its timestamps")
            times.append((job.started_at, job.ended_at))
    return times


def check_all_succeeded(database: Database, jobs: int) -> None:
    with database.app().app_context():
        succeeded = db.session.scalar(
            select(func.count()).where(Regeneration.status == "succeeded")
        )
        db.engine.dispose()
    if succeeded != jobs:
        raise RuntimeError(f"only {succeeded} of {jobs} regenerations succeeded")


def idle_pss(side: str, database: Database, settle: float = 1.0) -> int:
    """PSS of one forking worker waiting on empty queues, once it has registered and settled."""
    database.reset()
    connection = Redis.from_url(database.redis_url)
    argv = worker_argv(side, "forking", database)
    with spawn(argv, database.env(), f"{side}-idle") as pid:
        deadline = time.monotonic() + 60
        while Worker.count(connection=connection) == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {side} worker did not start")
            time.sleep(0.05)
        time.sleep(settle)
        return pss_kib(pid)
