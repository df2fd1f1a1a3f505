"""What one accepted regenerate request costs: SQL statements and Redis round trips.

Counts, not timings: the bounds below stop the route from creeping up (docs/performance.md).
SQL statements are counted with SQLAlchemy's ``before_cursor_execute`` event; a Redis round
trip is one ``send_packed_command`` of any redis-py connection in this process (a pipeline
sends all its commands at once), the real call still goes to the real server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from conftest import plan_factory, regenerate
from flask import Flask
from redis.connection import AbstractConnection
from sqlalchemy import event

from examples.host_app import db
from flask_plan_regen.config import rq_queue_names

# Read the plan, look for an active regeneration (409 before any quota is taken), take one
# from the monthly quota (one upsert), insert the regeneration.
MAX_SQL_STATEMENTS = 3
# The rate limit (hit and window in one script), the enqueue (one pipeline).
MAX_REDIS_ROUND_TRIPS = 2


class Costs:
    def __init__(self) -> None:
        self.statements: list[str] = []
        self.redis_commands: list[bytes] = []

    def reset(self) -> None:
        self.statements.clear()
        self.redis_commands.clear()


@pytest.fixture
def costs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Costs]:
    counted = Costs()
    send = AbstractConnection.send_packed_command

    def counting_send(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        packed = command if isinstance(command, bytes | str) else b"".join(command)
        counted.redis_commands.append(packed if isinstance(packed, bytes) else packed.encode())
        send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting_send)
    yield counted


def watch_sql(app: Flask, costs: Costs) -> Callable[[], None]:
    def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        costs.statements.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", on_execute)
    return lambda: event.remove(engine, "before_cursor_execute", on_execute)


def accepted_request_costs(app: Flask, costs: Costs) -> Costs:
    """Costs of the second of two accepted requests (the first opens the pooled connections)."""
    make_plan = plan_factory(app)
    plans = [make_plan(owner) for owner in ("alice", "bob")]
    client = app.test_client()
    stop_watching = watch_sql(app, costs)
    try:
        for owner, plan_id in zip(("alice", "bob"), plans, strict=True):
            costs.reset()
            topic = "Machine learning interview prep"
            regenerate(client, plan_id, {"X-User-Id": owner}, topic=topic)
    finally:
        stop_watching()
    return costs


def assert_within_bounds(app: Flask, costs: Costs, redis_conn: redis.Redis) -> None:
    statements = "\n".join(costs.statements)
    assert len(costs.statements) <= MAX_SQL_STATEMENTS, statements
    assert costs.statements[-1].lstrip().upper().startswith("INSERT"), statements
    trips = b"\n".join(costs.redis_commands)
    assert len(costs.redis_commands) <= MAX_REDIS_ROUND_TRIPS, trips
    assert b"rq:queue:" in trips  # the job really went to its queue in that round trip
    queues = [f"rq:queue:{name}" for name in rq_queue_names(app.config)]
    assert sum(redis_conn.llen(key) for key in queues) == 2


def test_accepted_request_costs_on_sqlite(
    app: Flask, redis_conn: redis.Redis, costs: Costs
) -> None:
    assert_within_bounds(app, accepted_request_costs(app, costs), redis_conn)


@pytest.mark.postgres
def test_accepted_request_costs_on_postgres(
    pg_app: Flask, redis_conn: redis.Redis, costs: Costs
) -> None:
    assert_within_bounds(pg_app, accepted_request_costs(pg_app, costs), redis_conn)
