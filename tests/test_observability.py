"""Structured logs carrying the generation id, and the optional Prometheus metrics."""

from __future__ import annotations

import io
import json
import logging
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ALICE, regenerate, run_jobs, wait_for_status, wait_until, worker_env
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from servers import WorkerProcs, free_port

from flask_plan_regen.logs import ContextFilter, JsonFormatter


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Everything logged at INFO and above, as JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("flask_plan_regen")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(previous)


def lines_about(text: str, generation_id: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [r for r in records if r.get("generation_id") == generation_id]


def test_generation_id_is_on_log_lines_from_request_to_job(
    app: Flask, make_plan: Callable[..., str], json_log: io.StringIO
) -> None:
    plan_id = make_plan()
    generation_id = regenerate(app.test_client(), plan_id)["generationId"]
    run_jobs(app)
    records = lines_about(json_log.getvalue(), generation_id)
    queued = [r for r in records if r["logger"] == "flask_plan_regen.lifecycle"]
    assert queued and queued[0]["plan_id"] == plan_id and queued[0]["user_id"] == "alice"
    assert queued[0]["queue"] == "plan_regen_low"
    assert any(
        r["logger"] == "flask_plan_regen.jobs" and "succeeded" in r["message"] for r in records
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_endpoint_is_404_when_off(app: Flask) -> None:
    response = app.test_client().get("/api/v1/metrics")
    assert response.status_code == 404
    assert response.json["code"] == "NOT_FOUND"


@pytest.mark.parametrize("app_config", [{"PLAN_REGEN_METRICS": True}])
def test_web_metrics_count_responses_and_enqueues(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    client = app.test_client()
    enqueued = ("plan_regen_enqueued_total", (("queue", "plan_regen_low"),))
    accepted = ("plan_regen_http_responses_total", (("endpoint", "regenerate"), ("status", "202")))
    before = samples(client.get("/api/v1/metrics").get_data(as_text=True))
    plan_id = make_plan()
    regenerate(client, plan_id)  # 202
    assert (
        client.post(f"/api/v1/plans/{plan_id}/regenerate", json={}, headers=ALICE).status_code
        == 409
    )
    after = samples(client.get("/api/v1/metrics").get_data(as_text=True))
    assert after[enqueued] - before.get(enqueued, 0) == 1
    assert after[accepted] - before.get(accepted, 0) == 1
    conflict = ("plan_regen_http_responses_total", (("endpoint", "regenerate"), ("status", "409")))
    assert after[conflict] - before.get(conflict, 0) == 1


@pytest.mark.slow
def test_forking_worker_serves_job_metrics_and_logs_json(
    app: Flask,
    make_plan: Callable[..., str],
    sqlite_uri: str,
    redis_url: str,
    tmp_path: Path,
    worker_procs: WorkerProcs,
) -> None:
    client = app.test_client()
    ids = [regenerate(client, make_plan())["generationId"] for _ in range(3)]
    port = free_port()
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    env = worker_env(sqlite_uri, redis_url, PLAN_REGEN_METRICS="true")
    env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
    worker = worker_procs.spawn(
        ["flask", "plan-regen", "worker", "--log-format", "json", "--metrics-port", str(port)],
        env,
    )
    assert wait_for_status(app, ids) == dict.fromkeys(ids, "succeeded")

    # Three work horses, one file: the counts add up across them. A horse records its
    # metrics just after committing the outcome, so the last one may still be writing.
    outcome = ("plan_regen_job_outcomes_total", (("failure_class", ""), ("outcome", "succeeded")))

    def all_three_recorded() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        metrics = samples(scraped.decode())
        return metrics if metrics.get(outcome) == 3 else None

    metrics = wait_until(all_three_recorded, 10, "three job outcomes in the worker's metrics")
    assert metrics[outcome] == 3
    latency = ("plan_regen_provider_latency_seconds_count", (("provider", "builtin"),))
    assert metrics[latency] == 3
    wait = ("plan_regen_queue_wait_seconds_count", (("queue", "plan_regen_low"),))
    assert metrics[wait] == 3
    assert len(list(multiproc_dir.iterdir())) <= 2  # counter + histogram files of one worker

    for generation_id in ids:
        assert lines_about(worker_procs.log(worker), generation_id)


@pytest.mark.parametrize("app_config", [{"PLAN_REGEN_METRICS": True}])
def test_forking_worker_metrics_need_the_multiprocess_directory(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    args = ["plan-regen", "worker", "--burst", "--metrics-port", str(free_port())]
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 2
    assert "needs PROMETHEUS_MULTIPROC_DIR" in result.output


def test_worker_metrics_need_metrics_switched_on(app: Flask) -> None:
    args = ["plan-regen", "worker", "--burst", "--metrics-port", str(free_port())]
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 2
    assert "PLAN_REGEN_METRICS" in result.output
