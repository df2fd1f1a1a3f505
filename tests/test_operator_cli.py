"""``flask plan-regen info|requeue-failed|worker`` against the real Redis and database."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from conftest import build_app, regenerate, run_jobs, worker_env
from flask import Flask
from servers import WorkerProcs, free_port
from sqlalchemy import select

from examples.host_app import db
from flask_plan_regen import Regeneration
from flask_plan_regen.config import job_timeout
from flask_plan_regen.models import utcnow


@pytest.fixture
def app_config() -> dict[str, Any]:
    """One attempt per regeneration: a forced failure ends it ``failed`` at once."""
    return {"PLAN_REGEN_MAX_ATTEMPTS": 1}


def rows(app: Flask, plan_id: str) -> list[Regeneration]:
    with app.app_context():
        query = select(Regeneration).where(Regeneration.plan_id == plan_id)
        return list(db.session.scalars(query.order_by(Regeneration.created_at)))


def fail_regeneration(app: Flask, plan_id: str, failure: str) -> str:
    """One regeneration that fails with ``failure``: the switch is on only while it runs."""
    app.config["PLAN_REGEN_BUILTIN_FAILURE"] = failure
    generation_id: str = regenerate(app.test_client(), plan_id)["generationId"]
    run_jobs(app)
    app.config["PLAN_REGEN_BUILTIN_FAILURE"] = None
    return generation_id


def test_info_reports_queues_statuses_and_stuck_rows(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    client = app.test_client()
    done, queued, stuck = make_plan(), make_plan(), make_plan()
    regenerate(client, done)
    run_jobs(app)
    regenerate(client, queued)
    stuck_id = regenerate(client, stuck)["generationId"]
    with app.app_context():
        row = db.session.get(Regeneration, stuck_id)
        assert row is not None
        row.status = "processing"
        row.started_at = utcnow() - timedelta(seconds=job_timeout(app.config) + 5)
        db.session.commit()

    result = app.test_cli_runner().invoke(args=["plan-regen", "info", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["regenerations"] == {"succeeded": 1, "pending": 1, "processing": 1}
    assert [s["generationId"] for s in data["stuck"]] == [stuck_id]
    by_queue = {q["queue"]: q for q in data["queues"]}
    assert list(by_queue) == ["plan_regen_high", "plan_regen_default", "plan_regen_low"]
    assert by_queue["plan_regen_low"]["queued"] == 2  # free tier: both still queued

    text = app.test_cli_runner().invoke(args=["plan-regen", "info"]).output
    assert "stuck in processing past the job timeout: 1" in text
    assert stuck_id in text


def test_requeue_failed_queues_each_plans_latest_failure_once(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    timed_out, invalid, superseded = make_plan(), make_plan(), make_plan()
    fail_regeneration(app, timed_out, "timeout")
    fail_regeneration(app, invalid, "validation")
    fail_regeneration(app, superseded, "timeout")
    # A later regeneration: its old failure stays as it is.
    regenerate(app.test_client(), superseded)
    runner = app.test_cli_runner()

    dry = runner.invoke(args=["plan-regen", "requeue-failed", "--class", "timeout", "--dry-run"])
    assert "1 would be requeued" in dry.output
    assert len(rows(app, timed_out)) == 1

    result = runner.invoke(args=["plan-regen", "requeue-failed", "--class", "timeout"])
    assert result.exit_code == 0, result.output
    assert "requeued 1, skipped 0" in result.output
    assert [r.status for r in rows(app, invalid)] == ["failed"]
    run_jobs(app)
    assert [r.status for r in rows(app, timed_out)] == ["failed", "succeeded"]

    again = runner.invoke(args=["plan-regen", "requeue-failed"])
    assert "requeued 1, skipped 0" in again.output  # only the validation failure is left
    run_jobs(app)
    assert [r.status for r in rows(app, invalid)] == ["failed", "succeeded"]
    assert [r.status for r in rows(app, superseded)] == ["failed", "succeeded"]


def test_requeue_failed_skips_a_plan_with_an_active_regeneration(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    plan_id = make_plan()
    failed_id = fail_regeneration(app, plan_id, "provider_error")
    with app.app_context():  # an active row created behind the command's back
        db.session.add(
            Regeneration(
                plan_id=plan_id, user_id="alice", tier="free", priority=1, queue="plan_regen_low"
            )
        )
        db.session.commit()
        db.session.get(Regeneration, failed_id).created_at = utcnow() + timedelta(hours=1)  # type: ignore[union-attr]
        db.session.commit()
    result = app.test_cli_runner().invoke(args=["plan-regen", "requeue-failed"])
    assert "requeued 0, skipped 1" in result.output
    assert sorted(r.status for r in rows(app, plan_id)) == ["failed", "pending"]


def test_requeue_failed_with_redis_down_is_a_clean_error(
    app: Flask, make_plan: Callable[..., str], sqlite_uri: str
) -> None:
    plan_id = make_plan()
    fail_regeneration(app, plan_id, "timeout")
    dead_redis = build_app(sqlite_uri, f"redis://127.0.0.1:{free_port()}/0")
    with dead_redis.app_context():  # else pytest-flask's context of `app` is the current app
        result = dead_redis.test_cli_runner().invoke(args=["plan-regen", "requeue-failed"])
    assert result.exit_code == 1
    assert "Error: Redis at redis://127.0.0.1:" in result.output  # names it (cli_errors.py)
    assert "is unreachable" in result.output
    assert "Traceback" not in result.output and result.exception is not None
    assert isinstance(result.exception, SystemExit)
    assert [r.status for r in rows(app, plan_id)] == ["failed"]  # nothing half-queued


@pytest.mark.slow
def test_worker_passes_rq_options_through(
    app: Flask, make_plan: Callable[..., str], sqlite_uri: str, redis_url: str,
    worker_procs: WorkerProcs,
) -> None:  # fmt: skip
    generation_id = regenerate(app.test_client(), make_plan())["generationId"]
    worker = worker_procs.spawn(
        [
            "flask", "plan-regen", "worker",
            "--max-idle-time", "1",
            "--dequeue-strategy", "round_robin",
            "--maintenance-interval", "30",
            "--worker-ttl", "60",
            "--job-monitoring-interval", "5",
        ],
        worker_env(sqlite_uri, redis_url),
    )  # fmt: skip
    # --max-idle-time reached RQ: the worker drains the queue, idles 1 s and exits by itself.
    assert worker.wait(30) == 0, worker_procs.log_tail(worker)
    with app.app_context():
        row = db.session.get(Regeneration, generation_id)
        assert row is not None and row.status == "succeeded"
