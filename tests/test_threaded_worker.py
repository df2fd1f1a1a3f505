"""`flask plan-regen worker --threads N`: many regenerations in one process, with real
processes, the real PostgreSQL and Redis, and slow providers (the built-in one's delay or
tests/openai_server.py). Each test prints what it measured.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import NO_LIMITS, plan_factory, regenerate, status_of, wait_until, worker_env
from flask import Flask
from servers import WorkerProcs
from sqlalchemy import create_engine, text

from examples.host_app import db
from flask_plan_regen import Regeneration, get_state, queue
from flask_plan_regen.models import GenerationAttempt

pytestmark = pytest.mark.slow

OPENAI = "flask_plan_regen.openai_provider:OpenAIProvider"
APPLICATION_NAME = "plan-regen-threaded-worker"
QUEUES = ["plan_regen_high", "plan_regen_default", "plan_regen_low"]


@pytest.fixture
def app_config() -> dict[str, Any]:
    # RQ keeps finished jobs, so the tests can read its finished registry (the default,
    # 0, deletes a finished job at once).
    return {**NO_LIMITS, "PLAN_REGEN_RESULT_TTL": 600}


def worker_url(postgres_url: str) -> str:
    """The database URL for the worker: its connections tell themselves apart."""
    return f"{postgres_url}?application_name={APPLICATION_NAME}"


def start_threaded(
    worker_procs: WorkerProcs, postgres_url: str, redis_url: str, threads: int, **config: str
) -> subprocess.Popen[bytes]:
    worker = worker_procs.spawn(
        ["flask", "plan-regen", "worker", "--threads", str(threads)],
        worker_env(worker_url(postgres_url), redis_url, **config),
    )
    worker_procs.wait_for_log(worker, "Listening on", timeout=60)
    return worker


def queue_regenerations(pg_app: Flask, count: int, topic: str = "Topic") -> dict[str, str]:
    """``count`` plans, each with a regeneration queued; generation id -> plan id."""
    make_plan = plan_factory(pg_app)
    client = pg_app.test_client()
    queued = {}
    for index in range(count):
        plan_id = make_plan(topic=f"{topic} {index}")
        queued[regenerate(client, plan_id)["generationId"]] = plan_id
    return queued


def jobs_in_flight(
    pg_app: Flask,
    worker_procs: WorkerProcs,
    postgres_url: str,
    redis_url: str,
    count: int,
    delay: str,
) -> tuple[dict[str, str], subprocess.Popen[bytes]]:
    """``count`` regenerations running in one worker of ``count`` threads, the built-in
    provider taking ``delay`` seconds; (generation id -> plan id, the worker)."""
    queued = queue_regenerations(pg_app, count)
    worker = start_threaded(
        worker_procs, postgres_url, redis_url, count, PLAN_REGEN_BUILTIN_DELAY=delay
    )
    wait_for(pg_app, queued, lambda r: r.status == "processing", 60, f"{count} attempts running")
    return queued, worker


def rows(pg_app: Flask, ids: Any) -> dict[str, Regeneration]:
    with pg_app.app_context():
        found = {
            row.id: row
            for row in db.session.scalars(db.select(Regeneration).where(Regeneration.id.in_(ids)))
        }
        db.session.expunge_all()
        db.session.rollback()
        return found


def attempt_outcomes(pg_app: Flask, generation_id: str) -> list[str]:
    with pg_app.app_context():
        outcomes = db.session.scalars(
            db.select(GenerationAttempt.outcome)
            .where(GenerationAttempt.regeneration_id == generation_id)
            .order_by(GenerationAttempt.number)
        ).all()
        db.session.rollback()
        return [str(outcome) for outcome in outcomes]


def wait_for(
    pg_app: Flask, ids: Any, check: Callable[[Regeneration], bool], timeout: float, what: str
) -> dict[str, Regeneration]:
    def reached() -> dict[str, Regeneration] | None:
        found = rows(pg_app, ids)
        return found if len(found) == len(ids) and all(map(check, found.values())) else None

    return wait_until(reached, timeout, what)


def ended(row: Regeneration) -> bool:
    return row.status in ("succeeded", "failed", "canceled")


def test_killed_threaded_worker_hands_every_attempt_over_within_60s(
    pg_app: Flask, postgres_url: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    queued, first = jobs_in_flight(pg_app, worker_procs, postgres_url, redis_url, 20, "120")
    # Idle, and nobody runs `sweep`: the takeover is up to the workers (two processes of
    # ten threads, from one command).
    takeover = worker_procs.spawn(
        ["flask", "plan-regen", "worker", "--workers", "2", "--threads", "10"],
        worker_env(worker_url(postgres_url), redis_url, PLAN_REGEN_BUILTIN_DELAY="1"),
    )
    worker_procs.wait_for_log(takeover, "2 workers (10 threads each)", timeout=60)
    os.killpg(first.pid, signal.SIGKILL)  # the worker and its scheduler
    killed = time.monotonic()
    first.wait()

    wait_for(pg_app, queued, lambda r: r.attempts == 2 or ended(r), 60, "every attempt taken over")
    taken_over = time.monotonic() - killed
    done = wait_for(pg_app, queued, ended, 60, "every regeneration ended")
    outcomes = {gid: attempt_outcomes(pg_app, gid) for gid in queued}
    lost = sum(row.status != "succeeded" for row in done.values())
    twice = sum(outcome.count("succeeded") > 1 for outcome in outcomes.values())
    print(f"\n20 in flight, worker SIGKILLed: all taken over after {taken_over:.1f} s, "
          f"lost: {lost}, run twice: {twice}")  # fmt: skip
    assert taken_over < 60
    assert (lost, twice) == (0, 0)
    assert all(row.attempts == 2 for row in done.values())
    assert all(outcome == ["failed", "succeeded"] for outcome in outcomes.values())


def test_cancel_stops_one_job_of_twenty(
    pg_app: Flask, postgres_url: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    queued, _ = jobs_in_flight(pg_app, worker_procs, postgres_url, redis_url, 20, "15")
    canceled_id, plan_id = next(iter(queued.items()))
    client = pg_app.test_client()
    response = client.post(
        f"/api/v1/plans/{plan_id}/regenerations/{canceled_id}/cancel",
        json={},
        headers={"X-User-Id": "alice"},
    )
    assert response.status_code == 200, response.get_json()
    sent = time.monotonic()

    def attempt_recorded() -> bool:
        return bool(attempt_outcomes(pg_app, canceled_id))

    wait_until(attempt_recorded, 10, "the canceled attempt to stop")
    stopped = time.monotonic() - sent
    others = [gid for gid in queued if gid != canceled_id]
    still_running = sum(row.status == "processing" for row in rows(pg_app, others).values())
    done = wait_for(pg_app, queued, ended, 60, "every regeneration ended")
    statuses = [done[gid].status for gid in others]
    succeeded = statuses.count("succeeded")
    print(f"\ncancel of 1 of 20: its attempt stopped after {stopped:.1f} s while "
          f"{still_running} others ran on; others: {succeeded} succeeded")  # fmt: skip
    assert done[canceled_id].status == "canceled"
    assert attempt_outcomes(pg_app, canceled_id) == ["canceled"]
    assert stopped < 5
    assert still_running == 19
    assert statuses == ["succeeded"] * 19
    assert status_of(client, plan_id, canceled_id)["status"] == "canceled"


def test_a_job_past_its_time_limit_or_crashing_fails_alone(
    pg_app: Flask, postgres_url: str, redis_url: str, worker_procs: WorkerProcs, openai_server: Any
) -> None:
    openai_server.script("Stuck 0", "slow@60")
    queued = queue_regenerations(pg_app, 1, topic="Stuck")
    queued |= queue_regenerations(pg_app, 19, topic="Steady")
    started = time.monotonic()
    worker = start_threaded(
        worker_procs, postgres_url, redis_url, 4,
        PLAN_REGEN_PROVIDER=f'"{OPENAI}"',
        PLAN_REGEN_PROVIDER_BASE_URL=f'"{openai_server.base_url}"',
        PLAN_REGEN_PROVIDER_API_KEY='"sk-test"',
        PLAN_REGEN_PROVIDER_TIMEOUT="6",
        PLAN_REGEN_MAX_ATTEMPTS="1",
    )  # fmt: skip
    stuck = next(iter(queued))
    steady = [gid for gid in queued if gid != stuck]
    with pg_app.app_context():  # a job that raises (no such regeneration) among them
        redis = get_state().redis
        crash = queue.rq_queue(redis, "plan_regen_high").enqueue_call(
            queue.JOB_FUNCTION, args=("no-such-regeneration",), job_id="no-such-regeneration"
        )
    wait_for(pg_app, steady, ended, 60, "the 19 steady regenerations ended")
    steady_done = time.monotonic() - started
    still_stuck = rows(pg_app, [stuck])[stuck].status
    done = wait_for(pg_app, queued, ended, 60, "the stuck one ended")
    with pg_app.app_context():
        duration_ms, error = db.session.execute(
            db.select(GenerationAttempt.duration_ms, GenerationAttempt.error).where(
                GenerationAttempt.regeneration_id == stuck
            )
        ).one()
    print(f"\n4 threads, 1 stuck call: 19 others ended {steady_done:.1f} s after start while it "
          f"was {still_stuck}; it failed after {duration_ms / 1000:.1f} s: {error}")  # fmt: skip
    assert all(done[gid].status == "succeeded" for gid in steady)
    assert crash.get_status() == "failed"
    assert worker.poll() is None  # the crash and the hang took nothing else down
    assert (done[stuck].status, done[stuck].failure_class) == ("failed", "timeout")
    assert duration_ms < 20_000


def test_sigterm_lets_running_jobs_finish_then_releases_the_rest(
    pg_app: Flask, postgres_url: str, redis_url: str, worker_procs: WorkerProcs, openai_server: Any
) -> None:
    provider = {
        "PLAN_REGEN_PROVIDER": f'"{OPENAI}"',
        "PLAN_REGEN_PROVIDER_BASE_URL": f'"{openai_server.base_url}"',
        "PLAN_REGEN_PROVIDER_API_KEY": '"sk-test"',
    }
    for index in range(5):
        openai_server.script(f"Quick {index}", "slow@4")
        openai_server.script(f"Long {index}", "slow@60", "good")
    quick = queue_regenerations(pg_app, 5, topic="Quick")
    long = queue_regenerations(pg_app, 5, topic="Long")
    worker = start_threaded(
        worker_procs, postgres_url, redis_url, 10, PLAN_REGEN_SHUTDOWN_GRACE="8", **provider
    )
    wait_until(lambda: len(openai_server.requests) == 10, 60, "10 provider calls")
    os.kill(worker.pid, signal.SIGTERM)
    signaled = time.monotonic()
    late = queue_regenerations(pg_app, 2, topic="Late")  # must wait for another worker
    assert worker.wait(timeout=60) == 0, worker_procs.log_tail(worker)
    stopped = time.monotonic() - signaled
    after = rows(pg_app, [*quick, *long, *late])
    quick_statuses = [after[g].status for g in quick]
    long_statuses = [after[g].status for g in long]
    print(f"\nSIGTERM with 10 running (grace 8 s): exited after {stopped:.1f} s; "
          f"quick: {quick_statuses}, long: {long_statuses}")  # fmt: skip
    assert all((after[g].status, after[g].attempts) == ("succeeded", 1) for g in quick)
    assert all((after[g].status, after[g].attempts) == ("pending", 1) for g in long)
    assert all((after[g].status, after[g].attempts) == ("pending", 0) for g in late)
    assert not openai_server.calls("Late 0") and not openai_server.calls("Late 1")
    assert 7 < stopped < 30

    start_threaded(worker_procs, postgres_url, redis_url, 10, **provider)
    done = wait_for(pg_app, [*long, *late], ended, 60, "the released attempts run again")
    assert all((done[g].status, done[g].attempts) == ("succeeded", 2) for g in long)
    assert all(attempt_outcomes(pg_app, g) == ["failed", "succeeded"] for g in long)
    assert all(done[g].status == "succeeded" for g in late)


def test_a_second_sigterm_leaves_running_attempts_to_recovery(
    pg_app: Flask, postgres_url: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    queued, worker = jobs_in_flight(pg_app, worker_procs, postgres_url, redis_url, 5, "120")
    os.kill(worker.pid, signal.SIGTERM)
    worker_procs.wait_for_log(worker, "warm shutdown")
    time.sleep(1.1)  # RQ ignores a second signal within a second of the first
    os.kill(worker.pid, signal.SIGTERM)
    signaled = time.monotonic()
    worker.wait(timeout=30)
    exited = time.monotonic() - signaled
    after = rows(pg_app, queued)
    print(f"\nsecond SIGTERM with 5 running: exited after {exited:.1f} s, "
          f"{sum(r.status == 'processing' for r in after.values())} left to recovery")  # fmt: skip
    assert exited < 10
    assert all((row.status, row.attempts) == ("processing", 1) for row in after.values())


def test_plain_rq_worker_runs_the_threaded_class(
    pg_app: Flask, postgres_url: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    queued = queue_regenerations(pg_app, 6)
    started = time.monotonic()
    worker = worker_procs.spawn(
        ["rq", "worker", "--burst", "-w", "flask_plan_regen.threaded_worker.ThreadedWorker",
         "-S", "rq.serializers.JSONSerializer", "--url", redis_url,
         "plan_regen_high", "plan_regen_default", "plan_regen_low"],
        worker_env(
            worker_url(postgres_url), redis_url,
            PLAN_REGEN_BUILTIN_DELAY="3", PLAN_REGEN_WORKER_THREADS="6",
        ),
    )  # fmt: skip
    assert worker.wait(timeout=60) == 0, worker_procs.log_tail(worker)
    took = time.monotonic() - started
    done = rows(pg_app, queued)
    print(f"\nrq worker --burst -w ThreadedWorker, 6 threads: 6 jobs of 3 s done in {took:.1f} s")
    assert all(row.status == "succeeded" for row in done.values())
    started_at = [row.started_at for row in done.values()]
    assert (max(started_at) - min(started_at)).total_seconds() < 3  # at once, not in turn


def test_twenty_waiting_jobs_hold_no_database_connection(
    pg_app: Flask, postgres_url: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    queued, _ = jobs_in_flight(pg_app, worker_procs, postgres_url, redis_url, 20, "10")
    observer = create_engine(postgres_url)
    in_use: list[int] = []
    opened: list[int] = []
    with observer.connect() as connection:
        for _ in range(20):  # while the 20 wait on the model
            counts = connection.execute(
                text(
                    "SELECT count(*) FILTER (WHERE state <> 'idle'), count(*) "
                    "FROM pg_stat_activity WHERE application_name = :name"
                ),
                {"name": APPLICATION_NAME},
            ).one()
            connection.rollback()
            in_use.append(counts[0])
            opened.append(counts[1])
            time.sleep(0.2)
    observer.dispose()
    still_running = sum(row.status == "processing" for row in rows(pg_app, queued).values())
    with pg_app.app_context():  # what `rq info` and `flask plan-regen info` read
        redis = get_state().redis
        running_in_rq = sum(q["started"] for q in queue.queue_stats(redis, QUEUES))
        (worker_state,) = queue.worker_states(redis, QUEUES)
    done = wait_for(pg_app, queued, ended, 60, "every regeneration ended")
    with pg_app.app_context():
        stats = queue.queue_stats(get_state().redis, QUEUES)
    finished = sum(
        len(queue.rq_queue(get_state(pg_app).redis, q).finished_job_registry) for q in QUEUES
    )
    print(f"\n20 jobs waiting on the model: worker connections in use max {max(in_use)}, "
          f"open max {max(opened)} (pool 5 + overflow 10); RQ: {running_in_rq} started, "
          f"worker {worker_state['state']}, then {finished} finished")  # fmt: skip
    assert still_running == 20
    assert (running_in_rq, worker_state["state"]) == (20, "busy")
    assert (sum(q["started"] for q in stats), finished) == (0, 20)
    assert max(in_use) <= 1  # at most a sweep's read, never one per waiting job
    assert max(opened) <= 15
    assert all(row.status == "succeeded" for row in done.values())
