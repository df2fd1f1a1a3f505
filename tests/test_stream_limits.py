"""Fair event streams over real HTTP: a per-user cap, a maximum life, a derived per-process cap."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from app_server import serve, serve_with_gunicorn
from conftest import ALICE, BOB, NO_LIMITS, regenerate, run_jobs, wait_until, worker_env
from flask import Flask
from servers import WorkerProcs
from sse import EventStream
from test_event_stream import as_env, events_url, opened

from flask_plan_regen.stream_limits import DEFAULT_MAX_OPEN, THREADS_PER_STREAM

FAST = {"PLAN_REGEN_STREAM_KEEPALIVE": 0.3, "PLAN_REGEN_STREAM_RECHECK": 60.0}


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {**NO_LIMITS, **FAST, "PLAN_REGEN_STREAM_MAX_PER_USER": 2}


def test_one_user_is_refused_a_stream_beyond_the_cap_and_others_are_not(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    client = app.test_client()
    alices = regenerate(client, alice_plan := make_plan())["generationId"]
    bobs = regenerate(client, bob_plan := make_plan("bob"), headers=BOB)["generationId"]
    with serve(app) as base_url:
        url = events_url(base_url, alice_plan, alices)
        with EventStream(url, ALICE) as one, EventStream(url, ALICE) as two:
            assert one.next_event() is not None and two.next_event() is not None
            refused = requests.get(url, headers=ALICE, timeout=10)
            print(f"alice's third stream: {refused.status_code} {refused.json()['code']}")
            assert refused.status_code == 429
            assert refused.json()["code"] == "TOO_MANY_STREAMS_FOR_USER"
            assert refused.headers["Retry-After"] == "1"  # the keepalive (0.3 s), rounded up
            with EventStream(events_url(base_url, bob_plan, bobs), BOB) as bobs_stream:
                assert bobs_stream.status == 200 and bobs_stream.next_event() is not None
            two.close()
            started = time.monotonic()
            third = wait_until(lambda: opened(url), timeout=10, what="alice's stream again")
            print(f"alice's place freed {time.monotonic() - started:.2f} s after she closed one")
            third.close()


@pytest.mark.parametrize("app_config", [{**NO_LIMITS, **FAST, "PLAN_REGEN_STREAM_MAX_LIFE": 1.0}])
def test_a_stream_closes_at_its_maximum_life_and_resumes_with_last_event_id(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    with serve(app) as base_url:
        url = events_url(base_url, plan_id, generation_id)
        started = time.monotonic()
        with EventStream(url, ALICE) as stream:
            first = stream.rest()  # the server closes it after 1 s
            lived = time.monotonic() - started
        print(f"stream closed after {lived:.2f} s with events {[e.id for e in first]}")
        assert [e.data["status"] for e in first] == ["pending"] and 0.9 < lived < 10
        run_jobs(app)  # the regeneration ends while the client is away
        with EventStream(url, {**ALICE, "Last-Event-ID": str(first[-1].id)}) as resumed:
            rest = resumed.rest()
        print(f"resumed after event {first[-1].id}: {[(e.id, e.data['status']) for e in rest]}")
        assert [e.data["status"] for e in rest] == ["processing", "succeeded"]


@pytest.mark.slow
def test_gunicorn_threads_give_the_per_process_cap_and_a_larger_one_is_warned_of(
    app: Flask,
    make_plan: Callable[..., str],
    sqlite_uri: str,
    redis_url: str,
    worker_procs: WorkerProcs,
) -> None:
    """gthread, 8 threads: streams may hold 2 of them; an explicit 100 is warned about."""
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    config = {**FAST, "PLAN_REGEN_STREAM_MAX_PER_USER": 100}
    env = worker_env(sqlite_uri, redis_url, **as_env(config))
    base_url = serve_with_gunicorn(worker_procs, env, "gthread", "--threads", "8")
    url = events_url(base_url, plan_id, generation_id)
    derived = 8 // THREADS_PER_STREAM
    with contextlib.ExitStack() as streams:
        for _ in range(derived):
            assert streams.enter_context(EventStream(url, ALICE)).next_event() is not None
        refused = requests.get(url, headers=ALICE, timeout=10)
        print(f"stream {derived + 1} on 8 threads: {refused.status_code}")
        assert refused.status_code == 503 and refused.json()["code"] == "TOO_MANY_STREAMS"
        answer = requests.get(url.removesuffix("/events"), headers=ALICE, timeout=10)
        assert answer.status_code == 200  # threads left for everything else

    too_many = {**config, "PLAN_REGEN_STREAM_MAX_OPEN": DEFAULT_MAX_OPEN}
    env = worker_env(sqlite_uri, redis_url, **as_env(too_many))
    serve_with_gunicorn(worker_procs, env, "gthread", "--threads", "8")
    warning = "PLAN_REGEN_STREAM_MAX_OPEN = 100 exceeds 2, a quarter of this server's 8 threads"
    worker_procs.wait_for_log(worker_procs.procs[-1], warning, timeout=30)
