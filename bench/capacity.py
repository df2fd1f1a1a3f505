"""Capacity benchmark: ``flask plan-regen worker --workers 8`` on one machine.

With a 1 s provider delay (``PLAN_REGEN_BUILTIN_DELAY=1``, a model that takes its time,
so the workers mostly wait), three layouts drain the same kind of queue:

* ``one``: a single ``flask plan-regen worker``;
* ``pool``: ``flask plan-regen worker --workers 8`` (the app loaded once, then forked);
* ``separate``: eight ``flask plan-regen worker`` processes, each loading the app itself.

All use the command's default worker class (``RecoveringWorker``), without RQ's scheduler
(it would add one process to either multi-worker layout), stopped once the queue is
drained. Throughput is read from the jobs as in bench/worker.py; PSS is the peak over
every process of a layout (workers, work horses and the pool's parent), and the idle PSS
once all eight workers have registered and settled.
"""

from __future__ import annotations

import contextlib
import time

from redis import Redis
from rq import Worker

from bench.common import Database, pss_kib, spawn
from bench.worker import DrainResult, fill_package_queue, run_workers

WORKERS = 8
DELAY_ENV = {"FLASK_PLAN_REGEN_BUILTIN_DELAY": "1"}
LAYOUTS = ("one", "pool", "separate")


def worker_argv(workers: int | None) -> list[str]:
    argv = ["flask", "plan-regen", "worker", "--without-scheduler", "--logging-level", "WARNING"]
    if workers is not None:
        argv += ["--workers", str(workers)]
    return argv


def layout_argvs(layout: str) -> list[list[str]]:
    if layout == "one":
        return [worker_argv(None)]
    if layout == "pool":
        return [worker_argv(WORKERS)]
    return [worker_argv(None) for _ in range(WORKERS)]


def drain_layout(layout: str, database: Database, jobs_per_worker: int) -> DrainResult:
    """Queue ``jobs_per_worker`` regenerations per worker of ``layout`` and time the drain."""
    jobs = jobs_per_worker * (1 if layout == "one" else WORKERS)
    database.reset()
    queue_names = fill_package_queue(database, jobs)
    return run_workers(
        layout_argvs(layout),
        database,
        queue_names,
        jobs,
        log_name=f"capacity-{layout}",
        env=DELAY_ENV,
        sample_every=0.5,
    )


def idle_layout_pss(layout: str, database: Database, settle: float = 1.0) -> int:
    """PSS (KiB) of the eight workers of ``layout`` waiting on empty queues."""
    database.reset()
    connection = Redis.from_url(database.redis_url)
    with contextlib.ExitStack() as stack:
        pids = [
            stack.enter_context(spawn(argv, database.env(), f"capacity-idle-{layout}-{index}"))
            for index, argv in enumerate(layout_argvs(layout))
        ]
        deadline = time.monotonic() + 120
        while Worker.count(connection=connection) < WORKERS:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {layout} workers did not all start")
            time.sleep(0.05)
        time.sleep(settle)
        return sum(pss_kib(pid) for pid in pids)
