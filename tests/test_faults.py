"""Faults with real processes: Redis down, PostgreSQL restarted, a request storm, bad input."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from app_server import serve
from conftest import (
    ALICE,
    NO_LIMITS,
    build_app,
    plan_factory,
    regenerate,
    run_jobs,
    status_of,
    statuses,
    wait_for_status,
    wait_until,
    worker_env,
)
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import EmbeddedPostgres, EmbeddedRedis, WorkerProcs, find_postgres_bindir
from sqlalchemy import func, select
from werkzeug.http import parse_options_header

from examples.host_app import db
from flask_plan_regen import Regeneration, get_state, queue
from flask_plan_regen.config import rq_queue_names

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------ Redis down


def test_redis_stopped_answers_503_fast_and_service_resumes(
    sqlite_uri: str, own_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    app = build_app(sqlite_uri, own_redis.url)
    make_plan = plan_factory(app)
    plans = [make_plan() for _ in range(4)]
    with serve(app) as base_url:

        def post(plan_id: str, key: str | None = None) -> tuple[requests.Response, float]:
            headers = dict(ALICE) | ({"Idempotency-Key": key} if key else {})
            started = time.monotonic()
            response = requests.post(
                f"{base_url}/api/v1/plans/{plan_id}/regenerate",
                json={},
                headers=headers,
                timeout=10,
            )
            return response, time.monotonic() - started

        assert post(plans[0])[0].status_code == 202
        port = own_redis.port
        own_redis.stop()
        for plan_id, key in [(plans[1], None), (plans[2], "k-1"), (plans[3], None)]:
            response, elapsed = post(plan_id, key)
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "QUEUE_UNAVAILABLE"
            assert response.headers["Retry-After"] == "5"
            assert elapsed < 2.0
        # Nothing half-written: only the regeneration accepted before the outage.
        assert list(statuses(app).values()) == ["pending"]

        # Hung rather than gone (SIGSTOP): the client's timeout still answers in time.
        restarted = EmbeddedRedis(tmp_path / "redis-hung", port=port)
        restarted.start()
        assert restarted.proc is not None
        os.kill(restarted.proc.pid, signal.SIGSTOP)
        try:
            response, elapsed = post(plans[1])
            assert (response.status_code, elapsed < 2.0) == (503, True), (response.text, elapsed)
        finally:
            os.kill(restarted.proc.pid, signal.SIGCONT)
            restarted.stop()
        assert list(statuses(app).values()) == ["pending"]

        restarted = EmbeddedRedis(tmp_path / "redis-again", port=port)
        restarted.start()
        try:
            # The same app object, no restart: it reconnects by itself.
            for plan_id, key in [(plans[1], None), (plans[2], "k-1")]:
                assert post(plan_id, key)[0].status_code == 202
        finally:
            restarted.stop()
    assert sorted(statuses(app).values()) == ["pending"] * 3


def test_worker_outlives_redis_stopped_for_10s_mid_job(
    sqlite_uri: str, own_redis: EmbeddedRedis, worker_procs: WorkerProcs, tmp_path: Path
) -> None:
    app = build_app(sqlite_uri, own_redis.url)
    client = app.test_client()
    plans = [plan_factory(app)() for _ in range(2)]
    env = worker_env(sqlite_uri, own_redis.url, PLAN_REGEN_BUILTIN_DELAY="3")
    worker = worker_procs.spawn(["flask", "plan-regen", "worker"], env)
    worker_procs.wait_for_log(worker, "Listening on")
    first = regenerate(client, plans[0])["generationId"]
    wait_for_status(app, [first], {"processing"})

    port = own_redis.port
    own_redis.stop()
    stopped = time.monotonic()
    # The job ends while Redis is down: its outcome still reaches the database.
    assert wait_for_status(app, [first], timeout=30) == {first: "succeeded"}
    time.sleep(max(0.0, 10 - (time.monotonic() - stopped)))  # the outage lasts 10 s
    assert worker.poll() is None, worker_procs.log_tail(worker)
    restarted = EmbeddedRedis(tmp_path / "redis-back", port=port)
    restarted.start()
    try:
        back = time.monotonic()
        second = regenerate(client, plans[1])["generationId"]
        assert wait_for_status(app, [second], timeout=60) == {second: "succeeded"}
        print(
            f"\nRedis down {back - stopped:.1f} s mid-job: worker alive, job succeeded; "
            f"next job done {time.monotonic() - back:.1f} s after Redis came back"
        )
        assert worker.poll() is None
        assert status_of(client, plans[0], first)["attempts"] == 1
    finally:
        restarted.stop()


def test_after_redis_lost_its_data_workers_register_again_and_retries_run(
    sqlite_uri: str, own_redis: EmbeddedRedis, worker_procs: WorkerProcs, tmp_path: Path
) -> None:
    app = build_app(sqlite_uri, own_redis.url)
    env = worker_env(sqlite_uri, own_redis.url, PLAN_REGEN_BUILTIN_FAILURE="provider_error")
    worker = worker_procs.spawn(["flask", "plan-regen", "worker"], env)
    worker_procs.wait_for_log(worker, "cquired scheduler lock")
    port = own_redis.port
    own_redis.stop()  # idle worker; its scheduler process dies on the outage
    worker_procs.wait_for_log(worker, "Error")
    restarted = EmbeddedRedis(tmp_path / "redis-empty", port=port)  # no data left
    restarted.start()
    try:
        back = time.monotonic()
        names = rq_queue_names(app.config)
        with app.app_context():
            redis = get_state().redis
        wait_until(lambda: queue.worker_states(redis, names), 60, "the worker registering again")
        registered = time.monotonic() - back
        client = app.test_client()
        plan_id = plan_factory(app)()
        generation_id = regenerate(client, plan_id)["generationId"]
        assert wait_for_status(app, [generation_id], timeout=90) == {generation_id: "failed"}
        doc = status_of(client, plan_id, generation_id)
        print(
            f"\nRedis restarted empty: worker registered again after {registered:.1f} s; "
            f"3 attempts with delayed retries done {time.monotonic() - back:.1f} s after"
        )
        assert doc["attempts"] == 3  # the delayed retries ran: the scheduler is back
    finally:
        restarted.stop()


# ------------------------------------------------------------------ PostgreSQL restart


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL cluster of this test's own, which the test restarts."""
    bindir = find_postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found")
    server = EmbeddedPostgres(bindir)
    server.start()
    yield server
    server.stop()


def plan_shapes(app: Flask, plan_ids: list[str]) -> dict[str, list[tuple[str, int]]]:
    """Per plan: (module title, task count) in order, from the plan read route."""
    client = app.test_client()
    shapes = {}
    for plan_id in plan_ids:
        document = client.get(f"/api/v1/plans/{plan_id}", headers=ALICE).json
        shapes[plan_id] = [(m["title"], len(m["tasks"])) for m in document["modules"]]
    return shapes


def test_postgres_restarted_while_a_worker_runs_jobs(
    own_postgres: EmbeddedPostgres, redis_url: str, redis_conn: Any, worker_procs: WorkerProcs
) -> None:
    app = build_app(own_postgres.url(), redis_url, **NO_LIMITS)
    make_plan = plan_factory(app)
    plan_ids = [make_plan(topic=f"Distributed systems part {n}") for n in range(6)]
    client = app.test_client()
    for plan_id in plan_ids:  # a first version of every plan, made in this process
        assert regenerate(client, plan_id)["status"] == "pending"
    run_jobs(app)
    before = plan_shapes(app, plan_ids)
    body = {"overrides": {"topic": "Databases under failure", "skillLevel": "advanced"}}
    ids = [
        client.post(f"/api/v1/plans/{p}/regenerate", json=body, headers=ALICE).json["generationId"]
        for p in plan_ids
    ]
    env = worker_env(own_postgres.url(), redis_url, PLAN_REGEN_BUILTIN_DELAY="0.5")
    # Default settings: the attempt the outage cuts off (its failure cannot even be
    # recorded) is found by its lapsed lease, or taken over by the next delivery.
    worker_procs.spawn(["flask", "plan-regen", "worker"], env)
    wait_until(lambda: "processing" in statuses(app).values(), 20, "the worker starting a job")
    with app.app_context():
        db.engine.dispose()  # this process's pooled connections die with the server
    own_postgres.restart(downtime=1.0)
    restarted = time.monotonic()

    assert wait_for_status(app, ids, timeout=90) == dict.fromkeys(ids, "succeeded")
    print(f"\nPostgreSQL restarted: all 6 succeeded {time.monotonic() - restarted:.1f} s later")
    with app.app_context():
        attempts = db.session.scalars(select(Regeneration.attempts).where(Regeneration.id.in_(ids)))
        assert max(attempts) >= 2  # the outage did cut an attempt off, and it was retried
    after = plan_shapes(app, plan_ids)
    for plan_id in plan_ids:
        # Whole new content, never a mix of old and new modules.
        assert after[plan_id] != before[plan_id]
        assert all("Databases under failure" in title for title, _ in after[plan_id])
        assert 3 <= len(after[plan_id]) <= 5 and all(3 <= n <= 5 for _, n in after[plan_id])


def test_database_down_or_gone_answers_503_and_logs_once_per_outage(
    own_postgres: EmbeddedPostgres,
    redis_url: str,
    redis_conn: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = build_app(own_postgres.url(), redis_url, **NO_LIMITS)
    plan_id = plan_factory(app)()
    caplog.set_level(logging.INFO, logger="flask_plan_regen")
    with serve(app) as base_url:
        api = f"{base_url}/api/v1"

        def every_route() -> list[requests.Response]:
            return [
                requests.get(f"{api}/plans/{plan_id}", headers=ALICE, timeout=10),
                requests.get(f"{api}/plans/{plan_id}/regenerations", headers=ALICE, timeout=10),
                requests.get(f"{api}/usage", headers=ALICE, timeout=10),
                requests.post(f"{api}/plans", json={"topic": "Rust"}, headers=ALICE, timeout=10),
                requests.post(
                    f"{api}/plans/{plan_id}/regenerate", json={}, headers=ALICE, timeout=10
                ),
            ]

        def refused(answers: list[requests.Response]) -> None:
            for answer in answers:
                assert answer.status_code == 503, (answer.request.url, answer.text)
                assert answer.json()["code"] == "DATABASE_UNAVAILABLE"
                assert answer.headers["Retry-After"] == "5"

        assert [a.status_code for a in every_route()] == [200, 200, 200, 202, 202]
        own_postgres.shutdown()
        stopped = time.monotonic()
        stopped_answers = [a for _ in range(4) for a in every_route()]
        per_request = (time.monotonic() - stopped) / len(stopped_answers)
        refused(stopped_answers)

        own_postgres.start_again()
        back = wait_until(
            lambda: requests.get(f"{api}/plans/{plan_id}", headers=ALICE, timeout=10).ok,
            30,
            "the API answering again",
        )
        assert back
        own_postgres.drop_database()
        refused(every_route() + every_route())

    outage_logs = [r for r in caplog.records if r.name == "flask_plan_regen.database"]
    print(
        f"\nPostgreSQL stopped: {len(stopped_answers)} requests answered 503 in "
        f"{per_request * 1000:.0f} ms each; logged: {[r.getMessage() for r in outage_logs]}"
    )
    # Two outages (stopped, then the database dropped): one error line each, with the
    # traceback, and one line when the first ended. Nothing else logged an error.
    assert [r.levelname for r in outage_logs] == ["ERROR", "WARNING", "ERROR"]
    assert outage_logs[0].exc_info is not None
    refused_count = re.search(r"(\d+) requests were answered 503", outage_logs[1].getMessage())
    assert refused_count and int(refused_count.group(1)) >= len(stopped_answers)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == [
        outage_logs[0],
        outage_logs[2],
    ]


# ------------------------------------------------------------------ request storm


def test_200_concurrent_posts_over_many_users_and_plans(
    pg_app: Flask, postgres_url: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    make_plan = plan_factory(pg_app)
    users = [f"user-{n}" for n in range(40)]
    plans = [(user, make_plan(user)) for user in users for _ in range(2)]
    rng = random.Random(5)
    requests_to_send = [rng.choice(plans) for _ in range(200)]

    with serve(pg_app) as base_url, ThreadPoolExecutor(max_workers=32) as pool:

        def post(target: tuple[str, str]) -> requests.Response:
            user, plan_id = target
            return requests.post(
                f"{base_url}/api/v1/plans/{plan_id}/regenerate",
                json={},
                headers={"X-User-Id": user},
                timeout=30,
            )

        started = time.monotonic()
        responses = list(pool.map(post, requests_to_send))
        elapsed = time.monotonic() - started
    assert elapsed < 60

    accepted = [r.json()["generationId"] for r in responses if r.status_code == 202]
    others = [r for r in responses if r.status_code != 202]
    assert {r.status_code for r in others} <= {409, 429}
    assert all(r.json()["code"] for r in others)  # clean JSON errors
    assert len(accepted) == len(set(accepted)) == len({p for _, p in requests_to_send})

    with pg_app.app_context():
        state = get_state()
        rows = db.session.scalar(select(func.count()).select_from(Regeneration))
        job_ids = [
            job_id
            for name in rq_queue_names(pg_app.config)
            for job_id in queue.rq_queue(state.redis, name).job_ids
        ]
    assert rows == len(accepted)
    assert sorted(job_ids) == sorted(accepted)

    env = worker_env(postgres_url, redis_url)
    workers = [
        worker_procs.spawn(["flask", "plan-regen", "worker", "--burst"], env) for _ in range(3)
    ]
    for worker in workers:
        assert worker.wait(60) == 0, worker_procs.log_tail(worker)
    final = wait_for_status(pg_app, timeout=10)
    assert set(final.values()) == {"succeeded"}
    assert len(final) == len(accepted)


# ------------------------------------------------------------------ bad input

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=15), inner),
    max_leaves=12,
)
OVERRIDE_KEYS = ["topic", "notes", "skillLevel", "weeklyHours", "learningStyle", "startDate",
                 "deadlineDate", "unknown"]  # fmt: skip
BODIES = st.one_of(
    st.binary(max_size=200),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(OVERRIDE_KEYS), JSON_VALUES).map(
        lambda overrides: json.dumps({"overrides": overrides}).encode()
    ),
)
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=300)
# Mostly JSON, so that the bodies get past the content type check to the parser.
CONTENT_TYPES = (
    st.sampled_from(["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"])
    | st.sampled_from(["text/plain", "", "x/y; q=1", "application/json-seq"])
    | HEADER_TEXT
)
HEADERS = st.fixed_dictionaries(
    # Mostly a user who owns the plans, so that the bodies reach validation.
    {"Content-Type": CONTENT_TYPES, "X-User-Id": st.sampled_from(["alice", "bob"]) | HEADER_TEXT},
    optional={
        "Idempotency-Key": HEADER_TEXT,
        "Content-Encoding": st.sampled_from(["gzip", "identity"]),
    },
)


@pytest.mark.parametrize("app_config", [NO_LIMITS])
def test_generated_bodies_and_headers_never_get_a_5xx(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    plan_ids = [make_plan(), make_plan(), "not-a-plan", "x" * 100]
    client = app.test_client()

    @given(plan_id=st.sampled_from(plan_ids), body=BODIES, headers=HEADERS)
    @settings(
        max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def never_5xx(plan_id: str, body: bytes, headers: dict[str, Any]) -> None:
        response = client.post(f"/api/v1/plans/{plan_id}/regenerate", data=body, headers=headers)
        assert response.status_code < 500, (response.status_code, response.get_data())
        assert response.status_code != 429  # no limit hides the validation behind it
        json_type = parse_options_header(headers["Content-Type"])[0].lower() == "application/json"
        assert (response.status_code == 415) != json_type, headers["Content-Type"]
        seen[response.status_code] += 1
        assert (response.is_json and "code" in (response.json or {})) or response.status_code == 202

    seen: Counter[int] = Counter()
    never_5xx()
    print(f"\nstatuses of the generated requests: {dict(sorted(seen.items()))}")
