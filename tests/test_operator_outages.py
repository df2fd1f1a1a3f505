"""Operator commands with Redis or the database stopped: one line, masked, exit code 1.

Each command runs as an operator runs it, ``flask plan-regen ...`` in a subprocess.
Redis is a real server started and then stopped; the database is a PostgreSQL URL
(with a password) at a port where no server listens any more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import worker_env
from flask import Flask
from servers import EmbeddedRedis, free_port
from test_operator_cli import fail_regeneration
from test_production_guards import run_cli

APP = "examples.host_app:create_app"
SECRET = "s3cret-pass"
COMMANDS = [
    ["sweep"],
    ["info"],
    ["info", "--json"],
    ["requeue-failed"],
    ["requeue-failed", "--dry-run"],
    ["init-db"],
]


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"PLAN_REGEN_MAX_ATTEMPTS": 1}  # a forced failure ends a regeneration at once


@pytest.fixture
def stopped_redis_url() -> Iterator[str]:
    """The URL of a Redis server that ran and was stopped, with a password in it."""
    with EmbeddedRedis() as server:
        url = server.url
    yield url.replace("redis://", f"redis://:{SECRET}@")


def check_one_line(command: list[str], env: dict[str, str], needle: str) -> str:
    result = run_cli("--app", APP, "plan-regen", *command, env=env)
    lines = result.stderr.strip().splitlines()
    print(f"plan-regen {' '.join(command)}: exit {result.returncode}, {lines}")
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert needle in lines[0] and "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout
    return lines[0]


def test_commands_with_redis_stopped_name_it_in_one_line(
    app: Flask, make_plan: Callable[..., str], sqlite_uri: str, stopped_redis_url: str
) -> None:
    fail_regeneration(app, make_plan(), "validation")  # something for requeue-failed to do
    env = worker_env(sqlite_uri, stopped_redis_url)
    masked = stopped_redis_url.replace(SECRET, "***")
    for command in COMMANDS:
        if command == ["init-db"] or "--dry-run" in command:
            continue  # they read and write only the database
        line = check_one_line(command, env, f"Redis at {masked} is unreachable")
        assert "ConnectionError" in line


def test_commands_with_the_database_stopped_name_it_in_one_line(app: Flask, redis_url: str) -> None:
    database = f"postgresql+psycopg://planner:{SECRET}@127.0.0.1:{free_port()}/plans"
    env = worker_env(database, redis_url)
    masked = database.replace(SECRET, "***")
    for command in COMMANDS:
        check_one_line(command, env, f"The database at {masked} is unreachable")
