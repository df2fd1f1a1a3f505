"""Testing mode: ``memory://`` runs every Redis use in process, ``PLAN_REGEN_EAGER`` runs
each job in the request, ``flask_plan_regen.testing.run_pending_jobs`` runs the rest."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
from app_server import serve
from conftest import ALICE, build_app, plan_factory, post_json, regenerate, status_of, wait_until
from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy

from examples.host_app import db, regen
from flask_plan_regen import (
    ConfigurationError,
    GenerationRequest,
    GenerationResult,
    PlanRegen,
    get_state,
    leases,
    queue,
    signals,
)
from flask_plan_regen.config import rq_queue_names
from flask_plan_regen.models import utcnow
from flask_plan_regen.recovery import sweep
from flask_plan_regen.testing import TEST_CONFIG, run_pending_jobs


class LeaseCheckingProvider:
    """The built-in provider's plan, noting whether the attempt's lease is held meanwhile."""

    name = "lease-checking"
    leases_seen: list[bool] = []  # noqa: RUF012 - read by the test after the job ran

    def generate(self, request: GenerationRequest) -> GenerationResult:
        # An attempt first sets its lease a third of a TTL in (a short one never does).
        state = get_state()
        held = wait_until(lambda: leases.is_held(state, request.generation_id), 5, "a lease")
        LeaseCheckingProvider.leases_seen.append(held)
        task = {"title": f"Read about {request.plan.topic}", "estimatedMinutes": 30}
        module = {"title": request.plan.topic, "estimatedMinutes": 30, "tasks": [task]}
        return GenerationResult(content={"modules": [module]}, provider=self.name, model="v1")


def tier_by_name(user_id: str) -> str:
    return "pro" if user_id.startswith("pro-") else "free"


@pytest.fixture
def memory_app(sqlite_uri: str, request: pytest.FixtureRequest) -> Iterator[Flask]:
    """The example app on ``memory://``; ``@pytest.mark.parametrize("memory_app", [config],
    indirect=True)`` adds config."""
    app = build_app(sqlite_uri, "memory://", **getattr(request, "param", {}))
    yield app
    with app.app_context():
        db.engine.dispose()


def redis_keys(app: Flask) -> set[str]:
    return {key.decode() for key in get_state(app).redis.keys("*")}


@pytest.mark.parametrize(
    "memory_app",
    [{"PLAN_REGEN_PROVIDER": LeaseCheckingProvider, "PLAN_REGEN_LEASE_TTL": 3}],
    indirect=True,
)
def test_every_redis_use_runs_in_process(memory_app: Flask) -> None:
    state = get_state(memory_app)
    assert isinstance(state.redis, fakeredis.FakeRedis)
    client = memory_app.test_client()
    plan_id = plan_factory(memory_app)()
    headers = {**ALICE, "Idempotency-Key": "first"}
    queued = client.post(f"/api/v1/plans/{plan_id}/regenerate", json={}, headers=headers)
    assert queued.status_code == 202, queued.json
    assert queued.headers["RateLimit-Remaining"] == "9"  # the limits script ran in process
    keys = redis_keys(memory_app)
    print("in-process Redis keys after one request:", sorted(keys))
    assert f"rq:queue:{queued.json['queue']}" in keys
    assert any(key.startswith("plan_regen:idempotency:") for key in keys)
    assert any(key.startswith("plan_regen_limits:") for key in keys)

    LeaseCheckingProvider.leases_seen.clear()
    assert run_pending_jobs(memory_app) == 1
    assert LeaseCheckingProvider.leases_seen == [True]  # the attempt held its lease
    assert status_of(client, plan_id, queued.json["generationId"])["status"] == "succeeded"
    replay = client.post(f"/api/v1/plans/{plan_id}/regenerate", json={}, headers=headers)
    assert replay.json["generationId"] == queued.json["generationId"]


def test_a_lost_job_is_requeued_under_a_lock_and_run(memory_app: Flask) -> None:
    client = memory_app.test_client()
    plan_id = plan_factory(memory_app)()
    generation_id = regenerate(client, plan_id)["generationId"]
    state = get_state(memory_app)
    with memory_app.app_context():
        queue.delete_job(state.redis, generation_id)  # as if Redis had lost it
        counts = sweep(state, now=utcnow() + timedelta(minutes=1))
    assert counts == {"released": 0, "requeued": 1}
    assert any(key.startswith("plan_regen:requeue:") for key in redis_keys(memory_app))
    assert run_pending_jobs(memory_app) == 1
    assert status_of(client, plan_id, generation_id)["status"] == "succeeded"


def test_each_app_has_its_own_in_process_redis(sqlite_uri: str, tmp_path: Path) -> None:
    first = build_app(sqlite_uri, "memory://")
    second = build_app(f"sqlite:///{tmp_path / 'other.sqlite'}", "memory://")
    regenerate(first.test_client(), plan_factory(first)())
    assert run_pending_jobs(second) == 0
    assert run_pending_jobs(first) == 1


@pytest.mark.parametrize(
    "memory_app", [{"PLAN_REGEN_TIER_RESOLVER": f"{__name__}:tier_by_name"}], indirect=True
)
def test_pending_jobs_run_highest_priority_first(memory_app: Flask) -> None:
    client = memory_app.test_client()
    make_plan = plan_factory(memory_app)
    free = regenerate(client, make_plan("free-user"), {"X-User-Id": "free-user"})
    pro = regenerate(client, make_plan("pro-user"), {"X-User-Id": "pro-user"})
    started: list[str] = []

    def note(sender: Flask, regeneration: dict[str, Any]) -> None:
        started.append(regeneration["generationId"])

    with signals.regeneration_started.connected_to(note, memory_app):
        assert run_pending_jobs(memory_app) == 2
    assert started == [pro["generationId"], free["generationId"]]


EVERY_SIGNAL = ("queued", "started", "succeeded", "failed")


@contextlib.contextmanager
def heard_signals(app: Flask) -> Iterator[list[tuple[str, str]]]:
    """(signal, status) for every signal the app sends while the block runs."""
    heard: list[tuple[str, str]] = []
    with contextlib.ExitStack() as stack:
        for name in EVERY_SIGNAL:

            def receiver(sender: Flask, regeneration: dict[str, Any], name: str = name) -> None:
                heard.append((name, regeneration["status"]))

            signal = getattr(signals, f"regeneration_{name}")
            stack.enter_context(signal.connected_to(receiver, app))
        yield heard


@pytest.mark.parametrize("memory_app", [TEST_CONFIG], indirect=True)
def test_eager_mode_ends_each_job_in_its_request(memory_app: Flask) -> None:
    client = memory_app.test_client()
    plan_id = plan_factory(memory_app)()
    with heard_signals(memory_app) as heard:
        answer = regenerate(client, plan_id)
    assert answer["status"] == "pending"  # the 202 says what it says in production
    assert status_of(client, plan_id, answer["generationId"])["status"] == "succeeded"
    assert heard == [("queued", "pending"), ("started", "processing"), ("succeeded", "succeeded")]
    assert run_pending_jobs(memory_app) == 0  # nothing was left on a queue


@pytest.mark.parametrize(
    "memory_app", [{**TEST_CONFIG, "PLAN_REGEN_BUILTIN_FAILURE": "provider_error"}], indirect=True
)
def test_eager_mode_runs_the_retries_at_once(memory_app: Flask) -> None:
    client = memory_app.test_client()
    plan_id = plan_factory(memory_app)()
    answer = regenerate(client, plan_id)
    failed = status_of(client, plan_id, answer["generationId"])
    print("attempts run in the request:", failed["attempts"])
    assert (failed["status"], failed["attempts"]) == ("failed", 3)
    assert [entry["class"] for entry in failed["errorHistory"]] == ["provider_error"] * 3


def test_eager_mode_works_on_a_real_redis(
    sqlite_uri: str, redis_url: str, redis_conn: redis.Redis
) -> None:
    app = build_app(sqlite_uri, redis_url, PLAN_REGEN_EAGER=True)
    client = app.test_client()
    plan_id = plan_factory(app)()
    answer = regenerate(client, plan_id)
    assert status_of(client, plan_id, answer["generationId"])["status"] == "succeeded"
    stats = queue.queue_stats(redis_conn, rq_queue_names(app.config))
    assert all(q["queued"] == 0 for q in stats), stats


def crash_on_second_load(plan_id: str) -> Any:
    """A plan loader that works for the request and raises in the job (a host's bug)."""
    calls = request.environ.setdefault("test.loads", [])
    calls.append(plan_id)
    if len(calls) == 2:
        raise RuntimeError("the host's plan loader broke")
    return get_state().store.load_plan(plan_id)


@pytest.mark.parametrize(
    "memory_app", [{**TEST_CONFIG, "SQLALCHEMY_DATABASE_URI": "sqlite://"}], indirect=True
)
def test_an_eager_job_that_raises_keeps_the_in_memory_database(memory_app: Flask) -> None:
    # build_app passes the fixture's file URI first; the parametrized one wins.
    assert memory_app.config["SQLALCHEMY_DATABASE_URI"] == "sqlite://"
    client = memory_app.test_client()
    plan_id = plan_factory(memory_app)()
    regen.plan_loader(crash_on_second_load)
    try:
        answer = regenerate(client, plan_id)
    finally:
        regen.plan_loader(None)  # type: ignore[arg-type]
    # As after a worker crash: the attempt counts as lost, the row waits for its next one.
    lost = status_of(client, plan_id, answer["generationId"])
    assert (lost["status"], lost["attempts"]) == ("pending", 1)
    assert "stopped before it finished" in lost["errorHistory"][0]["error"]


@pytest.mark.parametrize("memory_app", [TEST_CONFIG], indirect=True)
def test_eager_mode_runs_in_a_threaded_server(memory_app: Flask) -> None:
    plan_id = plan_factory(memory_app)()
    regen.plan_loader(crash_on_second_load)
    try:
        with serve(memory_app) as base_url:
            lost_status, lost = post_json(
                f"{base_url}/api/v1/plans/{plan_id}/regenerate", {}, ALICE
            )
    finally:
        regen.plan_loader(None)  # type: ignore[arg-type]
    # The failure callback ran in the request's thread (no SIGALRM there): the row was released.
    assert lost_status == 202, lost
    client = memory_app.test_client()
    assert status_of(client, plan_id, lost["generationId"])["attempts"] == 1
    with serve(memory_app) as base_url:
        status, answer = post_json(f"{base_url}/api/v1/plans", {"topic": "Baroque music"}, ALICE)
    assert status == 202, answer
    assert status_of(client, answer["planId"], answer["generationId"])["status"] == "succeeded"


@pytest.mark.parametrize(
    ("key", "value"),
    [("PLAN_REGEN_REDIS_URL", "memory://other"), ("PLAN_REGEN_EAGER", "yes")],
)
def test_testing_keys_are_checked(key: str, value: Any) -> None:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", **{key: value})
    SQLAlchemy().init_app(app)
    with pytest.raises(ConfigurationError, match=key):
        PlanRegen(app)


def test_a_worker_refuses_the_in_process_redis(memory_app: Flask) -> None:
    runner = memory_app.test_cli_runner()
    for args in (["plan-regen", "worker", "--burst"], ["plan-regen", "rq-command"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 2, result.output
        assert "memory://" in result.output
    info = runner.invoke(args=["plan-regen", "info", "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.output)["workers"] == []
