"""Real worker processes: plain ``rq worker`` and ``flask plan-regen worker``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import ALICE, worker_env
from flask import Flask
from flask.testing import FlaskClient
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
