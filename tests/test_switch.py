"""PLAN_REGEN_ENABLED = False: 503 REGENERATION_DISABLED and nothing queued or counted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from conftest import ALICE
from flask import Flask
from rq import Queue
from sqlalchemy import func, select

from examples.host_app import db
from flask_plan_regen import Regeneration


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"PLAN_REGEN_ENABLED": False}


def test_switched_off_answers_503_and_queues_nothing(
    app: Flask, make_plan: Callable[..., str], redis_conn: redis.Redis
) -> None:
    client = app.test_client()

    answer = client.post(f"/api/v1/plans/{make_plan()}/regenerate", json={}, headers=ALICE)

    assert answer.status_code == 503
    assert answer.json["code"] == "REGENERATION_DISABLED"
    assert "switched off" in answer.json["error"]
    assert answer.headers["RateLimit-Remaining"] == "9"
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Regeneration)) == 0
    for name, _ in app.config["PLAN_REGEN_QUEUES"]:
        assert Queue(name, connection=redis_conn).count == 0
    usage = client.get("/api/v1/usage", headers=ALICE).json
    assert usage["monthly"]["used"] == 0


def test_a_bad_body_is_still_a_400_while_switched_off(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    answer = app.test_client().post(
        f"/api/v1/plans/{make_plan()}/regenerate", json={"overrides": {"x": 1}}, headers=ALICE
    )

    assert answer.status_code == 400
