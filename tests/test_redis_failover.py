"""A Sentinel failover under load, with real processes: a Redis primary, its replica and
three Sentinels, the web app over HTTP, two worker pools, PostgreSQL.

Prints what it measured: seconds to 202 again after the promotion, jobs lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from app_server import serve
from conftest import NO_LIMITS, build_app, plan_factory, wait_for_status, worker_env
from flask import Flask
from sentinels import RedisWithSentinels
from servers import WorkerProcs
from sqlalchemy import text

from examples.host_app import db
from flask_plan_regen import metadata

pytestmark = pytest.mark.slow

RATE = 20  # POSTs a second


@pytest.fixture
def redis_set(tmp_path: Path) -> Iterator[RedisWithSentinels]:
    with RedisWithSentinels(tmp_path / "redis") as started:
        yield started


@pytest.fixture
def sentinel_app(postgres_url: str, redis_set: RedisWithSentinels) -> Iterator[Flask]:
    app = build_app(postgres_url, redis_set.url, **NO_LIMITS)
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(metadata.tables)} RESTART IDENTITY CASCADE"))
    yield app
    with app.app_context():
        db.engine.dispose()


def test_sentinel_failover_under_load_loses_nothing_and_202s_again_within_10s(
    sentinel_app: Flask,
    postgres_url: str,
    redis_set: RedisWithSentinels,
    worker_procs: WorkerProcs,
) -> None:
    env = worker_env(postgres_url, redis_set.url)
    pools = [
        worker_procs.spawn(["flask", "plan-regen", "worker"], env),
        worker_procs.spawn(["flask", "plan-regen", "worker", "--workers", "2"], env),
    ]
    for pool in pools:
        worker_procs.wait_for_log(pool, "Listening on", timeout=60)
    make_plan = plan_factory(sentinel_app)
    plans = [make_plan() for _ in range(40 * RATE)]
    answers: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    with serve(sentinel_app) as base_url:

        def post_at_rate() -> None:
            session = requests.Session()
            for n, plan_id in enumerate(plans):
                due = started + n / RATE
                if stop.wait(max(0.0, due - time.monotonic())):
                    return
                response = session.post(
                    f"{base_url}/api/v1/plans/{plan_id}/regenerate",
                    json={},
                    headers={"X-User-Id": "alice"},
                    timeout=10,
                )
                body = response.json()
                answers.append((time.monotonic(), response.status_code, body.get("generationId")))

        started = time.monotonic()
        poster = threading.Thread(target=post_at_rate)
        poster.start()
        try:
            old_primary = redis_set.primary.port
            while len(answers) < 3 * RATE:  # three seconds of normal service first
                poster.join(0.05)
            redis_set.kill_primary()
            killed = time.monotonic()
            while redis_set.primary_port() == old_primary:
                assert time.monotonic() - killed < 30, "no promotion within 30 s"
                poster.join(0.05)
            promoted = time.monotonic()

            def served_since(moment: float) -> list[float]:
                return [at for at, status, _ in answers if at > moment and status == 202]

            while len(served_since(promoted)) < 3 * RATE:  # three seconds of service again
                assert time.monotonic() - promoted < 30, "no 202 within 30 s of the promotion"
                poster.join(0.05)
        finally:
            stop.set()
            poster.join(30)

    accepted = [generation_id for _, status, generation_id in answers if status == 202]
    refused = [status for _, status, _ in answers if status != 202]
    again = served_since(promoted)[0] - promoted
    final = wait_for_status(sentinel_app, accepted, timeout=120)
    lost = [generation_id for generation_id, status in final.items() if status != "succeeded"]
    print(
        f"\nSentinel failover at {RATE} POSTs/s: promotion {promoted - killed:.1f} s after the "
        f"primary was killed; 202 again {max(again, 0.0):.1f} s after the promotion, no "
        f"restart; {len(accepted)} accepted, {len(refused)} answered "
        f"{sorted(set(refused))}; jobs lost: {len(lost)}"
    )
    assert set(refused) <= {503}
    assert again < 10
    assert len(final) == len(accepted)
    assert lost == []
    assert all(pool.poll() is None for pool in pools)
