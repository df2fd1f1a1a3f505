"""Retry policy and timeouts: backoff numbers, and retries through a real worker."""

from __future__ import annotations

import random
from typing import Any

import pytest
from conftest import regenerate, status_of, wait_for_status, worker_env
from flask import Flask
from openai_server import FakeOpenAI
from servers import WorkerProcs

from flask_plan_regen.config import DEFAULTS, job_timeout, validate
from flask_plan_regen.errors import ConfigurationError, ProviderError, ProviderRateLimited
from flask_plan_regen.retries import backoff_seconds, retry_delay


@pytest.mark.parametrize(("attempt", "nominal"), [(1, 2), (2, 4), (3, 8), (8, 256), (9, 300)])
def test_backoff_is_capped_exponential_with_25_percent_jitter(attempt: int, nominal: int) -> None:
    rng = random.Random(7)
    delays = [backoff_seconds(attempt, DEFAULTS, rng) for _ in range(500)]
    assert nominal * 0.75 <= min(delays) < nominal * 0.8
    assert nominal * 1.2 < max(delays) <= nominal * 1.25


@pytest.mark.parametrize(
    ("base", "cap", "retry_after", "expected"),
    [
        (0, 300, 30.0, {31}),  # Retry-After 30 whatever the base, + RQ's whole second
        (0, 300, 2.5, {4}),  # up to a whole second, then the one RQ may round away
        (0, 6, 30.0, {7}),  # capped by the backoff cap
        (8, 300, 1.0, {7, 8, 9, 10, 11}),  # a longer backoff wins
        (8, 300, None, {6, 7, 8, 9, 10}),  # no Retry-After: the backoff, rounded
    ],
)
def test_the_retry_delay_honours_retry_after_up_to_the_cap(
    base: float, cap: float, retry_after: float | None, expected: set[int]
) -> None:
    config = {
        **DEFAULTS,
        "PLAN_REGEN_RETRY_BACKOFF_BASE": base,
        "PLAN_REGEN_RETRY_BACKOFF_CAP": cap,
    }
    error = ProviderRateLimited("429", retry_after=retry_after)
    delays = {retry_delay(error, 1, config) for _ in range(200)}
    assert delays <= expected
    assert retry_delay(ProviderError("500"), 1, {**config, "PLAN_REGEN_RETRY_BACKOFF_BASE": 0}) == 0


def test_job_timeout_is_derived_from_the_provider_timeout_and_its_extension() -> None:
    config = {**DEFAULTS, "PLAN_REGEN_PROVIDER_TIMEOUT": 120.0}
    assert job_timeout(config) == 240  # 120 s, extended once by 60 s, + a 60 s margin
    assert job_timeout({**config, "PLAN_REGEN_PROVIDER_TIMEOUT": 7.5}) == 128
    assert job_timeout({**config, "PLAN_REGEN_PROVIDER_TIMEOUT_EXTENSION": 0}) == 180
    for too_short in (120, 180):  # not above the overall limit and its extension
        with pytest.raises(ConfigurationError, match="PLAN_REGEN_JOB_TIMEOUT"):
            validate({**config, "PLAN_REGEN_JOB_TIMEOUT": too_short})
    validate({**config, "PLAN_REGEN_JOB_TIMEOUT": 181})


@pytest.mark.parametrize(
    "app_config",
    [{"PLAN_REGEN_PROVIDER_TIMEOUT": 30, "PLAN_REGEN_PROVIDER_TIMEOUT_EXTENSION": 0}],
)
def test_queued_jobs_carry_the_derived_timeout(app: Flask, make_plan: Any) -> None:
    from flask_plan_regen import get_state, queue

    plan_id = make_plan()
    answer = regenerate(app.test_client(), plan_id)
    with app.app_context():
        job = queue.rq_queue(get_state().redis, answer["queue"]).fetch_job(answer["generationId"])
        assert job is not None and job.timeout == 90


@pytest.mark.slow
def test_a_real_worker_retries_until_the_provider_answers(
    app: Flask,
    make_plan: Any,
    sqlite_uri: str,
    redis_url: str,
    worker_procs: WorkerProcs,
    openai_server: FakeOpenAI,
) -> None:
    openai_server.queue("status_500", "status_429", "good")
    env = worker_env(
        sqlite_uri,
        redis_url,
        PLAN_REGEN_PROVIDER='"flask_plan_regen.openai_provider:OpenAIProvider"',
        PLAN_REGEN_PROVIDER_BASE_URL=f'"{openai_server.base_url}"',
        PLAN_REGEN_PROVIDER_API_KEY='"sk-test"',
        PLAN_REGEN_RETRY_BACKOFF_BASE="0.6",  # delays round to 1 s: RQ's scheduler runs them
    )
    worker_procs.spawn(["flask", "plan-regen", "worker"], env)
    plan_id = make_plan()
    client = app.test_client()
    generation_id = regenerate(client, plan_id)["generationId"]
    wait_for_status(app, [generation_id], timeout=30)  # neither pending nor processing

    doc = status_of(client, plan_id, generation_id)
    assert (doc["status"], doc["attempts"]) == ("succeeded", 3)
    assert [e["class"] for e in doc["errorHistory"]] == ["provider_error", "rate_limit"]
    assert len(openai_server.requests) == 3
