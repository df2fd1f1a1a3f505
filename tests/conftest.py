"""Shared fixtures and the one set of helpers every test file uses.

Fixtures: a real Redis, the example app on SQLite (``app``) or PostgreSQL
(``pg_app``), configured through ``app_config`` (override it in a module or
parametrize it: config goes through ``init_app``'s checks like a host's).

Helpers: :func:`build_app`, :func:`plan_factory`, :func:`regenerate`,
:func:`status_of`, :func:`run_jobs`, :func:`wait_until`, :func:`wait_for_status`,
:func:`worker_env`, :func:`code_blocks` (of the docs).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text

from examples.host_app import create_app, db
from flask_plan_regen import Regeneration, get_state, metadata, queue
from flask_plan_regen.config import rq_queue_names
from flask_plan_regen.models import TERMINAL_STATUSES

pytest_plugins = [
    "servers",  # redis_url, postgres_url, postgres_server, worker_procs
    "stripe_server",  # localstripe_url, stripe_client, customers, subscribe, stripe_app
    "openai_server",  # openai_server
]

REPO_ROOT = Path(__file__).resolve().parent.parent
ALICE = {"X-User-Id": "alice"}
BOB = {"X-User-Id": "bob"}

# Rate limit and quota out of the way of tests that send many requests as one user.
NO_LIMITS: dict[str, Any] = {
    "PLAN_REGEN_RATE_LIMIT": "1000/hour",
    "PLAN_REGEN_MONTHLY_QUOTAS": {"free": "unlimited", "starter": "unlimited", "pro": "unlimited"},
}


@pytest.fixture(autouse=True)
def _push_request_context() -> None:
    """Turn off pytest-flask's request context around every test that uses ``app``.

    With it, every test-client request of a test shares one app context, so one
    database session and one ``g``: state would leak between requests that in
    production never share anything. Each request gets its own context instead.
    """


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the session's Redis, emptied before each test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


def build_app(database_uri: str, redis_url: str, **config: Any) -> Flask:
    app = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": database_uri,
            "PLAN_REGEN_REDIS_URL": redis_url,
            **config,
        }
    )
    with app.app_context():
        metadata.create_all(db.engine)
    return app


@pytest.fixture
def sqlite_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'app.sqlite'}"


@pytest.fixture
def app_config() -> dict[str, Any]:
    """Extra config for the ``app`` fixture; override in a module to change it."""
    return {}


@pytest.fixture
def app(
    sqlite_uri: str, redis_url: str, redis_conn: redis.Redis, app_config: dict[str, Any]
) -> Iterator[Flask]:
    """The example host app on SQLite and the real Redis."""
    app = build_app(sqlite_uri, redis_url, **app_config)
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def pg_app(
    postgres_url: str, redis_url: str, redis_conn: redis.Redis, app_config: dict[str, Any]
) -> Iterator[Flask]:
    """The example host app on the real PostgreSQL, with empty tables."""
    app = build_app(postgres_url, redis_url, **app_config)
    with app.app_context():
        tables = ", ".join(metadata.tables)
        with db.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def make_plan(app: Flask) -> Callable[..., str]:
    return plan_factory(app)


def plan_factory(app: Flask) -> Callable[..., str]:
    def make(owner: str = "alice", **fields: Any) -> str:
        fields.setdefault("topic", "Rust for web services")
        with app.app_context():
            plan_id = get_state().store.create_plan(owner, fields)
            db.session.commit()
            return plan_id

    return make


T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 30.0, what: str = "the condition") -> T:
    """Poll ``condition`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s (last: {value!r})")
        time.sleep(0.05)


def regenerate(
    client: FlaskClient, plan_id: str, headers: dict[str, str] = ALICE, **overrides: Any
) -> dict[str, Any]:
    """Ask for a regeneration (overrides as keyword arguments); assert 202, return the answer."""
    body = {"overrides": overrides} if overrides else {}
    response = client.post(f"/api/v1/plans/{plan_id}/regenerate", json=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    answer: dict[str, Any] = response.get_json()
    return answer


def status_of(
    client: FlaskClient, plan_id: str, generation_id: str, headers: dict[str, str] = ALICE
) -> dict[str, Any]:
    """The status route's answer for one regeneration."""
    response = client.get(f"/api/v1/plans/{plan_id}/regenerations/{generation_id}", headers=headers)
    assert response.status_code == 200, response.get_json()
    document: dict[str, Any] = response.get_json()
    return document


def statuses(app: Flask, ids: Collection[str] | None = None) -> dict[str, str]:
    """Regeneration id -> status, read from the database now."""
    query = select(Regeneration.id, Regeneration.status)
    if ids is not None:
        query = query.where(Regeneration.id.in_(ids))
    with app.app_context():
        found = {row.id: row.status for row in db.session.execute(query)}
        db.session.rollback()  # a fresh snapshot next time
        return found


def wait_for_status(
    app: Flask,
    ids: Collection[str] | None = None,
    wanted: Collection[str] = TERMINAL_STATUSES,
    timeout: float = 60.0,
) -> dict[str, str]:
    """Wait until every regeneration (or those in ``ids``) is in ``wanted``; return id -> status."""

    def reached() -> dict[str, str] | None:
        found = statuses(app, ids)
        return found if found and all(status in wanted for status in found.values()) else None

    return wait_until(reached, timeout, f"regenerations reaching {sorted(wanted)}")


def run_jobs(app: Flask) -> int:
    """Run queued jobs in this process (RQ's SimpleWorker, burst); return how many were queued."""
    with app.app_context():
        return queue.run_burst(get_state().redis, rq_queue_names(app.config))


def lose_the_queue(app: Flask) -> None:
    """Point only the enqueue at a Redis that is not there (the rate limiter keeps its own).

    Failing exactly at the enqueue, after everything before it succeeded, is the
    case where a recorded row and a charged quota must be undone.
    """
    from servers import free_port

    state = get_state(app)
    state.redis = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")


def worker_env(database_uri: str, redis_url: str, **config: str) -> dict[str, str]:
    """Environment for a worker subprocess that loads the example host app."""
    env = {
        "FLASK_APP": "examples.host_app:create_app",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "SQLALCHEMY_DATABASE_URI": database_uri,
        "PLAN_REGEN_REDIS_URL": redis_url,
    }
    env.update({f"FLASK_{key}": value for key, value in config.items()})
    return env


def post_json(url: str, body: Any, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """POST ``body`` as JSON with urllib; return (status, decoded JSON answer)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


_FENCE = re.compile(
    r"^(?P<indent> *)```(?P<language>\w*)\n(?P<code>.*?)^(?P=indent)```$", re.M | re.S
)


def code_blocks(markdown: Path, language: str = "python") -> list[str]:
    """The fenced code blocks in ``language`` of a Markdown file, dedented, in order."""
    return [
        "".join(line.removeprefix(match["indent"]) for line in match["code"].splitlines(True))
        for match in _FENCE.finditer(markdown.read_text())
        if match["language"] == language
    ]
