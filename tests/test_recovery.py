"""Crash recovery and shutdown with real worker processes, and the sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import ALICE, run_jobs, worker_env
from flask import Flask
from rq.job import Job
from rq.serializers import JSONSerializer
from servers import WorkerProcs

from examples.host_app import db
from flask_plan_regen import Regeneration, get_state
from flask_plan_regen.models import utcnow
from flask_plan_regen.recovery import sweep


def regenerate(app: Flask, plan_id: str) -> tuple[str, str]:
    answer = app.test_client().post(f"/api/v1/plans/{plan_id}/regenerate", headers=ALICE)
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["generationId"], answer.headers["Location"]


def document(app: Flask, location: str) -> dict[str, Any]:
    doc: dict[str, Any] = app.test_client().get(location, headers=ALICE).get_json()
    return doc


def wait_status(app: Flask, location: str, wanted: set[str], timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (doc := document(app, location))["status"] not in wanted:
        assert time.monotonic() < deadline, doc
        time.sleep(0.05)
    return doc


def children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(child) for child in text.split()}


def idle_children_of(worker_procs: WorkerProcs, worker: subprocess.Popen[bytes]) -> set[int]:
    """The worker's child processes before it takes a job (its scheduler)."""
    worker_procs.wait_for_log(worker, "Listening on")
    time.sleep(1)  # the scheduler process starts just after
    return children(worker.pid)


def assert_whole_plan(app: Flask, plan_id: str, summary: dict[str, Any]) -> None:
    plan = app.test_client().get(f"/api/v1/plans/{plan_id}", headers=ALICE).get_json()
    assert len(plan["modules"]) == summary["modules"]
    assert sum(len(m["tasks"]) for m in plan["modules"]) == summary["tasks"]


@pytest.fixture
def plan_with_content(app: Flask, make_plan: Any) -> str:
    plan_id: str = make_plan()
    regenerate(app, plan_id)
    run_jobs(app)
    return plan_id


@pytest.mark.slow
def test_killed_work_horse_is_retried_at_once(
    app: Flask, plan_with_content: str, sqlite_uri: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    env = worker_env(sqlite_uri, redis_url, PLAN_REGEN_BUILTIN_DELAY="2")
    worker = worker_procs.spawn(["flask", "plan-regen", "worker"], env)
    idle_children = idle_children_of(worker_procs, worker)
    _, location = regenerate(app, plan_with_content)
    wait_status(app, location, {"processing"})
    (horse,) = children(worker.pid) - idle_children
    os.kill(horse, signal.SIGKILL)

    doc = wait_status(app, location, {"succeeded", "failed"})
    assert (doc["status"], doc["attempts"]) == ("succeeded", 2)
    (lost,) = doc["errorHistory"]
    assert (lost["attempt"], lost["class"]) == (1, "provider_error")
    assert "worker" in lost["error"]
    assert_whole_plan(app, plan_with_content, doc["result"])


@pytest.mark.slow
def test_killed_worker_is_recovered_by_the_next_worker(
    app: Flask, plan_with_content: str, sqlite_uri: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    config = {
        "PLAN_REGEN_BUILTIN_DELAY": "1.5",
        "PLAN_REGEN_PROVIDER_TIMEOUT": "1",
        "PLAN_REGEN_JOB_TIMEOUT": "2",
    }
    app.config.update(PLAN_REGEN_PROVIDER_TIMEOUT=1, PLAN_REGEN_JOB_TIMEOUT=2)
    env = worker_env(sqlite_uri, redis_url, **config)
    first = worker_procs.spawn(["flask", "plan-regen", "worker"], env)
    idle_children = idle_children_of(worker_procs, first)
    _, location = regenerate(app, plan_with_content)
    wait_status(app, location, {"processing"})
    (horse,) = children(first.pid) - idle_children
    os.killpg(first.pid, signal.SIGKILL)  # the worker and its scheduler
    os.kill(horse, signal.SIGKILL)  # the work horse has a process group of its own
    first.wait()
    time.sleep(0.3)
    assert document(app, location)["status"] == "processing"

    time.sleep(2)  # longer than the job timeout: the next worker's start-up sweep takes it
    worker_procs.spawn(["flask", "plan-regen", "worker"], env)
    doc = wait_status(app, location, {"succeeded", "failed"})
    assert (doc["status"], doc["attempts"]) == ("succeeded", 2)
    assert [e["class"] for e in doc["errorHistory"]] == ["provider_error"]
    assert_whole_plan(app, plan_with_content, doc["result"])


@pytest.mark.slow
def test_sigterm_finishes_the_running_job_then_exits(
    app: Flask, make_plan: Any, sqlite_uri: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    env = worker_env(sqlite_uri, redis_url, PLAN_REGEN_BUILTIN_DELAY="2")
    worker = worker_procs.spawn(["flask", "plan-regen", "worker"], env)
    plan_id = make_plan()
    _, location = regenerate(app, plan_id)
    wait_status(app, location, {"processing"})

    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    doc = document(app, location)
    assert (doc["status"], doc["attempts"]) == ("succeeded", 1)
    assert_whole_plan(app, plan_id, doc["result"])


def test_sweep_requeues_pending_rows_whose_job_is_gone(app: Flask, make_plan: Any) -> None:
    generation_id, location = regenerate(app, make_plan())
    with app.app_context():
        state = get_state()
        Job.fetch(generation_id, connection=state.redis, serializer=JSONSerializer).delete()
        assert sweep(state) == {"released": 0, "requeued": 0}  # too young to be lost
        later = utcnow() + timedelta(minutes=5)
        assert sweep(state, now=later) == {"released": 0, "requeued": 1}
        assert sweep(state, now=later) == {"released": 0, "requeued": 0}  # its job is queued
    run_jobs(app)
    assert document(app, location)["status"] == "succeeded"


def test_concurrent_sweeps_requeue_a_row_once(app: Flask, make_plan: Any) -> None:
    generation_id, _ = regenerate(app, make_plan())
    with app.app_context():
        state = get_state()
        Job.fetch(generation_id, connection=state.redis, serializer=JSONSerializer).delete()
        later = utcnow() + timedelta(minutes=5)
        # Another worker's sweep got there first and holds the row's requeue lock.
        state.redis.set(f"plan_regen:requeue:{generation_id}:0", 1)
        assert sweep(state, now=later) == {"released": 0, "requeued": 0}
        state.redis.delete(f"plan_regen:requeue:{generation_id}:0")
        assert sweep(state, now=later) == {"released": 0, "requeued": 1}
        queue = state.queue("plan_regen_low")
        assert queue.job_ids.count(generation_id) == 1


def test_sweep_fails_a_stuck_row_without_attempts_left(app: Flask, make_plan: Any) -> None:
    generation_id, location = regenerate(app, make_plan())
    with app.app_context():
        row = db.session.get(Regeneration, generation_id)
        assert row is not None
        row.status, row.attempts = "processing", 3
        row.started_at = utcnow() - timedelta(hours=1)
        db.session.commit()
    result = app.test_cli_runner().invoke(args=["plan-regen", "sweep"])
    assert "Released 1 lost attempts" in result.output
    doc = document(app, location)
    assert (doc["status"], doc["failureClass"], doc["attempts"]) == ("failed", "provider_error", 3)
    assert run_jobs(app) == 1 and document(app, location)["status"] == "failed"
