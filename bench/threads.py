"""Threads benchmark: `flask plan-regen worker --threads 100` against today's process pool.

With a provider that answers in 5 s (``PLAN_REGEN_BUILTIN_DELAY=5``: the built-in
provider waits, as a model would make the job wait), two layouts drain the same kind of
queue on PostgreSQL:

* ``threads``: one ``flask plan-regen worker --threads 100`` (ideal: 100 / 5 s = 20 jobs/s);
* ``pool``: ``flask plan-regen worker --workers 8`` (a forked work horse per job).

Both without RQ's scheduler, stopped once drained. Throughput is read from the jobs as
in bench/worker.py (first start to last end), and also as sustained,
without the ramp-up (the first hundred starting) and the tail (the last hundred ending
one by one): each of the hundred slots runs its jobs one after the other, so from the
hundred first ends to the hundred last ends the worker got through ``jobs - 100`` jobs;
sustained = ``(jobs - 100) / (mean of the last 100 ends - mean of the first 100 ends)``,
exactly 100 / 5 s for a worker that never lets a slot wait. PSS is the peak over every
process of a layout, sampled every 0.5 s;
the database connections the worker holds are sampled from ``pg_stat_activity`` (by the
``application_name`` its database URL sets) every 0.1 s: "in use" is every one not
``idle`` (running a statement, or inside a transaction).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from rq.serializers import JSONSerializer
from sqlalchemy import create_engine, text

from bench.common import Database
from bench.worker import fill_package_queue, job_times, run_workers

DELAY = 5
THREADS = 100
POOL_WORKERS = 8
# SQLAlchemy's QueuePool defaults, which the example host app keeps.
DB_POOL = 5 + 10
APPLICATION_NAME = "plan-regen-bench-worker"
LAYOUTS = ("threads", "pool")
PROCESSES = {"threads": 1, "pool": POOL_WORKERS}
IN_FLIGHT = {"threads": THREADS, "pool": POOL_WORKERS}


@dataclass
class ThreadsResult:
    jobs_per_s: float
    sustained_jobs_per_s: float
    peak_pss_kib: int
    peak_connections_in_use: int
    peak_connections_open: int

    def __str__(self) -> str:
        return (
            f"{self.jobs_per_s:.1f} jobs/s ({self.sustained_jobs_per_s:.1f} sustained), "
            f"peak PSS {self.peak_pss_kib / 1024:.0f} MiB, "
            f"DB connections in use {self.peak_connections_in_use} "
            f"(open {self.peak_connections_open})"
        )


def layout_argv(layout: str) -> list[str]:
    argv = ["flask", "plan-regen", "worker", "--without-scheduler", "--logging-level", "WARNING"]
    if layout == "threads":
        return [*argv, "--threads", str(THREADS)]
    return [*argv, "--workers", str(POOL_WORKERS)]


def drain_threads_layout(layout: str, database: Database, jobs: int) -> ThreadsResult:
    """Queue ``jobs`` regenerations and time ``layout`` draining them."""
    database.reset()
    queue_names = fill_package_queue(database, jobs)
    sampler = ConnectionSampler(database.uri)
    sampler.start()
    try:
        drained = run_workers(
            [layout_argv(layout)],
            database,
            queue_names,
            jobs,
            log_name=f"threads-{layout}",
            env={
                "FLASK_PLAN_REGEN_BUILTIN_DELAY": str(DELAY),
                "SQLALCHEMY_DATABASE_URI": f"{database.uri}?application_name={APPLICATION_NAME}",
            },
            sample_every=0.5,
        )
    finally:
        sampler.stop()
    return ThreadsResult(
        drained.jobs_per_s,
        sustained_rate(job_times(database, queue_names, JSONSerializer), IN_FLIGHT[layout]),
        drained.peak_pss_kib,
        sampler.in_use,
        sampler.opened,
    )


def sustained_rate(times: list[tuple[datetime, datetime]], slots: int) -> float:
    """Jobs per second from the first ``slots`` ends to the last ``slots`` ends (see above)."""
    ends = sorted(end for _, end in times)
    first, last = ends[:slots], ends[-slots:]
    spread = sum((b - a).total_seconds() for a, b in zip(first, last, strict=True)) / slots
    return (len(ends) - slots) / spread


def in_flight_per_gib(layout: str, peak_pss_kib: int) -> float:
    """Regenerations a layout holds in flight per GiB of its peak PSS (every slot is busy
    while it drains)."""
    return IN_FLIGHT[layout] / (peak_pss_kib / 1024 / 1024)


class ConnectionSampler:
    """The peak number of the worker's database connections, in use and open."""

    def __init__(self, uri: str, every: float = 0.1) -> None:
        self._engine = create_engine(uri)
        self._every = every
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.in_use = self.opened = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        self._engine.dispose()

    def _sample(self) -> None:
        query = text(
            "SELECT count(*) FILTER (WHERE state <> 'idle'), count(*) "
            "FROM pg_stat_activity WHERE application_name = :name"
        )
        with self._engine.connect() as connection:
            while not self._done.wait(self._every):
                in_use, opened = connection.execute(query, {"name": APPLICATION_NAME}).one()
                connection.rollback()
                self.in_use = max(self.in_use, in_use)
                self.opened = max(self.opened, opened)
