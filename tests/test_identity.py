"""Who is asking: one request's user is never another's, and a bad user id is the host's bug."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import requests
from app_server import serve
from conftest import ALICE, BOB, regenerate
from flask import Flask, g, request

from flask_plan_regen import get_state


def tier_by_user(user_id: str) -> str:
    return "pro" if user_id == "alice" else "free"


@pytest.mark.parametrize("app_config", [{"PLAN_REGEN_TIER_RESOLVER": tier_by_user}])
@pytest.mark.parametrize("shared", ["app_context", "test_request_context"])
def test_two_users_served_inside_one_app_context_are_each_themselves(
    app: Flask, make_plan: Callable[..., str], shared: str
) -> None:
    """A host's tests push one context around several requests (pytest-flask pushes a
    request context): the requests share ``g`` and must still not share a user."""
    alices_plan = make_plan("alice")
    client = app.test_client()
    with getattr(app, shared)():
        mine = client.get(f"/api/v1/plans/{alices_plan}", headers=ALICE)
        stolen = client.get(f"/api/v1/plans/{alices_plan}", headers=BOB)
        bobs_regenerate = client.post(
            f"/api/v1/plans/{alices_plan}/regenerate", json={}, headers=BOB
        )
        tiers = [client.get("/api/v1/usage", headers=user).json["tier"] for user in (ALICE, BOB)]
        package_keys = [key for key in vars(g) if "regen" in key or "user" in key]

    assert mine.status_code == 200
    assert (stolen.status_code, stolen.json["code"]) == (404, "PLAN_NOT_FOUND")
    assert (bobs_regenerate.status_code, bobs_regenerate.json["code"]) == (404, "PLAN_NOT_FOUND")
    assert tiers == ["pro", "free"]
    assert package_keys == []  # nothing per request is kept on g


def test_the_auth_hook_runs_once_per_request_never_once_per_context(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    calls: list[str] = []
    state = get_state(app)
    original = state.registered_hooks.auth_handler

    def counting() -> str | None:
        calls.append(request.path)
        return original() if original else None

    state.configured_hooks.auth_handler = counting
    client = app.test_client()
    plan_id = make_plan()
    with app.app_context():
        regenerate(client, plan_id)  # auth, rate limit, plan, tier: one call
        client.post(
            f"/api/v1/plans/{plan_id}/regenerate",
            json={},
            headers={**ALICE, "Idempotency-Key": "once"},
        )
    assert len(calls) == 2


USER_IDS: dict[str, Any] = {
    "int": 42,
    "too-long": "u" * 256,
    "nul": "ali\x00ce",
    "surrogate": "\udc00",
    "bytes": b"alice",
    "false": False,
}


def user_id_from_header() -> Any:
    """The auth hook of these tests: the header names which value it returns."""
    kind = request.headers.get("X-Kind")
    if kind is None:
        return request.headers.get("X-User-Id")
    return USER_IDS.get(kind, "")


@pytest.mark.parametrize("kind", sorted(USER_IDS))
@pytest.mark.parametrize("app_config", [{"PLAN_REGEN_AUTH_HANDLER": user_id_from_header}])
def test_a_user_id_the_database_cannot_store_is_a_500_naming_the_hook(
    pg_app: Flask, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Over HTTP against PostgreSQL: never a database error, never stored."""
    caplog.set_level(logging.ERROR, logger="flask_plan_regen")
    with serve(pg_app) as base_url:
        answers = [
            requests.post(
                f"{base_url}/api/v1/plans", json={"topic": "Rust"}, headers={"X-Kind": kind}
            ),
            requests.get(f"{base_url}/api/v1/usage", headers={"X-Kind": kind}),
        ]
        # A 255-character id is fine, and the hook's "nobody" still answers 401.
        fine = requests.get(f"{base_url}/api/v1/usage", headers={"X-User-Id": "u" * 255})
        nobody = requests.get(f"{base_url}/api/v1/usage", headers={"X-Kind": "empty"})
    for answer in answers:
        assert (answer.status_code, answer.json()["code"]) == (500, "INVALID_USER_ID")
        assert answer.json()["error"] == "The user could not be identified."
    assert fine.status_code == 200
    assert (nobody.status_code, nobody.json()["code"]) == (401, "UNAUTHORIZED")
    logged = [r.getMessage() for r in caplog.records if "INVALID_USER_ID" in r.getMessage()]
    print(f"\n{logged[0]}")
    assert len(logged) == 2
    assert all(f"{__name__}.user_id_from_header returned" in line for line in logged)
    assert not any("psycopg" in r.getMessage() or r.exc_info for r in caplog.records)
