"""What Redis pays for the service, measured on a real redis-server with real workers:
the sweep's commands per minute at any backlog, and the bytes a finished regeneration
leaves behind. Each test prints what it measured.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import redis
from conftest import (
    NO_LIMITS,
    build_app,
    plan_factory,
    regenerate,
    wait_for_status,
    wait_until,
    worker_env,
)
from flask import Flask
from servers import EmbeddedRedis, WorkerProcs
from sqlalchemy import insert

from examples.host_app import db
from flask_plan_regen import Regeneration, get_state, queue
from flask_plan_regen.config import rq_queue_names
from flask_plan_regen.models import utcnow

pytestmark = pytest.mark.slow

WINDOW = 20.0
"""Seconds each command rate is measured over (ten sweep intervals of 2 s)."""


def commands_per_minute(client: redis.Redis, window: float) -> float:
    """Commands Redis ran per minute over ``window`` seconds (INFO commandstats)."""
    client.config_resetstat()
    # A rate over a fixed window is the measurement itself, not a wait for an event.
    time.sleep(window)
    stats = client.info("commandstats")
    calls = sum(int(entry["calls"]) for entry in stats.values()) - 1  # our CONFIG RESETSTAT
    return calls * 60 / window


def pending_rows(app: Flask, count: int, prefix: str) -> list[dict[str, Any]]:
    """``count`` rows of pending regenerations last updated 5 minutes ago (past the grace
    period), ids ``<prefix>-00000``..., to insert directly: 3,000 POSTs would measure the
    web app, not the sweep."""
    old = utcnow() - timedelta(minutes=5)
    return [
        {
            "id": f"{prefix}-{n:05d}",
            "plan_id": f"plan-{n:05d}",
            "user_id": "alice",
            "tier": "free",
            "priority": 1,
            "queue": rq_queue_names(app.config)[-1],
            "overrides": {},
            "error_history": [],
            "created_at": old,
            "updated_at": old,
        }
        for n in range(count)
    ]


def insert_pending(app: Flask, count: int) -> list[str]:
    """``count`` pending rows past the grace period, each with its job queued."""
    rows = pending_rows(app, count, "backlog")
    with app.app_context():
        state = get_state()
        # Jobs first: a sweep between the two would rightly find rows without a job.
        for row in rows:
            queue.enqueue(state.redis, Regeneration(kind="regeneration", **row), app.config)
        db.session.execute(insert(Regeneration), rows)
        db.session.commit()
    return [row["id"] for row in rows]


def test_sweep_commands_per_minute_stay_flat_from_0_to_3000_pending(
    sqlite_uri: str, own_redis: EmbeddedRedis, worker_procs: WorkerProcs
) -> None:
    app = build_app(sqlite_uri, own_redis.url)
    client = redis.Redis(port=own_redis.port)
    env = worker_env(sqlite_uri, own_redis.url, PLAN_REGEN_SWEEP_INTERVAL="2")
    # Four workers on a queue of no regeneration: they sweep, the backlog stays pending.
    pool = worker_procs.spawn(["flask", "plan-regen", "worker", "--workers", "4", "idle"], env)
    worker_procs.wait_for_log(pool, "Listening on", timeout=60)
    idle = commands_per_minute(client, WINDOW)

    ids = insert_pending(app, 3000)
    backlog = commands_per_minute(client, WINDOW)
    with app.app_context():
        live = queue.live_job_ids(client, rq_queue_names(app.config))[0]
    print(
        f"\nRedis commands per minute, 4 workers sweeping every 2 s: {idle:.0f} at 0 pending, "
        f"{backlog:.0f} at {len(ids)} pending (one HGETALL a row a worker would be "
        f"{len(ids) * 4 * 30} more)"
    )
    assert set(ids) <= live  # the backlog was there, queued, all along
    assert backlog < 1.5 * idle


@pytest.mark.parametrize("app_config", [NO_LIMITS])
def test_redis_bytes_per_finished_regeneration(
    sqlite_uri: str,
    own_redis: EmbeddedRedis,
    worker_procs: WorkerProcs,
    app_config: dict[str, object],
) -> None:
    app = build_app(sqlite_uri, own_redis.url, **app_config)
    client = redis.Redis(port=own_redis.port)
    worker = worker_procs.spawn(
        ["flask", "plan-regen", "worker"], worker_env(sqlite_uri, own_redis.url)
    )
    worker_procs.wait_for_log(worker, "Listening on", timeout=60)

    def footprint() -> tuple[int, Counter[str]]:
        by_kind: Counter[str] = Counter()
        for key in client.scan_iter(count=1000):
            by_kind[re.split("[:/]", key.decode())[1]] += client.memory_usage(key) or 0
        return sum(by_kind.values()), by_kind

    before, _ = footprint()
    users = [f"user-{n}" for n in range(10)]
    make_plan = plan_factory(app)
    web = app.test_client()
    ids = [
        regenerate(web, make_plan(user), headers={"X-User-Id": user})["generationId"]
        for user in users
        for _ in range(5)
    ]
    assert set(wait_for_status(app, ids).values()) == {"succeeded"}
    # Done for RQ too: the last job's row is committed a moment before RQ ends the job.
    names = rq_queue_names(app.config)
    wait_until(lambda: not queue.live_job_ids(client, names)[0], 30, "RQ ending the jobs")
    after, by_kind = footprint()
    per_regeneration = (after - before) / len(ids)
    print(
        f"\nRedis bytes per finished regeneration: {per_regeneration:.0f} "
        f"({after - before} bytes for {len(ids)}; by key kind now: {dict(by_kind)})"
    )
    assert per_regeneration <= 1024
