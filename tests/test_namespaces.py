"""Several apps on one Redis: ``PLAN_REGEN_NAMESPACE`` keeps their queues and keys apart."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import build_app, plan_factory, regenerate, run_jobs, wait_for_status, worker_env
from flask import Flask
from servers import WorkerProcs

from flask_plan_regen import get_state, queue
from flask_plan_regen.config import rq_queue_names


def namespaced_app(tmp_path: Path, redis_url: str, namespace: str) -> tuple[Flask, str]:
    uri = f"sqlite:///{tmp_path / namespace}.sqlite"
    return build_app(uri, redis_url, PLAN_REGEN_NAMESPACE=namespace), uri


@pytest.mark.slow
def test_two_apps_sharing_one_redis_each_run_their_own_jobs(
    tmp_path: Path, redis_url: str, redis_conn: Any, worker_procs: WorkerProcs
) -> None:
    apps = {name: namespaced_app(tmp_path, redis_url, name) for name in ("staging", "production")}
    for name, (_, uri) in apps.items():
        env = worker_env(uri, redis_url, PLAN_REGEN_NAMESPACE=name)
        worker_procs.wait_for_log(
            worker_procs.spawn(["flask", "plan-regen", "worker"], env), "Listening on"
        )
    started = time.monotonic()
    accepted = {}
    for name, (app, _) in apps.items():
        make_plan = plan_factory(app)
        answers = [regenerate(app.test_client(), make_plan()) for _ in range(3)]
        assert {answer["queue"] for answer in answers} == {f"{name}_low"}
        accepted[name] = [answer["generationId"] for answer in answers]
    for name, (app, _) in apps.items():
        assert wait_for_status(app, accepted[name], timeout=60) == dict.fromkeys(
            accepted[name], "succeeded"
        )
    print(f"\ntwo namespaces on one Redis: 6 of 6 succeeded in {time.monotonic() - started:.1f} s")
    assert all(
        key.startswith((b"staging", b"production", b"rq:")) for key in redis_conn.scan_iter()
    )


def test_a_job_this_apps_database_does_not_know_fails_visibly(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = str(uuid.uuid4())  # queued by another app on the same Redis and queue names
    with app.app_context():
        redis = get_state().redis
        queue.rq_queue(redis, "plan_regen_low").enqueue_call(
            queue.JOB_FUNCTION, args=(stranger,), job_id=stranger
        )
    with caplog.at_level(logging.ERROR, logger="flask_plan_regen"):
        assert run_jobs(app) == 1
    stats = {
        entry["queue"]: entry for entry in queue.queue_stats(redis, rq_queue_names(app.config))
    }
    assert stats["plan_regen_low"]["failed"] == 1
    assert "PLAN_REGEN_NAMESPACE" in caplog.text and stranger in caplog.text
