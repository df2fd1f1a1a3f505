"""What one accepted regenerate request costs: database and Redis round trips.

Counts, not timings: the bounds below stop the route from creeping up (docs/performance.md).
SQL statements are counted with SQLAlchemy's ``before_cursor_execute`` event and commits
with its ``commit`` event; a Redis round trip is one ``send_packed_command`` of any
redis-py connection in this process (a pipeline sends all its commands at once), the real
call still goes to the real server.
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

# After the plan read: on PostgreSQL one statement inserts the regeneration and takes one
# from the monthly quota (the INSERT in a CTE of the upsert), then the commit. SQLite runs
# the INSERT and the upsert as two statements (no INSERT in a CTE there), in-process calls
# rather than round trips.
MAX_AFTER_PLAN_READ = {"postgresql": 2, "sqlite": 3}
# The rate limit (hit and window in one script), the enqueue (one pipeline).
MAX_REDIS_ROUND_TRIPS = 2
COMMIT = "COMMIT"


class Costs:
    def __init__(self) -> None:
        self.statements: list[str] = []  # SQL statements and COMMITs, in order
        self.redis_commands: list[bytes] = []

    def reset(self) -> None:
        self.statements.clear()
        self.redis_commands.clear()

    def after_plan_read(self) -> list[str]:
        first = self.statements[0]
        assert first.lstrip().upper().startswith("SELECT") and "plan_regen_plans" in first
        return self.statements[1:]


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

    def on_commit(conn: Any) -> None:
        costs.statements.append(COMMIT)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", on_execute)
    event.listen(engine, "commit", on_commit)

    def stop() -> None:
        event.remove(engine, "before_cursor_execute", on_execute)
        event.remove(engine, "commit", on_commit)

    return stop


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
    after_read = costs.after_plan_read()
    statements = "\n".join(costs.statements)
    print(f"after the plan read: {len(after_read)} ({statements})")
    with app.app_context():
        dialect = db.engine.dialect.name
    assert len(after_read) <= MAX_AFTER_PLAN_READ[dialect], statements
    assert after_read[-1] == COMMIT, statements
    assert "INSERT INTO plan_regen_usage" in statements, statements
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
