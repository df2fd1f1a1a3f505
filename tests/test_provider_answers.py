"""The answers real models and servers give, each through a real ``flask plan-regen worker``
and the official SDK against tests/openai_server.py, which counts the calls it received
and when. One test per row of issue 14's table."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from conftest import ALICE, regenerate, status_of, wait_for_status, worker_env
from flask import Flask
from openai_server import GOOD_PLAN, FakeOpenAI
from rq.job import Job
from rq.serializers import JSONSerializer
from servers import WorkerProcs

from flask_plan_regen import get_state, queue
from flask_plan_regen.config import rq_queue_names

API_KEY = "sk-test-answers-0123456789-secret"

Submit = Callable[..., dict[str, str]]


@pytest.fixture
def app_config(openai_server: FakeOpenAI) -> dict[str, Any]:
    return {
        "PLAN_REGEN_PROVIDER": "flask_plan_regen.openai_provider:OpenAIProvider",
        "PLAN_REGEN_PROVIDER_BASE_URL": openai_server.base_url,
        "PLAN_REGEN_PROVIDER_API_KEY": API_KEY,
        "PLAN_REGEN_PROVIDER_MODEL": "fake-model",
        "PLAN_REGEN_PROVIDER_TIMEOUT": 5.0,
        "PLAN_REGEN_MAX_ATTEMPTS": 3,
        "PLAN_REGEN_RETRY_BACKOFF_BASE": 0,
        "PLAN_REGEN_RATE_LIMIT": "1000/hour",
        "PLAN_REGEN_MONTHLY_QUOTAS": {"free": "unlimited", "starter": 10, "pro": 50},
    }


@pytest.fixture
def start_worker(
    worker_procs: WorkerProcs, sqlite_uri: str, redis_url: str, app_config: dict[str, Any]
) -> Callable[..., subprocess.Popen[bytes]]:
    """Start ``flask plan-regen worker [args]`` with the app's config."""

    def start(*args: str) -> subprocess.Popen[bytes]:
        config = {
            key: value if isinstance(value, str) else json.dumps(value)
            for key, value in app_config.items()
        }
        env = worker_env(sqlite_uri, redis_url, **config)
        return worker_procs.spawn(["flask", "plan-regen", "worker", *args], env)

    return start


@pytest.fixture
def submit(app: Flask, make_plan: Callable[..., str], openai_server: FakeOpenAI) -> Submit:
    """Script the server's answers for a new plan's topic, ask for its regeneration:
    ``submit("Topic", "status_500", "good")`` -> ``{"plan": ..., "generation": ...}``."""

    def submit_one(topic: str, *behaviours: str) -> dict[str, str]:
        openai_server.script(topic, *behaviours)
        plan_id = make_plan(topic=topic)
        answer = regenerate(app.test_client(), plan_id)
        return {"plan": plan_id, "generation": answer["generationId"], "topic": topic}

    return submit_one


def finished(app: Flask, *submitted: dict[str, str], timeout: float = 60.0) -> list[dict[str, Any]]:
    """Wait for the regenerations to end; their status documents."""
    wait_for_status(app, [s["generation"] for s in submitted], timeout=timeout)
    client = app.test_client()
    return [status_of(client, s["plan"], s["generation"]) for s in submitted]


def module_titles(app: Flask, plan_id: str) -> list[str]:
    plan = app.test_client().get(f"/api/v1/plans/{plan_id}", headers=ALICE).get_json()
    return [module["title"] for module in plan["modules"]]


def test_json_in_a_fence_or_between_sentences_is_taken_in_one_call(
    app: Flask, openai_server: FakeOpenAI, submit: Submit, start_worker: Any
) -> None:
    fenced = submit("Fenced answers", "fenced")
    chatty = submit("Chatty answers", "chatty")
    start_worker()

    for document, sent in zip(finished(app, fenced, chatty), (fenced, chatty), strict=True):
        assert (document["status"], document["attempts"]) == ("succeeded", 1)
        assert len(openai_server.calls(sent["topic"])) == 1
        assert module_titles(app, sent["plan"]) == [m["title"] for m in GOOD_PLAN["modules"]]


def test_a_refusal_fails_at_once_with_the_refusal_recorded(
    app: Flask, openai_server: FakeOpenAI, submit: Submit, start_worker: Any
) -> None:
    refused = submit("Refused topic", "refusal", "good")
    start_worker()

    (document,) = finished(app, refused)
    expected = (
        "The model declined to generate this plan: I'm sorry, but I can't help with that "
        "request. It breaks the usage policy."  # one line, the control character gone
    )
    assert (document["status"], document["failureClass"], document["attempts"]) == (
        "failed",
        "refused",
        1,
    )
    assert document["error"] == expected
    (attempt,) = document["attemptLog"]
    assert (attempt["failureClass"], attempt["error"]) == ("refused", expected)
    assert len(openai_server.calls(refused["topic"])) == 1  # not retried


def test_a_truncated_answer_is_never_requested_again(
    app: Flask, openai_server: FakeOpenAI, submit: Submit, start_worker: Any
) -> None:
    truncated = submit("Long-winded topic", "length", "good")
    start_worker()

    (document,) = finished(app, truncated)
    assert (document["status"], document["failureClass"], document["attempts"]) == (
        "failed",
        "truncated",
        1,
    )
    (attempt,) = document["attemptLog"]
    assert attempt["error"] == "The model's answer was cut off at the output limit (8192 tokens)."
    assert len(openai_server.calls(truncated["topic"])) == 1


def test_rejected_requests_are_not_retried_and_the_log_has_the_servers_words(
    app: Flask,
    openai_server: FakeOpenAI,
    submit: Submit,
    start_worker: Any,
    worker_procs: WorkerProcs,
) -> None:
    statuses = (400, 401, 403, 404)
    submitted = [submit(f"Rejected {status}", f"status_{status}", "good") for status in statuses]
    worker = start_worker()

    documents = finished(app, *submitted)
    for status, document, sent in zip(statuses, documents, submitted, strict=True):
        assert (document["status"], document["failureClass"], document["attempts"]) == (
            "failed",
            "provider_rejected",
            1,
        ), status
        assert f"(HTTP {status})" in document["error"]
        assert "fake error" not in document["error"]  # the server's words stay in the log
        assert len(openai_server.calls(sent["topic"])) == 1
    log = worker_procs.log(worker)
    for words in (
        "Unsupported parameter: 'frobnicate'",
        "Incorrect API key provided: ***.",
        "does not have access to model fake-model",
        "The model `fake-model` does not exist",
    ):
        assert words in log
    assert API_KEY not in log


@pytest.mark.slow
def test_retry_after_is_waited_for_up_to_the_backoff_cap(
    app: Flask,
    app_config: dict[str, Any],
    openai_server: FakeOpenAI,
    submit: Submit,
    start_worker: Any,
) -> None:
    app_config["PLAN_REGEN_RETRY_BACKOFF_CAP"] = 6
    polite = submit("Polite server", "status_429@3", "good")
    greedy = submit("Greedy server", "status_429@30", "good")
    start_worker()

    documents = finished(app, polite, greedy)
    assert [d["status"] for d in documents] == ["succeeded", "succeeded"]
    gaps = {}
    for sent in (polite, greedy):
        first, second = openai_server.calls(sent["topic"])
        gaps[sent["topic"]] = second["at"] - first["at"]
    print(
        f"\nbackoff base 0, cap 6: Retry-After 3 -> {gaps['Polite server']:.1f} s, "
        f"Retry-After 30 -> {gaps['Greedy server']:.1f} s"
    )
    assert gaps["Polite server"] >= 3  # not the 0 s backoff
    assert 6 <= gaps["Greedy server"] < 20  # capped: not 30 s


def test_too_many_modules_are_trimmed_and_numeric_strings_read_as_numbers(
    app: Flask, openai_server: FakeOpenAI, submit: Submit, start_worker: Any
) -> None:
    too_many = submit("Thirty modules", "too_many")
    strings = submit("Numbers as strings", "numeric_strings")
    start_worker()

    trimmed, coerced = finished(app, too_many, strings)
    assert (trimmed["status"], trimmed["attempts"]) == ("succeeded", 1)
    assert len(module_titles(app, too_many["plan"])) == 12
    assert trimmed["attemptLog"][0]["adjustments"]["modulesDropped"] == 18
    assert (coerced["status"], coerced["attempts"]) == ("succeeded", 1)
    assert coerced["attemptLog"][0]["adjustments"]["numbersCoerced"] == 8  # 2 modules, 6 tasks
    assert len(openai_server.calls(too_many["topic"])) == 1
    assert len(openai_server.calls(strings["topic"])) == 1


def test_an_answer_streamed_as_server_sent_events_is_a_clear_provider_error(
    app: Flask,
    app_config: dict[str, Any],
    openai_server: FakeOpenAI,
    submit: Submit,
    start_worker: Any,
    worker_procs: WorkerProcs,
) -> None:
    app_config["PLAN_REGEN_PROVIDER_STREAM"] = False  # the worker's: a stream not asked for
    streamed = submit("Streamed answers", "sse", "sse", "sse")
    worker = start_worker()

    (document,) = finished(app, streamed)
    assert (document["status"], document["failureClass"]) == ("failed", "provider_error")
    assert document["attempts"] == len(openai_server.calls(streamed["topic"])) == 3
    log = worker_procs.log(worker)
    assert "the answer is a server-sent event stream, not a chat completion" in log
    assert "AttributeError" not in log


@pytest.mark.slow
def test_failed_regenerations_are_failed_rq_jobs_and_burst_waits_for_retries(
    app: Flask,
    app_config: dict[str, Any],
    openai_server: FakeOpenAI,
    submit: Submit,
    start_worker: Any,
) -> None:
    app_config["PLAN_REGEN_RETRY_BACKOFF_BASE"] = 2
    failing = [submit(f"Failing {n}", "status_401") for n in range(3)]
    retried = submit("Retried once", "status_500", "good")
    worker = start_worker("--burst")

    assert worker.wait(90) == 0
    # --burst ended only once the retry it had scheduled (about 2 s later) had run.
    documents = finished(app, *failing, retried, timeout=1)
    assert [d["status"] for d in documents] == ["failed"] * 3 + ["succeeded"]
    first, second = openai_server.calls(retried["topic"])
    with app.app_context():
        redis = get_state().redis
        stats = queue.queue_stats(redis, rq_queue_names(app.config))
    failed = sum(s["failed"] for s in stats)
    print(
        f"\nRQ failed registry: {failed} jobs for 3 failed regenerations; --burst waited "
        f"{second['at'] - first['at']:.1f} s for the retry it scheduled"
    )
    assert failed == 3
    assert sum(s["scheduled"] + s["queued"] for s in stats) == 0  # none retried by RQ
    for sent in failing:
        job = Job.fetch(sent["generation"], connection=redis, serializer=JSONSerializer)
        assert job.get_status() == "failed"
        result = job.latest_result()
        exc_info = result.exc_string if result is not None and result.exc_string else ""
        assert exc_info.rstrip().endswith(
            "RegenerationFailed: provider_rejected: "
            "The generation provider rejected the API key (HTTP 401)."
        ), exc_info
        assert API_KEY not in exc_info and "fake error" not in exc_info
