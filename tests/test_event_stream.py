"""The event stream of a regeneration (GET .../events), over real HTTP with real workers.

Served by werkzeug in the test process (``serve``) or by gunicorn (gthread, gevent);
the worker is a real ``flask plan-regen worker`` process; Redis and SQLite are real.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
import requests
from app_server import serve, serve_with_gunicorn
from conftest import (
    ALICE,
    BOB,
    NO_LIMITS,
    lose_the_queue,
    regenerate,
    run_jobs,
    status_of,
    wait_until,
    worker_env,
)
from flask import Flask
from servers import WorkerProcs
from sqlalchemy import update
from sse import Event, EventStream

from examples.host_app import db
from flask_plan_regen import Regeneration, Status, get_state, jobs, progress

# Short intervals, so that idle streams notice a gone client and tests never wait long.
# Many streams of one user: no per-user cap in the way (tests/test_stream_limits.py tests it).
STREAM_CONFIG = {
    "PLAN_REGEN_STREAM_KEEPALIVE": 0.3,
    "PLAN_REGEN_STREAM_RECHECK": 60.0,
    "PLAN_REGEN_STREAM_MAX_PER_USER": 100,
}


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {**NO_LIMITS, **STREAM_CONFIG}


def events_url(base_url: str, plan_id: str, generation_id: str) -> str:
    return f"{base_url}/api/v1/plans/{plan_id}/regenerations/{generation_id}/events"


def summary(events: list[Event]) -> list[tuple[int, str, int]]:
    return [(e.id, e.data["status"], e.data["attempts"]) for e in events]


def start_worker(procs: WorkerProcs, sqlite_uri: str, redis_url: str, **config: str) -> None:
    worker = procs.spawn(
        ["flask", "plan-regen", "worker"], worker_env(sqlite_uri, redis_url, **config)
    )
    procs.wait_for_log(worker, "Listening on", timeout=30)


def as_env(config: dict[str, Any]) -> dict[str, str]:
    """Config as ``FLASK_PLAN_REGEN_*`` environment values (parsed as JSON by the app)."""
    return {
        key: repr(value) if isinstance(value, float) else str(value)
        for key, value in config.items()
    }


@pytest.fixture(
    params=[
        "werkzeug",
        pytest.param("gthread", marks=pytest.mark.slow),
        pytest.param("gevent", marks=pytest.mark.slow),
    ]
)
def web(
    request: pytest.FixtureRequest,
    app: Flask,
    sqlite_uri: str,
    redis_url: str,
    worker_procs: WorkerProcs,
) -> Iterator[tuple[str, str]]:
    """(server, base URL): werkzeug (threaded) in this process, or gunicorn gthread / gevent."""
    if request.param == "werkzeug":
        with serve(app) as base_url:
            yield request.param, base_url
        return
    env = worker_env(sqlite_uri, redis_url, **as_env(STREAM_CONFIG))
    options = ["--threads", "8"] if request.param == "gthread" else []
    yield request.param, serve_with_gunicorn(worker_procs, env, request.param, *options)


def test_a_stream_follows_a_regeneration_from_pending_to_succeeded(
    app: Flask,
    web: tuple[str, str],
    make_plan: Callable[..., str],
    sqlite_uri: str,
    redis_url: str,
    worker_procs: WorkerProcs,
) -> None:
    server, base_url = web
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id, weeklyHours=4)["generationId"]
    with EventStream(events_url(base_url, plan_id, generation_id), ALICE) as stream:
        assert stream.status == 200
        assert stream.content_type.startswith("text/event-stream")
        assert stream.response.getheader("Cache-Control") == "no-cache"
        first = stream.next_event()
        assert first is not None
        assert first.data == {
            "generationId": generation_id,
            "planId": plan_id,
            "status": "pending",
            "attempts": 0,
            "failureClass": None,
            "error": None,
            "result": None,
        }
        # The worker starts only now: every later state comes from it, through pub/sub.
        start_worker(worker_procs, sqlite_uri, redis_url, PLAN_REGEN_BUILTIN_DELAY="0.5")
        rest = stream.rest()  # until the server closes the stream
    assert summary([first, *rest]) == [(1, "pending", 0), (3, "processing", 1), (5, "succeeded", 1)]
    succeeded = rest[-1].data
    assert succeeded["result"]["modules"] >= 1 and succeeded["result"]["tasks"] >= 1
    # The recheck is 60 s: each event came from a pub/sub message, well before that.
    document = status_of(client, plan_id, generation_id)
    delays = {
        "processing": rest[0].received_at - iso_seconds(document["startedAt"]),
        "succeeded": rest[1].received_at - iso_seconds(document["finishedAt"]),
    }
    print(
        f"[{server}] event delivered this long after its commit: "
        + ", ".join(f"{status} {delay * 1000:.0f} ms" for status, delay in delays.items())
    )
    assert all(delay < 10 for delay in delays.values()), delays


def iso_seconds(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_a_stream_opened_after_the_end_sends_the_final_state_and_closes(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    run_jobs(app)
    with serve(app) as base_url:
        url = events_url(base_url, plan_id, generation_id)
        started = time.monotonic()
        with EventStream(url, ALICE) as stream:
            assert stream.status == 200
            events = stream.rest()
        took = time.monotonic() - started
        print(f"stream of an ended regeneration answered and closed in {took * 1000:.0f} ms")
        assert summary(events) == [(5, "succeeded", 1)]
        assert events[0].data["result"] == status_of(client, plan_id, generation_id)["result"]
        assert took < 5  # at once: nothing to wait for, not a keepalive or a recheck later

        # A client that saw the final event is told to stop reconnecting: 204.
        with EventStream(url, {**ALICE, "Last-Event-ID": "5"}) as stream:
            assert stream.status == 204
            assert stream.response.read() == b""
        # One that saw only the first is sent what it missed, not the first again.
        with EventStream(url, {**ALICE, "Last-Event-ID": "1"}) as stream:
            assert summary(stream.rest()) == [(3, "processing", 1), (5, "succeeded", 1)]


@pytest.mark.slow
def test_last_event_id_resumes_without_repeating_through_retries(
    app: Flask,
    make_plan: Callable[..., str],
    sqlite_uri: str,
    redis_url: str,
    worker_procs: WorkerProcs,
    openai_server: Any,
) -> None:
    """A live stream sees every state of a retried regeneration; a resumed one the same tail."""
    openai_server.queue("status_500", "good")
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    with serve(app) as base_url:
        url = events_url(base_url, plan_id, generation_id)
        with EventStream(url, ALICE) as live, EventStream(url, ALICE) as dropped:
            assert dropped.next_event() is not None  # the client goes away after the first
            dropped.close()
            start_worker(
                worker_procs,
                sqlite_uri,
                redis_url,
                PLAN_REGEN_PROVIDER='"flask_plan_regen.openai_provider:OpenAIProvider"',
                PLAN_REGEN_PROVIDER_BASE_URL=f'"{openai_server.base_url}"',
                PLAN_REGEN_PROVIDER_API_KEY='"sk-test"',
                PLAN_REGEN_RETRY_BACKOFF_BASE="0.6",  # ~1 s: RQ's scheduler runs the retry
            )
            seen = live.rest()
        assert summary(seen) == [
            (1, "pending", 0),
            (3, "processing", 1),
            (4, "pending", 1),
            (6, "processing", 2),
            (8, "succeeded", 2),
        ]
        retry = seen[2].data
        assert (retry["failureClass"], retry["error"]) == (
            "provider_error",
            status_of(client, plan_id, generation_id)["errorHistory"][0]["error"],
        )

        with EventStream(url, {**ALICE, "Last-Event-ID": "1"}) as resumed:
            assert [(e.id, e.data) for e in resumed.rest()] == [(e.id, e.data) for e in seen[1:]]
        with EventStream(url, {**ALICE, "Last-Event-ID": "4"}) as resumed:
            assert [e.id for e in resumed.rest()] == [6, 8]


@pytest.mark.parametrize(
    "app_config",
    [{**NO_LIMITS, "PLAN_REGEN_STREAM_KEEPALIVE": 60.0, "PLAN_REGEN_STREAM_RECHECK": 60.0}],
)
def test_a_client_resuming_an_active_regeneration_gets_only_what_follows(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    with serve(app) as base_url:
        url = events_url(base_url, plan_id, generation_id)
        started = time.monotonic()
        with EventStream(url, {**ALICE, "Last-Event-ID": "1"}) as stream:
            # Open at once, not a keepalive (60 s) later, though there is nothing to send yet.
            assert stream.status == 200 and time.monotonic() - started < 10
            cancel = f"/api/v1/plans/{plan_id}/regenerations/{generation_id}/cancel"
            assert client.post(cancel, json={}, headers=ALICE).status_code == 200
            assert summary(stream.rest()) == [(2, "canceled", 0)]  # not "pending" again
            assert time.monotonic() - started < 10  # announced, not found by a re-read


def test_only_the_owner_gets_the_stream(app: Flask, make_plan: Callable[..., str]) -> None:
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    other_id = regenerate(client, make_plan())["generationId"]
    with serve(app) as base_url:
        url = events_url(base_url, plan_id, generation_id)
        cases = [
            ({}, url, 401, "UNAUTHORIZED"),
            (BOB, url, 404, "PLAN_NOT_FOUND"),
            (ALICE, events_url(base_url, plan_id, other_id), 404, "REGENERATION_NOT_FOUND"),
            (ALICE, events_url(base_url, plan_id, "x" * 500), 404, "REGENERATION_NOT_FOUND"),
            ({**ALICE, "Last-Event-ID": "abc"}, url, 400, "INVALID_LAST_EVENT_ID"),
            ({**ALICE, "Last-Event-ID": "2"}, url, 400, "INVALID_LAST_EVENT_ID"),  # not sent yet
            ({**ALICE, "Last-Event-ID": "9" * 5000}, url, 400, "INVALID_LAST_EVENT_ID"),
            ({**ALICE, "Last-Event-ID": "\u00b2"}, url, 400, "INVALID_LAST_EVENT_ID"),  # isdigit()
        ]
        for headers, target, status, code in cases:
            answer = requests.get(target, headers=headers, timeout=10)
            assert (answer.status_code, answer.json()["code"]) == (status, code), headers
            assert answer.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    "app_config", [{**NO_LIMITS, **STREAM_CONFIG, "PLAN_REGEN_STREAM_MAX_OPEN": 2}]
)
def test_streams_beyond_the_cap_are_refused_until_one_closes(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]  # stays pending: no worker
    with serve(app) as base_url:
        url = events_url(base_url, plan_id, generation_id)
        with EventStream(url, ALICE) as one, EventStream(url, ALICE) as two:
            assert one.next_event() is not None and two.next_event() is not None
            refused = requests.get(url, headers=ALICE, timeout=10)
            assert refused.status_code == 503
            assert refused.json()["code"] == "TOO_MANY_STREAMS"
            assert refused.headers["Retry-After"] == "5"
            # Other routes are not affected.
            assert status_of(client, plan_id, generation_id)["status"] == "pending"
            two.close()
            # The server notices the gone client at its next keepalive and frees the slot.
            started = time.monotonic()
            third = wait_until(
                lambda: opened(url), timeout=10, what="a stream accepted after one closed"
            )
            print(f"slot freed {time.monotonic() - started:.2f} s after the client closed")
            with third:
                assert third.next_event() is not None
                # Idle, the stream keeps sending comment lines (every 0.3 s here).
                wait_until(lambda: len(read_comments(third)) >= 2, timeout=10, what="keepalives")
                assert set(third.comments) == {"keepalive"}


def opened(url: str) -> EventStream | None:
    stream = EventStream(url, ALICE)
    if stream.status == 200:
        return stream
    stream.close()
    return None


def read_comments(stream: EventStream) -> list[str]:
    """Read one more line of an idle stream; the comments read so far."""
    line = stream.response.readline().decode().rstrip("\n")
    if line.startswith(":"):
        stream.comments.append(line[1:].strip())
    return stream.comments


@pytest.mark.parametrize(
    "app_config", [{**NO_LIMITS, **STREAM_CONFIG, "PLAN_REGEN_STREAM_RECHECK": 0.3}]
)
def test_a_change_that_was_never_announced_is_sent_at_the_next_re_read(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    """A lost message (here: a change made without one) delays the event, never drops it."""
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    with (
        serve(app) as base_url,
        EventStream(events_url(base_url, plan_id, generation_id), ALICE) as stream,
    ):
        assert stream.next_event() is not None
        with app.app_context():
            db.session.execute(
                update(Regeneration)
                .where(Regeneration.id == generation_id)
                .values(status=Status.CANCELED)
            )
            db.session.commit()
        changed = time.time()
        events = stream.rest()
    assert summary(events) == [(2, "canceled", 0)]
    delay = events[0].received_at - changed
    print(f"an unannounced change was sent {delay * 1000:.0f} ms later (recheck 300 ms)")
    assert delay < 10


@pytest.mark.parametrize(
    "app_config", [{**NO_LIMITS, **STREAM_CONFIG, "PLAN_REGEN_STREAM_RECHECK": 0.3}]
)
def test_without_redis_streams_re_read_the_row_and_a_cancel_still_answers(
    app: Flask, make_plan: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    lose_the_queue(app)  # Redis is gone for this app: no pub/sub, no publishing
    with (
        serve(app) as base_url,
        EventStream(events_url(base_url, plan_id, generation_id), ALICE) as stream,
    ):
        assert stream.next_event() is not None
        url = f"/api/v1/plans/{plan_id}/regenerations/{generation_id}/cancel"
        assert client.post(url, json={}, headers=ALICE).status_code == 200
        assert summary(stream.rest()) == [(2, "canceled", 0)]
    logged = {record.name: record.getMessage() for record in caplog.records}
    assert "not published, Redis unavailable" in logged["flask_plan_regen.progress"]
    assert "no pub/sub, Redis unavailable" in logged["flask_plan_regen.streams"]


def test_publishing_without_redis_never_breaks_a_job(
    app: Flask, make_plan: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    lose_the_queue(app)
    caplog.set_level(logging.WARNING, "flask_plan_regen.progress")
    with app.app_context():
        assert jobs.execute(get_state(), generation_id) is not None
    assert status_of(client, plan_id, generation_id)["status"] == "succeeded"
    published = [r.getMessage() for r in caplog.records if r.name == "flask_plan_regen.progress"]
    assert len(published) == 2  # processing and succeeded, each logged and skipped
    assert all("not published, Redis unavailable" in message for message in published)


@pytest.mark.parametrize(
    "app_config", [{**NO_LIMITS, **STREAM_CONFIG, "PLAN_REGEN_STREAM_MAX_OPEN": 40}]
)
def test_open_streams_hold_no_database_connection(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    """More streams than the pool has connections (5 + 10 overflow); other requests still answer."""
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    with serve(app) as base_url, contextlib.ExitStack() as streams:
        url = events_url(base_url, plan_id, generation_id)
        for _ in range(25):
            stream = streams.enter_context(EventStream(url, ALICE))
            assert stream.next_event() is not None
        started = time.monotonic()
        answer = requests.get(url.removesuffix("/events"), headers=ALICE, timeout=30)
        took = time.monotonic() - started
        print(f"status route with 25 streams open: {took * 1000:.0f} ms")
        assert answer.status_code == 200
        assert took < 5  # a pool held by the streams would make it wait 30 s, then fail


@pytest.mark.slow
def test_one_gevent_process_serves_many_streams(
    app: Flask,
    make_plan: Callable[..., str],
    sqlite_uri: str,
    redis_url: str,
    worker_procs: WorkerProcs,
) -> None:
    """gevent: 50 streams in one process, each to its end, while other requests answer."""
    count = 50
    client = app.test_client()
    ids = [
        (plan_id, regenerate(client, plan_id)["generationId"])
        for plan_id in [make_plan() for _ in range(count)]
    ]
    env = worker_env(sqlite_uri, redis_url, **as_env(STREAM_CONFIG))
    base_url = serve_with_gunicorn(worker_procs, env, "gevent")
    finals: dict[str, list[Event]] = {}
    ready = threading.Barrier(count + 1, timeout=60)

    def follow(plan_id: str, generation_id: str) -> None:
        with EventStream(
            events_url(base_url, plan_id, generation_id), ALICE, timeout=120
        ) as stream:
            first = stream.next_event()
            ready.wait()
            finals[generation_id] = [e for e in [first, *stream.rest()] if e is not None]

    threads = [threading.Thread(target=follow, args=pair) for pair in ids]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.monotonic()
    answer = requests.get(f"{base_url}/api/v1/plans/{ids[0][0]}", headers=ALICE, timeout=30)
    took = time.monotonic() - started
    print(f"gevent: plan route with {count} streams open: {took * 1000:.0f} ms")
    assert answer.status_code == 200
    started = time.monotonic()
    start_worker(worker_procs, sqlite_uri, redis_url)
    for thread in threads:
        thread.join(120)
    took = time.monotonic() - started
    print(
        f"gevent: {count} streams saw their regeneration succeed within {took:.1f} s "
        "of the worker starting"
    )
    assert sorted(finals) == sorted(generation_id for _, generation_id in ids)
    for events in finals.values():
        assert summary(events)[-1][1:] == ("succeeded", 1)
        assert [e.id for e in events] == sorted({e.id for e in events})


def failure(number: int) -> dict[str, Any]:
    return {"attempt": number, "class": "provider_error", "error": f"attempt {number} failed"}


@pytest.mark.parametrize(
    ("status", "attempts", "failures", "failure_class", "expected"),
    [
        ("pending", 0, [], None, [(1, "pending", 0)]),
        ("processing", 1, [], None, [(1, "pending", 0), (3, "processing", 1)]),
        ("pending", 1, [1], None, [(1, "pending", 0), (3, "processing", 1), (4, "pending", 1)]),
        (
            "succeeded",
            2,
            [1],
            None,
            [
                (1, "pending", 0),
                (3, "processing", 1),
                (4, "pending", 1),
                (6, "processing", 2),
                (8, "succeeded", 2),
            ],
        ),
        (
            "failed",
            2,
            [1, 2],
            "provider_error",
            [
                (1, "pending", 0),
                (3, "processing", 1),
                (4, "pending", 1),
                (6, "processing", 2),
                (8, "failed", 2),
            ],
        ),
        ("canceled", 0, [], None, [(1, "pending", 0), (2, "canceled", 0)]),
        # Canceled while attempt 1 ran (it recorded no failure) / while waiting to retry it.
        ("canceled", 1, [], None, [(1, "pending", 0), (3, "processing", 1), (5, "canceled", 1)]),
        (
            "canceled",
            1,
            [1],
            None,
            [(1, "pending", 0), (3, "processing", 1), (4, "pending", 1), (5, "canceled", 1)],
        ),
        (
            "failed",
            1,
            [1],
            "capped",
            [(1, "pending", 0), (3, "processing", 1), (4, "pending", 1), (5, "failed", 1)],
        ),
    ],
)
def test_the_row_tells_every_state_the_regeneration_went_through(
    status: str,
    attempts: int,
    failures: list[int],
    failure_class: str | None,
    expected: list[tuple[int, str, int]],
) -> None:
    row = Regeneration(
        id="g", plan_id="p", status=status, attempts=attempts, failure_class=failure_class,
        error="it failed" if failure_class else None,
        error_history=[failure(number) for number in failures],
        result={"modules": 3} if status == "succeeded" else None,
    )  # fmt: skip
    events = progress.history(row)
    assert [(e.id, str(e.status), e.attempts) for e in events] == expected
    assert events[-1].id == progress.event_id(Status(status), attempts)  # the current state
    for event in events[:-1] if events[-1].ended else events:
        why = failure(event.attempts) if event.status == Status.PENDING and event.attempts else {}
        assert (event.failure_class, event.error) == (why.get("class"), why.get("error"))
    assert events[-1].result == row.result
    assert progress.events_after(row, None) == events[-1:]
    assert progress.events_after(row, expected[0][0]) == events[1:]
