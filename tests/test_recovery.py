"""Recovery without an operator, with real worker processes and default settings.

Each slow test prints what it measured (seconds to recover, regenerations lost).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ALICE,
    plan_factory,
    regenerate,
    run_jobs,
    status_of,
    statuses,
    wait_for_status,
    wait_until,
    worker_env,
)
from flask import Flask
from servers import WorkerProcs
from sqlalchemy import create_engine, select
from sqlalchemy import update as sa_update

from examples.host_app import db
from flask_plan_regen import Regeneration, get_state, lifecycle, queue
from flask_plan_regen.config import rq_queue_names
from flask_plan_regen.models import utcnow
from flask_plan_regen.recovery import sweep, sweep_if_due


def children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(child) for child in text.split()}


def work_horse_of(worker: subprocess.Popen[bytes]) -> int:
    """The worker's work horse: the child that leads a process group of its own."""

    def horse() -> int | None:
        leaders = [pid for pid in children(worker.pid) if os.getpgid(pid) == pid]
        return leaders[0] if leaders else None

    return wait_until(horse, 20, "a work horse")


def assert_whole_plan(app: Flask, plan_id: str, summary: dict[str, Any]) -> None:
    plan = app.test_client().get(f"/api/v1/plans/{plan_id}", headers=ALICE).get_json()
    assert len(plan["modules"]) == summary["modules"]
    assert sum(len(m["tasks"]) for m in plan["modules"]) == summary["tasks"]


@pytest.fixture
def plan_with_content(app: Flask, make_plan: Any) -> str:
    plan_id: str = make_plan()
    regenerate(app.test_client(), plan_id)
    run_jobs(app)
    return plan_id


def start_worker(
    worker_procs: WorkerProcs, sqlite_uri: str, redis_url: str, **config: str
) -> subprocess.Popen[bytes]:
    worker = worker_procs.spawn(
        ["flask", "plan-regen", "worker"], worker_env(sqlite_uri, redis_url, **config)
    )
    worker_procs.wait_for_log(worker, "Listening on")
    return worker


@pytest.mark.slow
def test_killed_work_horse_is_retried_at_once(
    app: Flask, plan_with_content: str, sqlite_uri: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    worker = start_worker(worker_procs, sqlite_uri, redis_url, PLAN_REGEN_BUILTIN_DELAY="2")
    client = app.test_client()
    generation_id = regenerate(client, plan_with_content)["generationId"]
    wait_for_status(app, [generation_id], {"processing"})
    os.kill(work_horse_of(worker), signal.SIGKILL)
    killed = time.monotonic()

    wait_for_status(app, [generation_id])
    doc = status_of(client, plan_with_content, generation_id)
    print(f"\nwork horse killed: succeeded {time.monotonic() - killed:.1f} s later")
    assert (doc["status"], doc["attempts"]) == ("succeeded", 2)
    (lost,) = doc["errorHistory"]
    assert (lost["attempt"], lost["class"]) == (1, "provider_error")
    assert "worker" in lost["error"]
    assert [a["outcome"] for a in doc["attemptLog"]] == ["failed", "succeeded"]
    assert_whole_plan(app, plan_with_content, doc["result"])


@pytest.mark.slow
def test_whole_worker_killed_is_recovered_by_another_worker_within_60s(
    app: Flask, plan_with_content: str, sqlite_uri: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    first = start_worker(worker_procs, sqlite_uri, redis_url, PLAN_REGEN_BUILTIN_DELAY="3")
    client = app.test_client()
    generation_id = regenerate(client, plan_with_content)["generationId"]
    wait_for_status(app, [generation_id], {"processing"})
    horse = work_horse_of(first)
    # The replacement is idle and nobody runs `sweep`: recovery is up to the workers.
    start_worker(worker_procs, sqlite_uri, redis_url, PLAN_REGEN_BUILTIN_DELAY="3")
    os.killpg(first.pid, signal.SIGKILL)  # the worker and its scheduler
    os.kill(horse, signal.SIGKILL)  # the work horse leads a process group of its own
    killed = time.monotonic()
    first.wait()

    def running_again() -> bool:
        doc = status_of(client, plan_with_content, generation_id)
        return doc["attempts"] == 2 or doc["status"] != "processing"

    wait_until(running_again, 60, "the lost attempt running again")
    recovered = time.monotonic() - killed
    wait_for_status(app, [generation_id])
    doc = status_of(client, plan_with_content, generation_id)
    print(f"\nwhole worker killed: running again after {recovered:.1f} s, lost 0")
    assert recovered < 60
    assert (doc["status"], doc["attempts"]) == ("succeeded", 2)
    assert [e["class"] for e in doc["errorHistory"]] == ["provider_error"]
    assert len(doc["attemptLog"]) == 2
    assert_whole_plan(app, plan_with_content, doc["result"])


@pytest.mark.slow
def test_sigterm_finishes_the_running_job_then_exits(
    app: Flask, make_plan: Any, sqlite_uri: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    worker = start_worker(worker_procs, sqlite_uri, redis_url, PLAN_REGEN_BUILTIN_DELAY="2")
    plan_id = make_plan()
    client = app.test_client()
    generation_id = regenerate(client, plan_id)["generationId"]
    wait_for_status(app, [generation_id], {"processing"})

    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    doc = status_of(client, plan_id, generation_id)
    assert (doc["status"], doc["attempts"]) == ("succeeded", 1)
    assert_whole_plan(app, plan_id, doc["result"])


def test_sweep_requeues_pending_rows_whose_job_is_gone(app: Flask, make_plan: Any) -> None:
    plan_id = make_plan()
    client = app.test_client()
    generation_id = regenerate(client, plan_id)["generationId"]
    with app.app_context():
        state = get_state()
        queue.delete_job(state.redis, generation_id)
        assert sweep(state) == {"released": 0, "requeued": 0}  # too young to be lost
        later = utcnow() + timedelta(minutes=5)
        assert sweep(state, now=later) == {"released": 0, "requeued": 1}
        assert sweep(state, now=later) == {"released": 0, "requeued": 0}  # its job is queued
    run_jobs(app)
    assert status_of(client, plan_id, generation_id)["status"] == "succeeded"


def test_one_worker_of_a_fleet_sweeps_per_interval(app: Flask, make_plan: Any) -> None:
    generation_id = regenerate(app.test_client(), make_plan())["generationId"]
    with app.app_context():
        state = get_state()
        assert sweep_if_due(state, "worker-1") == {"released": 0, "requeued": 0}
        queue.delete_job(state.redis, generation_id)  # now there is something to find
        assert sweep_if_due(state, "worker-2") is None  # worker-1 holds the sweep's lease
        assert state.redis.get("plan_regen:sweep_lease") == b"worker-1"
        state.redis.delete("plan_regen:sweep_lease")  # the interval is over
        swept = sweep_if_due(state, "worker-2")
        assert swept == {"released": 0, "requeued": 0}  # the row is too young to be lost


def test_concurrent_sweeps_requeue_a_row_once(app: Flask, make_plan: Any) -> None:
    generation_id = regenerate(app.test_client(), make_plan())["generationId"]
    with app.app_context():
        state = get_state()
        queue.delete_job(state.redis, generation_id)
        later = utcnow() + timedelta(minutes=5)
        # Another worker's sweep got there first and holds the row's requeue lock.
        state.redis.set(f"plan_regen:requeue:{generation_id}:0", 1)
        assert sweep(state, now=later) == {"released": 0, "requeued": 0}
        state.redis.delete(f"plan_regen:requeue:{generation_id}:0")
        assert sweep(state, now=later) == {"released": 0, "requeued": 1}
        assert queue.rq_queue(state.redis, "plan_regen_low").job_ids.count(generation_id) == 1


def left_processing(
    app: Flask, make_plan: Any, attempts: int, started_ago: timedelta
) -> tuple[str, str]:
    """A regeneration that an attempt claimed ``started_ago``, with no lease: (plan, id)."""
    plan_id = make_plan()
    generation_id = regenerate(app.test_client(), plan_id)["generationId"]
    with app.app_context():
        row = db.session.get(Regeneration, generation_id)
        assert row is not None
        row.status, row.attempts = "processing", attempts
        row.started_at = utcnow() - started_ago
        db.session.commit()
    return plan_id, generation_id


def test_sweep_releases_an_attempt_only_once_its_lease_has_lapsed(
    app: Flask, make_plan: Any
) -> None:
    plan_id, generation_id = left_processing(app, make_plan, 1, timedelta(minutes=1))
    client = app.test_client()
    with app.app_context():
        state = get_state()
        lease = state.key("lease", generation_id)
        state.redis.set(lease, "1:x", ex=60)
        assert sweep(state) == {"released": 0, "requeued": 0}  # alive
        state.redis.delete(lease)
        assert sweep(state) == {"released": 0, "requeued": 0}  # missing once: not yet
        missing_since = state.key("lease_missing", generation_id)
        state.redis.set(missing_since, repr(time.time() - 60))  # ... and long before
        assert sweep(state) == {"released": 1, "requeued": 0}
    doc = status_of(client, plan_id, generation_id)
    assert (doc["status"], doc["attempts"]) == ("pending", 1)
    assert [a["outcome"] for a in doc["attemptLog"]] == ["failed"]
    assert run_jobs(app) == 1  # the released attempt's job was queued again
    assert status_of(client, plan_id, generation_id)["status"] == "succeeded"


def test_a_delivery_takes_over_a_row_left_processing_by_a_dead_attempt(
    app: Flask, make_plan: Any
) -> None:
    # An attempt claimed the row, then died with its database connection: no lease.
    plan_id, generation_id = left_processing(app, make_plan, 1, timedelta(minutes=1))
    client = app.test_client()
    assert run_jobs(app) == 1
    doc = status_of(client, plan_id, generation_id)
    assert (doc["status"], doc["attempts"]) == ("succeeded", 2)
    assert [a["outcome"] for a in doc["attemptLog"]] == ["failed", "succeeded"]


def test_sweep_fails_a_lost_row_without_attempts_left(app: Flask, make_plan: Any) -> None:
    plan_id, generation_id = left_processing(app, make_plan, 3, timedelta(hours=1))
    client = app.test_client()
    result = app.test_cli_runner().invoke(args=["plan-regen", "sweep"])
    assert "Released 1 lost attempts" in result.output
    doc = status_of(client, plan_id, generation_id)
    assert (doc["status"], doc["failureClass"], doc["attempts"]) == ("failed", "provider_error", 3)
    assert run_jobs(app) == 1 and status_of(client, plan_id, generation_id)["status"] == "failed"


@pytest.mark.slow
def test_jobs_lost_with_redis_data_are_requeued_within_60s(
    app: Flask,
    make_plan: Any,
    sqlite_uri: str,
    redis_url: str,
    redis_conn: Any,
    worker_procs: WorkerProcs,
) -> None:
    start_worker(worker_procs, sqlite_uri, redis_url, PLAN_REGEN_BUILTIN_DELAY="2")
    client = app.test_client()
    ids = [regenerate(client, make_plan())["generationId"] for _ in range(3)]
    wait_for_status(app, ids[:1], {"processing"})  # the others wait in the queue
    redis_conn.flushall()  # Redis lost its data: queued jobs, leases, everything
    lost = time.monotonic()

    assert wait_for_status(app, ids, timeout=60) == dict.fromkeys(ids, "succeeded")
    print(
        f"\nRedis data lost, 2 jobs queued: all 3 succeeded {time.monotonic() - lost:.1f} s later"
    )


@pytest.mark.slow
def test_retries_go_on_when_the_worker_holding_the_scheduler_is_killed(
    app: Flask, make_plan: Any, sqlite_uri: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    failing = {"PLAN_REGEN_BUILTIN_FAILURE": "provider_error"}
    holder = start_worker(worker_procs, sqlite_uri, redis_url, **failing)
    worker_procs.wait_for_log(holder, "cquired scheduler lock")  # the first worker has it
    start_worker(worker_procs, sqlite_uri, redis_url, **failing)
    os.killpg(holder.pid, signal.SIGKILL)  # the worker and its scheduler process
    killed = time.monotonic()
    holder.wait()
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]

    def retried() -> bool:
        return int(status_of(client, plan_id, generation_id)["attempts"]) >= 2

    # The dead scheduler's lock expires after 61 s; the survivor takes it over then.
    wait_until(retried, 120, "the delayed retry")
    print(f"\nscheduler holder killed: a delayed retry ran {time.monotonic() - killed:.1f} s later")


@pytest.mark.slow
def test_a_killed_worker_restarts_under_its_own_name(
    app: Flask, make_plan: Any, sqlite_uri: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    env = worker_env(sqlite_uri, redis_url)
    first = worker_procs.spawn(["flask", "plan-regen", "worker", "--name", "web-1"], env)
    worker_procs.wait_for_log(first, "Listening on")
    os.killpg(first.pid, signal.SIGKILL)  # as systemd's Restart=always would find it
    first.wait()
    killed = time.monotonic()
    second = worker_procs.spawn(["flask", "plan-regen", "worker", "--name", "web-1"], env)
    worker_procs.wait_for_log(second, "Listening on", timeout=90)
    print(
        f"\nkilled worker restarted under its name: serving {time.monotonic() - killed:.1f} s later"
    )
    assert second.poll() is None
    assert "taking over the record of a dead worker" in worker_procs.log(second)
    plan_id = make_plan()
    generation_id = regenerate(app.test_client(), plan_id)["generationId"]
    assert wait_for_status(app, [generation_id]) == {generation_id: "succeeded"}


@pytest.mark.slow
def test_a_job_killed_between_dequeue_and_claim_runs_again_within_60s(
    pg_app: Flask, postgres_url: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    plan_id = plan_factory(pg_app)()
    client = pg_app.test_client()
    generation_id = regenerate(client, plan_id)["generationId"]
    env = worker_env(postgres_url, redis_url)
    # The test holds the row: the first worker's work horse, which RQ has started the job
    # in, blocks at its claim. Killed there, the job is RQ's "started" and the row pending.
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as holder:
            holder.execute(
                select(Regeneration.id).where(Regeneration.id == generation_id).with_for_update()
            )
            first = worker_procs.spawn(["flask", "plan-regen", "worker"], env)
            horse = work_horse_of(first)
            with pg_app.app_context():
                redis = get_state().redis
                wait_until(
                    lambda: queue.live_job_ids(redis, rq_queue_names(pg_app.config))[1],
                    20,
                    "RQ starting the job",
                )
            # The survivor: idle, and nobody runs `sweep`.
            survivor = worker_procs.spawn(["flask", "plan-regen", "worker"], env)
            worker_procs.wait_for_log(survivor, "Listening on")
            os.killpg(first.pid, signal.SIGKILL)  # the worker and its scheduler
            os.kill(horse, signal.SIGKILL)  # the work horse leads a process group of its own
            killed = time.monotonic()
            first.wait()
            holder.rollback()
    finally:
        engine.dispose()
    assert statuses(pg_app, [generation_id]) == {generation_id: "pending"}
    assert wait_for_status(pg_app, [generation_id], timeout=90) == {generation_id: "succeeded"}
    recovered = time.monotonic() - killed
    doc = status_of(client, plan_id, generation_id)
    print(f"\nworker killed between dequeue and claim: succeeded {recovered:.1f} s later, lost 0")
    assert recovered < 60
    assert doc["attempts"] == 1  # the lost delivery never counted as an attempt


def test_a_job_whose_worker_died_right_after_taking_it_is_queued_again(
    app: Flask, make_plan: Any
) -> None:
    """Killed between RQ's dequeue (a move into the queue's intermediate list) and the
    job's start: in no queue and no registry, its hash still says queued."""
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    after_grace = utcnow() + lifecycle.PENDING_GRACE + timedelta(seconds=1)
    with app.app_context():
        state = get_state()
        source = queue.rq_queue(state.redis, "plan_regen_low")
        taken = source.intermediate_queue
        assert state.redis.lmove(source.key, taken.key) == generation_id.encode()
        first = sweep(state, now=after_grace)  # first seen there: not yet lost
        # As if it had sat there for a minute (RQ keeps the mark as a timestamp).
        state.redis.set(taken.get_first_seen_key(generation_id), time.time() - 60)
        second = sweep(state, now=after_grace)
        waiting = source.job_ids
        left_behind = taken.get_job_ids()
    print(f"stuck after dequeue: first sweep {first}, a minute later {second}")
    assert (first["requeued"], second["requeued"]) == (0, 1)
    assert (waiting, left_behind) == ([generation_id], [])
    assert run_jobs(app) == 1
    assert status_of(client, plan_id, generation_id)["status"] == "succeeded"


def test_rq_reporting_an_old_execution_abandoned_leaves_the_rerun_alone(
    app: Flask, make_plan: Any
) -> None:
    """RQ's clean-up finds a dead worker's execution a minute or more after the sweep
    queued the job again: its failure callback must not release the attempt that runs
    now (a held lease, or a claim younger than a lease TTL), only a truly lost one."""
    from types import SimpleNamespace

    from rq.exceptions import AbandonedJobError

    from flask_plan_regen.recovery import on_job_failure

    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    job = SimpleNamespace(id=generation_id)

    def report_abandoned() -> str:
        on_job_failure(job, None, AbandonedJobError, AbandonedJobError(), None)
        return str(status_of(client, plan_id, generation_id)["status"])

    with app.app_context():
        state = get_state()
        assert lifecycle.claim(state, generation_id) is not None  # the re-run, just claimed
        db.session.rollback()
        just_claimed = report_abandoned()
        long_ago = utcnow() - timedelta(minutes=5)
        db.session.execute(
            sa_update(Regeneration)
            .where(Regeneration.id == generation_id)
            .values(started_at=long_ago)
        )
        db.session.commit()
        state.redis.set(state.key("lease", generation_id), "1:x", ex=60)
        leased = report_abandoned()
        state.redis.delete(state.key("lease", generation_id))
        lost = report_abandoned()
    print(f"abandoned reported: just claimed -> {just_claimed}, leased -> {leased}, lost -> {lost}")
    assert (just_claimed, leased, lost) == ("processing", "processing", "pending")
