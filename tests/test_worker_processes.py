"""Real worker processes: plain ``rq worker`` and ``flask plan-regen worker``."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import ALICE, NO_LIMITS, statuses, wait_until, worker_env
from flask import Flask
from flask.testing import FlaskClient
from rq import Worker
from servers import WorkerProcs

from flask_plan_regen import Regeneration, get_state

QUEUES = ["plan_regen_high", "plan_regen_default", "plan_regen_low"]


def regenerate(client: FlaskClient, plan_id: str, **overrides: Any) -> dict[str, Any]:
    response = client.post(
        f"/api/v1/plans/{plan_id}/regenerate", json={"overrides": overrides}, headers=ALICE
    )
    assert response.status_code == 202, response.json
    return dict(response.json)


def wait_for_status(
    client: FlaskClient, plan_id: str, generation_id: str, timeout: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(
            f"/api/v1/plans/{plan_id}/regenerations/{generation_id}", headers=ALICE
        ).json
        if body["status"] in ("succeeded", "failed", "canceled"):
            return dict(body)
        time.sleep(0.1)
    raise AssertionError(f"regeneration {generation_id} still {body['status']}")


@pytest.mark.slow
def test_plain_rq_worker_runs_jobs_in_priority_order(
    app: Flask,
    client: FlaskClient,
    make_plan: Callable[..., str],
    worker_procs: WorkerProcs,
    sqlite_uri: str,
    redis_url: str,
) -> None:
    low = regenerate(client, make_plan(topic="Pottery"))
    app.config["PLAN_REGEN_DEFAULT_TIER"] = "pro"
    high = regenerate(client, make_plan(topic="Interview prep"))
    assert (low["queue"], high["queue"]) == ("plan_regen_low", "plan_regen_high")
    worker = worker_procs.spawn(
        [
            "rq",
            "worker",
            "--burst",
            "-S",
            "rq.serializers.JSONSerializer",
            "--url",
            redis_url,
            *QUEUES,
        ],
        env=worker_env(sqlite_uri, redis_url),
    )
    assert worker.wait(60) == 0, worker_procs.log_tail(worker)
    with app.app_context():
        session = get_state().db.session
        rows = {
            gid: session.get(Regeneration, gid)
            for gid in (low["generationId"], high["generationId"])
        }
        assert all(row is not None and row.status == "succeeded" for row in rows.values())
        started = {gid: row.started_at for gid, row in rows.items() if row is not None}
    assert started[high["generationId"]] < started[low["generationId"]]


@pytest.mark.slow
def test_flask_plan_regen_worker_serves_requests_until_stopped(
    app: Flask,
    client: FlaskClient,
    make_plan: Callable[..., str],
    worker_procs: WorkerProcs,
    sqlite_uri: str,
    redis_url: str,
) -> None:
    worker = worker_procs.spawn(
        ["flask", "plan-regen", "worker"], env=worker_env(sqlite_uri, redis_url)
    )
    worker_procs.wait_for_log(worker, "plan_regen_high, plan_regen_default, plan_regen_low")
    plan_id = make_plan(topic="Terraform")
    for hours in (3, 6):
        accepted = regenerate(client, plan_id, weeklyHours=hours)
        status = wait_for_status(client, plan_id, accepted["generationId"])
        assert status["status"] == "succeeded", status
    plan = client.get(f"/api/v1/plans/{plan_id}", headers=ALICE).json
    assert plan["status"] == "ready"
    assert all("Terraform" in module["title"] for module in plan["modules"])
    assert worker_procs.stop(worker) == 0


def parent_pid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def registered_workers(redis_url: str) -> list[Worker]:
    return Worker.all(connection=redis.Redis.from_url(redis_url))


@pytest.mark.slow
@pytest.mark.parametrize("app_config", [NO_LIMITS])
def test_worker_pool_drains_jobs_in_forked_workers_and_stops_on_sigterm(
    app: Flask,
    client: FlaskClient,
    make_plan: Callable[..., str],
    worker_procs: WorkerProcs,
    sqlite_uri: str,
    redis_url: str,
) -> None:
    env = worker_env(sqlite_uri, redis_url, PLAN_REGEN_BUILTIN_DELAY="0.3")
    pool = worker_procs.spawn(["flask", "plan-regen", "worker", "--workers", "2"], env=env)
    workers = wait_until(
        lambda: len(found := registered_workers(redis_url)) == 2 and found, what="2 workers"
    )
    pids = [worker.pid for worker in workers]
    # Forked by the command's process, which loaded the app once.
    assert [parent_pid(pid) for pid in pids] == [pool.pid, pool.pid]

    ids = [regenerate(client, make_plan(topic="Terraform"))["generationId"] for _ in range(6)]
    wait_until(lambda: set(statuses(app, ids).values()) == {"succeeded"}, what="6 successes")

    def counted() -> dict[str, int] | None:
        # RQ counts a job once it ended it, a moment after its row was committed.
        found = {w.name: w.successful_job_count for w in registered_workers(redis_url)}
        return found if sum(found.values()) == 6 else None

    done = wait_until(counted, 10, "RQ counting the 6 jobs")
    print(f"jobs per worker: {done}")
    assert sum(done.values()) == 6
    assert all(count > 0 for count in done.values()), done

    os.kill(pool.pid, signal.SIGTERM)
    assert pool.wait(30) == 0, worker_procs.log_tail(pool)
    assert registered_workers(redis_url) == []
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


@pytest.mark.slow
@pytest.mark.parametrize("app_config", [NO_LIMITS])
def test_sigterm_lets_the_pools_running_jobs_finish(
    app: Flask,
    client: FlaskClient,
    make_plan: Callable[..., str],
    worker_procs: WorkerProcs,
    sqlite_uri: str,
    redis_url: str,
) -> None:
    env = worker_env(sqlite_uri, redis_url, PLAN_REGEN_BUILTIN_DELAY="2")
    pool = worker_procs.spawn(["flask", "plan-regen", "worker", "--workers", "2"], env=env)
    wait_until(lambda: len(registered_workers(redis_url)) == 2, what="2 workers")
    ids = [regenerate(client, make_plan())["generationId"] for _ in range(2)]
    wait_until(lambda: set(statuses(app, ids).values()) == {"processing"}, what="both running")

    os.kill(pool.pid, signal.SIGTERM)
    assert pool.wait(30) == 0, worker_procs.log_tail(pool)
    final = statuses(app, ids)
    print(f"after a SIGTERM mid-job: {final}")
    assert set(final.values()) == {"succeeded"}
    assert registered_workers(redis_url) == []
