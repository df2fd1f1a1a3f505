"""Streamed generation, end to end: the local chat-completions server streams a 6-module
answer token by token (``long``, ~1,000 tokens) through the official SDK to a real
``flask plan-regen worker``; an SSE client reads the ``module`` events over real HTTP.

The issue's server writes about 50 tokens a second (~20 s); here it writes
``TOKENS_PER_SECOND`` so that a test takes seconds, and the checks are ratios of
the generation time, which the rate does not change.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from app_server import serve
from conftest import ALICE, NO_LIMITS, regenerate, run_jobs, status_of, wait_until, worker_env
from flask import Flask
from openai_server import LONG_PLAN, FakeOpenAI
from servers import WorkerProcs
from sse import Event, EventStream

TOKENS_PER_SECOND = 200.0
API_KEY = "sk-test-streaming-0123456789"
NAMES = ("message", "module")


@pytest.fixture
def app_config(openai_server: FakeOpenAI) -> dict[str, Any]:
    return {
        **NO_LIMITS,
        "PLAN_REGEN_PROVIDER": "flask_plan_regen.openai_provider:OpenAIProvider",
        "PLAN_REGEN_PROVIDER_BASE_URL": openai_server.base_url,
        "PLAN_REGEN_PROVIDER_API_KEY": API_KEY,
        "PLAN_REGEN_PROVIDER_MODEL": "fake-streamer",
        "PLAN_REGEN_MAX_ATTEMPTS": 1,
        "PLAN_REGEN_STREAM_KEEPALIVE": 0.5,
        "PLAN_REGEN_STREAM_RECHECK": 60.0,
    }


@pytest.fixture
def base_url(app: Flask) -> Iterator[str]:
    with serve(app) as url:
        yield url


@pytest.fixture
def start_worker(
    worker_procs: WorkerProcs, sqlite_uri: str, redis_url: str, app_config: dict[str, Any]
) -> Callable[[], None]:
    def start() -> None:
        config = {
            key: value if isinstance(value, str) else json.dumps(value)
            for key, value in app_config.items()
        }
        worker = worker_procs.spawn(
            ["flask", "plan-regen", "worker"], worker_env(sqlite_uri, redis_url, **config)
        )
        worker_procs.wait_for_log(worker, "Listening on", timeout=30)

    return start


def events_url(base_url: str, plan_id: str, generation_id: str) -> str:
    return f"{base_url}/api/v1/plans/{plan_id}/regenerations/{generation_id}/events"


def plan_modules(app: Flask, plan_id: str) -> list[Any]:
    plan = app.test_client().get(f"/api/v1/plans/{plan_id}", headers=ALICE).get_json()
    return list(plan["modules"])


def until_module(stream: EventStream, index: int) -> list[Event]:
    """Events read up to and including the ``module`` event of ``index``."""
    read = []
    while (event := stream.next_event()) is not None:
        read.append(event)
        if event.name == "module" and event.data["index"] == index:
            return read
    raise AssertionError(f"the stream ended before module {index}: {read}")


def test_modules_stream_as_the_model_writes_them_and_resume_exactly(
    app: Flask,
    openai_server: FakeOpenAI,
    base_url: str,
    make_plan: Callable[..., str],
    start_worker: Callable[[], None],
) -> None:
    openai_server.tokens_per_second = TOKENS_PER_SECOND
    openai_server.default = "long"
    client = app.test_client()
    plan_id = make_plan()
    before = plan_modules(app, plan_id)
    generation_id = regenerate(client, plan_id)["generationId"]
    url = events_url(base_url, plan_id, generation_id)
    start_worker()
    with EventStream(url, ALICE, names=NAMES) as stream:
        read = until_module(stream, 1)
        # Mid-stream: the preview is counted, and the plan is untouched.
        document = status_of(client, plan_id, generation_id)
        assert document["status"] == "processing"
        assert document["modulesReady"] >= 2
        assert plan_modules(app, plan_id) == before
        # A second client that saw up to the second module resumes right after it.
        with EventStream(url, {**ALICE, "Last-Event-ID": "3.2"}, names=NAMES) as resumed:
            resumed_events = resumed.rest()
        read += stream.rest()

    ids = [event.id for event in read]
    assert ids == [1, 3, "3.1", "3.2", "3.3", "3.4", "3.5", "3.6", 5]  # pending, processing, ended
    modules = [event for event in read if event.name == "module"]
    assert [m.data["index"] for m in modules] == list(range(6))
    assert [m.data["title"] for m in modules] == [m["title"] for m in LONG_PLAN["modules"]]
    assert modules[0].data["minutes"] == 160
    assert modules[0].data["tasks"][0] == {"title": "Streamed task 1.1", "minutes": 40}
    assert read[-1].data["status"] == "succeeded"
    # Resumed: no duplicate, no gap.
    assert [event.id for event in resumed_events] == ids[ids.index("3.2") + 1 :]

    [call] = openai_server.requests
    # From the model's first token (the server's clock is monotonic, the client's wall time).
    called_at = call["at"] + (time.time() - time.monotonic())
    first_module = modules[0].received_at - called_at
    generation = read[-1].received_at - called_at
    print(
        f"first module after {first_module:.2f} s of a {generation:.2f} s generation "
        f"({first_module / generation:.0%}; {TOKENS_PER_SECOND:g} tokens/s; the worker "
        f"called the model {called_at - read[1].received_at:.2f} s after it started)"
    )
    assert first_module < generation / 4
    assert call["body"]["stream"] is True
    assert call["body"]["stream_options"] == {"include_usage": True}
    assert call["body"]["response_format"]["type"] == "json_schema"
    assert call["body"]["max_completion_tokens"] == 8192
    document = status_of(client, plan_id, generation_id)
    assert document["modulesReady"] is None  # only while processing
    [attempt] = document["attemptLog"]
    assert (attempt["promptTokens"], attempt["completionTokens"]) == (123, 456)  # the usage chunk
    assert [m["title"] for m in plan_modules(app, plan_id)] == [
        m["title"] for m in LONG_PLAN["modules"]
    ]


def test_cancel_mid_stream_closes_the_call_and_records_its_tokens(
    app: Flask,
    openai_server: FakeOpenAI,
    base_url: str,
    make_plan: Callable[..., str],
    start_worker: Callable[[], None],
) -> None:
    openai_server.tokens_per_second = TOKENS_PER_SECOND / 2
    openai_server.default = "long"
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    start_worker()
    with EventStream(events_url(base_url, plan_id, generation_id), ALICE, names=NAMES) as stream:
        until_module(stream, 1)
        canceled_at = time.monotonic()
        cancel_url = f"/api/v1/plans/{plan_id}/regenerations/{generation_id}/cancel"
        assert client.post(cancel_url, json={}, headers=ALICE).status_code == 200
        assert [event.data["status"] for event in stream.rest()] == ["canceled"]

    [call] = openai_server.requests
    disconnected_at = wait_until(lambda: call["disconnected_at"], 10, "the server to see it")
    document = wait_until(
        lambda: (doc := status_of(client, plan_id, generation_id))["attemptLog"] and doc,
        20,
        "the canceled attempt's row",
    )
    [attempt] = document["attemptLog"]
    total = len(json.dumps(LONG_PLAN)) // 4
    print(
        f"server saw the disconnect {disconnected_at - canceled_at:.2f} s after the cancel; "
        f"tokens recorded {attempt['completionTokens']}, sent {call['sent_tokens']} of {total}"
    )
    assert disconnected_at - canceled_at < 1.0
    assert call["sent_tokens"] < total
    assert attempt["outcome"] == "canceled"
    # One token a chunk; the last one or two written may not have been read before the cut.
    assert 0 <= call["sent_tokens"] - attempt["completionTokens"] <= 2
    assert document["status"] == "canceled"


def test_a_stream_that_stalls_past_the_idle_limit_fails_as_timeout_naming_it(
    app: Flask, openai_server: FakeOpenAI, make_plan: Callable[..., str]
) -> None:
    app.config["PLAN_REGEN_PROVIDER_IDLE_TIMEOUT"] = 1.0
    openai_server.default = "stall"
    openai_server.stall_after, openai_server.stall_seconds = 50, 4.0
    plan_id = make_plan()
    generation_id = regenerate(app.test_client(), plan_id)["generationId"]
    started = time.monotonic()
    run_jobs(app)
    waited = time.monotonic() - started
    document = status_of(app.test_client(), plan_id, generation_id)
    [call] = openai_server.requests
    print(f"failed after {waited:.2f} s: {document['error']}; sent {call['sent_tokens']} tokens")
    assert (document["status"], document["failureClass"]) == ("failed", "timeout")
    assert "idle limit" in document["error"]
    assert waited < 3.5  # not the 4 s stall
    [attempt] = document["attemptLog"]
    assert attempt["completionTokens"] == call["sent_tokens"] == 50


def test_a_server_that_holds_its_headers_is_cut_at_the_first_token_limit(
    app: Flask, openai_server: FakeOpenAI, make_plan: Callable[..., str]
) -> None:
    """A server may send no headers until its first token: the limit still holds."""
    app.config["PLAN_REGEN_PROVIDER_FIRST_TOKEN_TIMEOUT"] = 1.0
    openai_server.default, openai_server.slow_seconds = "slow", 6.0
    plan_id = make_plan()
    generation_id = regenerate(app.test_client(), plan_id)["generationId"]
    started = time.monotonic()
    run_jobs(app)
    waited = time.monotonic() - started
    document = status_of(app.test_client(), plan_id, generation_id)
    print(f"headers held 6 s: failed after {waited:.2f} s: {document['error']}")
    assert (document["status"], document["failureClass"]) == ("failed", "timeout")
    assert "first token" in document["error"]
    assert waited < 4.0  # not the 6 s the server held its headers


def test_cancel_before_the_headers_cuts_the_call(
    app: Flask,
    openai_server: FakeOpenAI,
    make_plan: Callable[..., str],
    start_worker: Callable[[], None],
) -> None:
    openai_server.default, openai_server.slow_seconds = "slow", 20.0
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    start_worker()
    wait_until(lambda: openai_server.requests, 30, "the provider call")
    canceled_at = time.monotonic()
    cancel_url = f"/api/v1/plans/{plan_id}/regenerations/{generation_id}/cancel"
    assert client.post(cancel_url, json={}, headers=ALICE).status_code == 200
    document = wait_until(
        lambda: (doc := status_of(client, plan_id, generation_id))["attemptLog"] and doc,
        15,
        "the canceled attempt's row",
    )
    recorded = time.monotonic() - canceled_at
    [attempt] = document["attemptLog"]
    print(f"canceled while the server held its headers: attempt recorded {recorded:.2f} s later")
    assert attempt["outcome"] == "canceled"
    assert recorded < 5.0  # not the 20 s the server would hold them


def test_a_server_that_cannot_stream_gets_the_plain_call_once_per_process(
    app: Flask, openai_server: FakeOpenAI, make_plan: Callable[..., str]
) -> None:
    # Its own model name: the memory is per (base URL, model) and a port may be reused.
    app.config["PLAN_REGEN_PROVIDER_MODEL"] = "fake-no-stream"
    openai_server.queue("no_stream", "no_stream")
    client = app.test_client()
    documents = []
    for topic in ("Refuses stream", "Refuses stream again"):
        plan_id = make_plan(topic=topic)
        generation_id = regenerate(client, plan_id)["generationId"]
        run_jobs(app)
        documents.append(status_of(client, plan_id, generation_id))
    assert [d["status"] for d in documents] == ["succeeded", "succeeded"]
    # Refused once with a 400, then asked plainly, and plainly from then on.
    assert [bool(r["body"].get("stream")) for r in openai_server.requests] == [True, False, False]


def test_a_plain_answer_to_a_streamed_request_is_used_as_it_is(
    app: Flask, openai_server: FakeOpenAI, make_plan: Callable[..., str]
) -> None:
    app.config["PLAN_REGEN_PROVIDER_MODEL"] = "fake-plain"
    openai_server.queue("plain")
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    run_jobs(app)
    document = status_of(client, plan_id, generation_id)
    assert (document["status"], document["attempts"]) == ("succeeded", 1)
    assert len(openai_server.requests) == 1  # no second, paid, call
    assert (document["attemptLog"][0]["completionTokens"]) == 456


def test_a_last_event_id_that_is_no_module_of_ours_is_400(
    app: Flask, openai_server: FakeOpenAI, make_plan: Callable[..., str]
) -> None:
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    run_jobs(app)
    url = f"/api/v1/plans/{plan_id}/regenerations/{generation_id}/events"
    answers = {
        last: client.get(url, headers={**ALICE, "Last-Event-ID": last}).status_code
        for last in ("3.1", "3.12", "3.13", "4.1", "3.0", "3.x", "6.1", "3.", "3.1.1")
    }
    print(answers)
    assert answers == {
        "3.1": 200,  # the states after attempt 1's first module: its end
        "3.12": 200,
        "3.13": 400,  # more modules than a plan may have
        "4.1": 400,  # modules only follow a processing state
        "3.0": 400,
        "3.x": 400,
        "6.1": 400,  # after the current state
        "3.": 400,
        "3.1.1": 400,
    }


def test_a_retried_attempt_writes_its_modules_again_under_its_own_ids(
    app: Flask, openai_server: FakeOpenAI, make_plan: Callable[..., str]
) -> None:
    app.config.update(
        PLAN_REGEN_MAX_ATTEMPTS=2,
        PLAN_REGEN_RETRY_BACKOFF_BASE=0,
        PLAN_REGEN_PROVIDER_IDLE_TIMEOUT=0.5,
    )
    openai_server.stall_after, openai_server.stall_seconds = 400, 2.0  # after 2 modules
    openai_server.queue("stall", "long")
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    run_jobs(app)
    url = f"/api/v1/plans/{plan_id}/regenerations/{generation_id}/events"
    body = client.get(url, headers={**ALICE, "Last-Event-ID": "1"}).get_data(as_text=True)
    ids = [line[4:] for line in body.splitlines() if line.startswith("id: ")]
    print(f"ids after the pending state: {ids}")
    # Attempt 1 timed out (its preview replaced by attempt 2's), attempt 2 wrote all six.
    assert ids == ["3", "4", "6", "6.1", "6.2", "6.3", "6.4", "6.5", "6.6", "8"]
    document = status_of(client, plan_id, generation_id)
    assert [a["failureClass"] for a in document["attemptLog"]] == ["timeout", None]
    assert document["attemptLog"][0]["completionTokens"] == 400
