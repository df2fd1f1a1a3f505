"""Workers and Redis errors that end by themselves: READONLY, OOM, Redis down at start-up,
and a SIGTERM that arrives during a sweep. Real redis-server and worker processes.

Each test prints what it measured.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from conftest import build_app, plan_factory, regenerate, wait_for_status, wait_until, worker_env
from flask import Flask
from servers import EmbeddedRedis, WorkerProcs, free_port
from sqlalchemy import insert
from test_redis_costs import pending_rows

from examples.host_app import db
from flask_plan_regen import Regeneration, get_state, queue
from flask_plan_regen.config import rq_queue_names
from flask_plan_regen.recovery import sweep

pytestmark = pytest.mark.slow

OUTAGE_STARTS = "Redis unavailable while"
OUTAGE_ENDS = "Redis is back after"


def test_a_worker_started_while_redis_is_down_waits_for_it(
    sqlite_uri: str, worker_procs: WorkerProcs, tmp_path: Path
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    app = build_app(sqlite_uri, url)
    worker = worker_procs.spawn(["flask", "plan-regen", "worker"], worker_env(sqlite_uri, url))
    worker_procs.wait_for_log(worker, OUTAGE_STARTS, timeout=60)
    server = EmbeddedRedis(tmp_path / "redis", port=port)
    server.start()
    try:
        up = time.monotonic()
        worker_procs.wait_for_log(worker, "Listening on", timeout=60)
        listening = time.monotonic() - up
        plan_id = plan_factory(app)()
        generation_id = regenerate(app.test_client(), plan_id)["generationId"]
        assert wait_for_status(app, [generation_id]) == {generation_id: "succeeded"}
        log = worker_procs.log(worker)
        print(
            f"\nworker started with Redis down: listening {listening:.1f} s after Redis came "
            f"up, job succeeded; outage lines: {log.count(OUTAGE_STARTS)}"
        )
        assert worker.poll() is None
        assert log.count(OUTAGE_STARTS) == 1
        assert "Traceback" not in log
    finally:
        server.stop()


def _make_read_only(own: EmbeddedRedis, other: EmbeddedRedis) -> Callable[[], None]:
    """Demote ``own`` to a replica of ``other`` (READONLY to writes); return the undo."""
    client = redis.Redis(port=own.port)
    client.replicaof("127.0.0.1", str(other.port))
    return lambda: client.replicaof("NO", "ONE")


def _fill_memory(own: EmbeddedRedis, other: EmbeddedRedis) -> Callable[[], None]:
    """``maxmemory`` below what is used under ``noeviction``: writes answer OOM."""
    client = redis.Redis(port=own.port)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")
    return lambda: client.config_set("maxmemory", "0")


@pytest.mark.parametrize("episode", [_make_read_only, _fill_memory], ids=["readonly", "oom"])
def test_workers_ride_out_readonly_and_oom_episodes(
    episode: Callable[[EmbeddedRedis, EmbeddedRedis], Callable[[], None]],
    sqlite_uri: str,
    own_redis: EmbeddedRedis,
    worker_procs: WorkerProcs,
    tmp_path: Path,
) -> None:
    app = build_app(sqlite_uri, own_redis.url)
    env = worker_env(sqlite_uri, own_redis.url, PLAN_REGEN_SWEEP_INTERVAL="2")
    workers = [
        worker_procs.spawn(["flask", "plan-regen", "worker"], env),
        worker_procs.spawn(["flask", "plan-regen", "worker", "--workers", "2"], env),
    ]
    for worker in workers:
        worker_procs.wait_for_log(worker, "Listening on", timeout=60)
    other = EmbeddedRedis(tmp_path / "other")
    other.start()
    try:
        undo = episode(own_redis, other)
        started = time.monotonic()
        for worker in workers:
            worker_procs.wait_for_log(worker, OUTAGE_STARTS, timeout=30)
        # Ten seconds of the episode: a worker that exits on it would have crash-looped.
        time.sleep(max(0.0, 10 - (time.monotonic() - started)))
        alive = [worker.poll() is None for worker in workers]
        undo()
    finally:
        other.stop()
    for worker in workers:
        worker_procs.wait_for_log(worker, OUTAGE_ENDS, timeout=30)
    plans = [plan_factory(app)() for _ in range(3)]
    ids = [regenerate(app.test_client(), plan_id)["generationId"] for plan_id in plans]
    final = wait_for_status(app, ids)
    logs = [worker_procs.log(worker) for worker in workers]
    starts = [log.count(OUTAGE_STARTS) for log in logs]
    print(
        f"\n{episode.__name__}: {time.monotonic() - started:.1f} s episode; workers alive "
        f"{alive}; outage lines per worker process {starts}; then {len(final)} jobs "
        f"{set(final.values())}"
    )
    assert alive == [True, True]
    assert all(worker.poll() is None for worker in workers)
    assert set(final.values()) == {"succeeded"}
    assert starts[0] == 1  # one line per outage, not one per retry
    assert starts[1] <= 2  # the pool: one per worker process
    for log in logs:
        # RQ's scheduler process reports its end; the worker goes on (the scheduler restarts).
        assert "ERROR:rq.worker" not in log, log
        assert "found an unhandled exception" not in log, log


def test_sigterm_during_a_sweep_stops_the_worker_and_loses_nothing(
    pg_app: Flask, postgres_url: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    # 3,000 pending rows whose jobs are gone: the sweep requeues them one by one.
    pending = 3000
    names = rq_queue_names(pg_app.config)
    with pg_app.app_context():
        db.session.execute(insert(Regeneration), pending_rows(pg_app, pending, "lost"))
        db.session.commit()
        client = get_state().redis
    env = worker_env(postgres_url, redis_url, PLAN_REGEN_SWEEP_INTERVAL="1")
    # On a queue of no regeneration: the worker sweeps, it never runs the requeued jobs.
    worker = worker_procs.spawn(["flask", "plan-regen", "worker", "elsewhere"], env)

    def requeued() -> int:
        return sum(queue.rq_queue(client, name).count for name in names)

    wait_until(requeued, 60, "the sweep requeueing")
    os.kill(worker.pid, signal.SIGTERM)
    signalled = time.monotonic()
    code = worker.wait(timeout=30)
    exited = time.monotonic() - signalled
    at_exit = requeued()
    log = worker_procs.log(worker)
    # Other workers' sweeps find whatever this one left (a row it had locked for its
    # requeue waits out that lock): nothing is lost.
    ids = {f"lost-{n:05d}" for n in range(pending)}

    def all_queued() -> bool:
        with pg_app.app_context():
            sweep(get_state())
        return ids <= queue.live_job_ids(client, names)[0]

    wait_until(all_queued, 60, "every row queued again")
    live = len(ids & queue.live_job_ids(client, names)[0])
    print(
        f"\nSIGTERM during a sweep: exited {exited:.1f} s later (code {code}) with "
        f"{at_exit} of {pending} requeued; after the next sweep {live} queued, lost: "
        f"{pending - live}"
    )
    assert code == 0, log
    assert exited < 10
    assert at_exit < pending, "the sweep ran to its end: the stop request was not heard"
    assert "maintenance failed" not in log
    assert live == pending
