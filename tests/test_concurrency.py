"""The one-active-regeneration rule under real concurrency, on PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from app_server import serve
from conftest import ALICE, plan_factory, post_json
from flask import Flask
from rq import Queue
from rq.serializers import JSONSerializer
from sqlalchemy import select

from flask_plan_regen import Regeneration, get_state

pytestmark = pytest.mark.postgres


@pytest.fixture
def app_config() -> dict[str, Any]:
    # Twenty requests from one user: keep the rate limit and the monthly quota (each
    # reserved before the 409 and given back after it) out of the way.
    return {
        "PLAN_REGEN_RATE_LIMIT": "100/hour",
        "PLAN_REGEN_MONTHLY_QUOTAS": {"free": "unlimited", "starter": 10, "pro": 50},
    }


def test_twenty_simultaneous_requests_for_one_plan_give_exactly_one_202(pg_app: Flask) -> None:
    plan_id = plan_factory(pg_app)()
    barrier = threading.Barrier(20)
    with serve(pg_app) as base_url:
        url = f"{base_url}/api/v1/plans/{plan_id}/regenerate"

        def send(_: int) -> tuple[int, dict[str, Any]]:
            barrier.wait()
            return post_json(url, {"overrides": {"weeklyHours": 4}}, ALICE)

        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(send, range(20)))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [202] + [409] * 19, answers
    [accepted] = [body for status, body in answers if status == 202]
    conflicts = [body for status, body in answers if status == 409]
    assert all(body["code"] == "REGENERATION_ALREADY_QUEUED" for body in conflicts)
    assert {body["details"]["generationId"] for body in conflicts} == {accepted["generationId"]}
    with pg_app.app_context():
        state = get_state()
        rows = state.db.session.scalars(select(Regeneration.id)).all()
        assert rows == [accepted["generationId"]]
        queue = Queue("plan_regen_low", connection=state.redis, serializer=JSONSerializer)
        assert queue.job_ids == [accepted["generationId"]]
