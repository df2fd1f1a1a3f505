"""The operator console's pages with 100,000 regenerations: server-side render time.

Each page is rendered by the real app (the example host app with the console
registered) through Flask's test client, so the time is the app's own: the
queries, Redis reads and the template, with no HTTP in between. The same pages
are rendered on a database of 1,000 regenerations for comparison: keyset pages
and indexed queries should cost about the same on both.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from flask import Flask, request
from sqlalchemy import delete, insert

from bench.common import Database
from examples.host_app import create_app, db
from flask_plan_regen.console import regen_admin_bp
from flask_plan_regen.models import FailureClass, GenerationAttempt, Regeneration, Spend, Status
from flask_plan_regen.quota import current_period
from flask_plan_regen.spend import GLOBAL_SCOPE, user_scope

OPERATOR = {"X-Operator": "bench"}
PREFIX = "/admin/plan-regen"
SIZES = (100_000, 1_000)
RENDERS = 9  # per page, database and round; the median is reported
CLASSES = [str(name) for name in FailureClass]


def operator() -> str | None:
    """Benchmark only: the header names the operator."""
    return request.headers.get("X-Operator")


def console_app(database: Database) -> Flask:
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": database.uri,
            "PLAN_REGEN_REDIS_URL": database.redis_url,
            "PLAN_REGEN_OPERATOR_HANDLER": operator,
        }
    )
    app.register_blueprint(regen_admin_bp, url_prefix=PREFIX)
    return app


def fill(database: Database, count: int) -> dict[str, str]:
    """``count`` regenerations over 30 days (a few an hour in the last day), one attempt
    each; return the ids and values the pages are asked about."""
    now = datetime.now(UTC)
    step = timedelta(days=30) / count
    rows, attempts = [], []
    for index in range(count):
        created = now - step * (count - index)
        kind = index % 100
        status = Status.FAILED if kind < 15 else Status.CANCELED if kind < 18 else Status.SUCCEEDED
        if index >= count - 20:
            status = Status.PROCESSING if index % 2 else Status.PENDING
        finished = created + timedelta(seconds=20) if status not in (
            Status.PENDING, Status.PROCESSING
        ) else None  # fmt: skip
        generation_id = f"{index:08x}-1111-4000-8000-000000000000"
        rows.append(
            {
                "id": generation_id,
                "plan_id": f"{index % (count // 5 or 1):08x}-0000-4000-8000-000000000000",
                "user_id": f"user-{index % 5000}",
                "kind": "regeneration",
                "status": status,
                "overrides": {},
                "tier": "free",
                "priority": (1, 5, 10)[index % 3],
                "queue": "plan_regen_low",
                "attempts": 1,
                "failure_class": CLASSES[index % len(CLASSES)] if status == Status.FAILED else None,
                "error": None,
                "error_history": [],
                "result": None,
                "quota_period": None,
                "created_at": created,
                "started_at": created + timedelta(seconds=2),
                "finished_at": finished,
                "updated_at": created,
            }
        )
        if finished is not None:
            attempts.append(
                {
                    "regeneration_id": generation_id,
                    "number": 1,
                    "outcome": Status.FAILED if status == Status.FAILED else Status.SUCCEEDED,
                    "failure_class": rows[-1]["failure_class"],
                    "duration_ms": 18_000,
                    "provider": "builtin",
                    "model": "builtin-deterministic-1",
                    "prompt_tokens": 900,
                    "completion_tokens": 2500,
                    "prompt_hash": "0" * 64,
                    "adjustments": {},
                    "created_at": finished,
                    "cost_usd": Decimal("0.0016350"),
                    "billed": True,
                }
            )
    with database.app().app_context():
        db.session.execute(delete(GenerationAttempt))
        db.session.execute(delete(Regeneration))
        for start in range(0, count, 10_000):
            db.session.execute(insert(Regeneration), rows[start : start + 10_000])
        for start in range(0, len(attempts), 10_000):
            db.session.execute(insert(GenerationAttempt), attempts[start : start + 10_000])
        # The month's ledger: a row per user who spent, and the app's.
        period = current_period(now)
        spent: defaultdict[str, Decimal] = defaultdict(Decimal)
        for attempt, row in zip(attempts, (r for r in rows if r["finished_at"]), strict=True):
            if attempt["created_at"].strftime("%Y-%m") == period:
                spent[user_scope(row["user_id"])] += attempt["cost_usd"]
                spent[GLOBAL_SCOPE] += attempt["cost_usd"]
        db.session.execute(delete(Spend))
        db.session.execute(
            insert(Spend),
            [{"scope": scope, "period": period, "spent_usd": usd} for scope, usd in spent.items()],
        )
        db.session.commit()
        # As autovacuum (PostgreSQL) or a periodic ANALYZE would have by now: planner
        # statistics, and a visibility map for index-only scans.
        with db.engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE" if database.name == "postgres" else "ANALYZE"
            )
        db.engine.dispose()
    middle = rows[count // 2]
    return {
        "middle": middle["id"],
        "user": middle["user_id"],
        "plan": middle["plan_id"],
        "day": middle["created_at"].date().isoformat(),
    }


def pages(app: Flask, picked: dict[str, str]) -> dict[str, str]:
    """Page name -> URL (a cursor from the middle of the table for the keyset page)."""
    with app.test_client() as client:
        first = client.get(f"{PREFIX}/api/regenerations", headers=OPERATOR).get_json()
    day = picked["day"]
    return {
        "overview": "/",
        "overview JSON": "/api/overview",
        "regenerations, first page": "/regenerations",
        "regenerations, next page": f"/regenerations?after={first['next']}",
        "regenerations, failed timeout": "/regenerations?status=failed&failure_class=timeout",
        "regenerations, one user": f"/regenerations?user_id={picked['user']}",
        "regenerations, one plan": f"/regenerations?plan_id={picked['plan']}",
        "regenerations, one day": f"/regenerations?created_from={day}&created_to={day}",
        "regeneration detail": f"/regenerations/{picked['middle']}",
        "actions": "/actions",
        "requeue confirmation (count)": "/actions/requeue-class?failure_class=timeout",
        "spend": "/spend",
        "spend JSON": "/api/spend",
        "providers": "/providers",
    }


def render_times(database: Database, count: int, rounds: int) -> list[dict[str, float]]:
    """Per round, the median milliseconds per page with ``count`` regenerations in
    ``database``; the pages take turns within a round."""
    picked = fill(database, count)
    app = console_app(database)
    results = []
    with app.app_context():
        urls = pages(app, picked)
        client = app.test_client()
        for path in urls.values():  # warm the caches, the pool and the templates
            for _ in range(2):
                client.get(PREFIX + path, headers=OPERATOR)
        for _ in range(rounds):
            times: dict[str, float] = {}
            for name, path in urls.items():
                samples = []
                for _ in range(RENDERS):
                    started = time.perf_counter()
                    answer = client.get(PREFIX + path, headers=OPERATOR)
                    samples.append((time.perf_counter() - started) * 1000)
                    if answer.status_code != 200:
                        raise SystemExit(f"{name} on {database.name}: {answer.status_code}")
                times[name] = statistics.median(samples)
            results.append(times)
        db.engine.dispose()
    return results
