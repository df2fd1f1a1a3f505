"""The operator console over HTTP: who may use it, CSRF, its JSON documents and actions.

The browser drives the same pages in test_console_browser.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from conftest import (
    ALICE,
    NO_LIMITS,
    build_app,
    lose_the_queue,
    plan_factory,
    regenerate,
    run_jobs,
    wait_until,
)
from console_support import CONSOLE_CONFIG, OPERATOR, PREFIX, csrf_token, with_console
from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import insert, inspect, select

from examples.host_app import db
from flask_plan_regen import GenerationAttempt, PlanRegen, Regeneration, get_state, switch
from flask_plan_regen.admin import collect_info
from flask_plan_regen.cost_report import cost_report
from flask_plan_regen.models import new_id, utcnow
from flask_plan_regen.quota import current_period
from flask_plan_regen.store import create_tables


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {**NO_LIMITS, **CONSOLE_CONFIG, "PLAN_REGEN_MAX_ATTEMPTS": 1}


@pytest.fixture
def console(app: Flask) -> Flask:
    return with_console(app)


def admin_urls(app: Flask) -> list[tuple[str, str]]:
    """(method, URL) of every rule of the console's blueprint, arguments filled in."""
    found = []
    with app.test_request_context():
        for rule in app.url_map.iter_rules():
            if not rule.endpoint.startswith("plan_regen_admin."):
                continue
            values = {name: "x" for name in rule.arguments}
            url = app.url_for(rule.endpoint, **values)
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                found.append((method, url))
    return found


@pytest.mark.parametrize("hooked", [True, False], ids=["no operator", "no operator hook"])
def test_every_admin_url_answers_403_without_an_operator(
    sqlite_uri: str, redis_url: str, redis_conn: Any, hooked: bool
) -> None:
    config = {**CONSOLE_CONFIG} if hooked else {}
    app = with_console(build_app(sqlite_uri, redis_url, **config))
    client = app.test_client()
    urls = admin_urls(app)
    # Every page, its JSON, every action and the static files: a new URL is counted here.
    assert len(urls) >= 14, urls
    answers = {
        (method, url): client.open(url, method=method, headers={} if hooked else OPERATOR)
        for method, url in urls
    }
    print(f"admin URLs checked: {len(answers)}")
    refused = {key: answer.status_code for key, answer in answers.items()}
    assert set(refused.values()) == {403}, refused
    for (_, url), answer in answers.items():
        if "/api/" in url:
            assert answer.get_json()["code"] == "OPERATOR_REQUIRED"
    with app.app_context():
        assert db.session.query(Regeneration).count() == 0


def test_a_post_without_a_valid_csrf_token_is_refused(
    console: Flask, make_plan: Callable[..., str]
) -> None:
    client = console.test_client()
    switch = f"{PREFIX}/actions/switch"
    missing = client.post(switch, data={"enabled": "off"}, headers=OPERATOR)
    forged = client.post(switch, data={"enabled": "off", "csrf_token": "x.y.z"}, headers=OPERATOR)
    other = client.post(
        switch,
        data={"enabled": "off", "csrf_token": csrf_token(client, {"X-Operator": "mallory"})},
        headers=OPERATOR,
    )
    json_missing = client.post(switch, json={"enabled": False}, headers=OPERATOR)
    for answer in (missing, forged, other, json_missing):
        assert answer.status_code == 403
    assert json_missing.get_json()["code"] == "CSRF_FAILED"
    print("refused:", [answer.status_code for answer in (missing, forged, other, json_missing)])
    # Nothing was switched: regenerations are still accepted.
    regenerate(client, make_plan())

    token = csrf_token(client)
    switched = client.post(switch, data={"enabled": "off", "csrf_token": token}, headers=OPERATOR)
    assert switched.status_code == 303
    shown = client.get(switched.headers["Location"], headers=OPERATOR).get_data(as_text=True)
    assert "new regenerations are refused (503) until switched on" in shown
    crafted = client.get(f"{PREFIX}/actions?notice=Everything+was+requeued", headers=OPERATOR)
    assert "Everything was requeued" not in crafted.get_data(as_text=True)
    refused = client.post(f"/api/v1/plans/{make_plan()}/regenerate", json={}, headers=ALICE)
    assert refused.status_code == 503 and refused.get_json()["code"] == "REGENERATION_DISABLED"
    on = client.post(switch, json={"enabled": True}, headers={**OPERATOR, "X-CSRF-Token": token})
    assert on.status_code == 200 and on.get_json()["action"] == "switch on"
    regenerate(client, make_plan())
    recent = client.get(f"{PREFIX}/api/actions", headers=OPERATOR).get_json()["recent"]
    assert [(a["operator"], a["action"]) for a in recent] == [
        ("olivia", "switch on"),
        ("olivia", "switch off"),
    ]


def test_the_json_documents_show_what_happened(
    console: Flask, make_plan: Callable[..., str]
) -> None:
    client = console.test_client()
    done = [regenerate(client, make_plan())["generationId"] for _ in range(2)]
    run_jobs(console)
    console.config["PLAN_REGEN_BUILTIN_FAILURE"] = "validation"
    failed = [regenerate(client, make_plan())["generationId"] for _ in range(3)]
    run_jobs(console)
    console.config["PLAN_REGEN_BUILTIN_FAILURE"] = None
    waiting = regenerate(client, make_plan())["generationId"]

    overview = client.get(f"{PREFIX}/api/overview", headers=OPERATOR).get_json()
    assert overview["statuses"] == {"pending": 1, "processing": 0}
    current = overview["hours"][-1]
    assert (current["succeeded"], current["failed"]) == (2, {"validation": 3})
    assert sum(hour["succeeded"] for hour in overview["hours"]) == 2
    (low,) = [q for q in overview["queues"] if q["waiting"]]
    assert low["waiting"] == 1 and low["oldestEnqueuedAt"] is not None
    (priority,) = overview["lastHour"]
    assert priority["ended"] == 5 and priority["waitP50Seconds"] is not None
    print(f"p50 wait {priority['waitP50Seconds']:.3f} s, p95 {priority['waitP95Seconds']:.3f} s")

    listed = client.get(f"{PREFIX}/api/regenerations?status=failed", headers=OPERATOR).get_json()
    assert {item["generationId"] for item in listed["items"]} == set(failed)
    assert listed["next"] is None
    detail = client.get(f"{PREFIX}/api/regenerations/{failed[0]}", headers=OPERATOR).get_json()
    assert detail["regeneration"]["attemptLog"][0]["failureClass"] == "validation"
    events = [event["event"] for event in detail["timeline"]]
    assert events == ["submitted", "attempt 1 started", "attempt 1 failed", "failed"]

    token = csrf_token(client)
    headers = {**OPERATOR, "X-CSRF-Token": token}
    preview = client.get(
        f"{PREFIX}/api/actions/requeue-class?failure_class=validation", headers=OPERATOR
    ).get_json()
    assert preview["count"] == 3
    one = client.post(f"{PREFIX}/actions/requeue/{failed[0]}", json={}, headers=headers)
    assert one.status_code == 200, one.get_json()
    (new,) = one.get_json()["created"]
    again = client.post(f"{PREFIX}/actions/requeue/{failed[0]}", json={}, headers=headers)
    assert again.status_code == 409  # superseded by the one just queued
    rest = client.post(
        f"{PREFIX}/actions/requeue-class", json={"failureClass": "validation"}, headers=headers
    ).get_json()
    assert rest["touched"] == failed[1:] and len(rest["created"]) == 2
    canceled = client.post(f"{PREFIX}/actions/cancel/{waiting}", json={}, headers=headers)
    assert canceled.status_code == 200
    finished = client.post(f"{PREFIX}/actions/cancel/{done[0]}", json={}, headers=headers)
    assert finished.status_code == 409
    run_jobs(console)
    detail = client.get(f"{PREFIX}/api/regenerations/{new}", headers=OPERATOR).get_json()
    assert detail["regeneration"]["status"] == "succeeded"
    timeline = client.get(f"{PREFIX}/api/regenerations/{failed[0]}", headers=OPERATOR)
    assert "operator olivia: requeue" in [e["event"] for e in timeline.get_json()["timeline"]]


def insert_rows(app: Flask, count: int, **values: Any) -> list[str]:
    start = utcnow() - timedelta(days=3)
    rows = [
        {
            "id": new_id(),
            "plan_id": new_id(),
            "user_id": f"user{i % 7}",
            "kind": "regeneration",
            "status": "succeeded",
            "overrides": {},
            "tier": "free",
            "priority": 1,
            "queue": "plan_regen_low",
            "attempts": 1,
            "error_history": [],
            # Pairs of rows share a creation time: the cursor must tell them apart by id.
            "created_at": start + timedelta(seconds=i // 2),
            "updated_at": start,
            **values,
        }
        for i in range(count)
    ]
    with app.app_context():
        db.session.execute(insert(Regeneration), rows)
        db.session.commit()
    return [row["id"] for row in rows]


def test_keyset_pages_list_every_row_once_newest_first(console: Flask) -> None:
    ids = insert_rows(console, 123)
    insert_rows(console, 5, user_id="someone-else")
    client = console.test_client()
    seen: list[dict[str, Any]] = []
    url = f"{PREFIX}/api/regenerations?user_id=user3"
    pages = 0
    while url:
        page = client.get(url, headers=OPERATOR).get_json()
        seen += page["items"]
        pages += 1
        url = (
            f"{PREFIX}/api/regenerations?user_id=user3&after={page['next']}" if page["next"] else ""
        )
    wanted = [i for n, i in enumerate(ids) if n % 7 == 3]
    assert sorted(item["generationId"] for item in seen) == sorted(wanted)
    stamps = [(item["createdAt"], item["generationId"]) for item in seen]
    assert stamps == sorted(stamps, reverse=True)
    everything = 0
    url = f"{PREFIX}/api/regenerations"
    while url:
        page = client.get(url, headers=OPERATOR).get_json()
        everything += len(page["items"])
        url = f"{PREFIX}/api/regenerations?after={page['next']}" if page["next"] else ""
    print(f"user3: {len(seen)} rows in {pages} page(s); all: {everything} rows")
    assert everything == 128
    bad = client.get(f"{PREFIX}/api/regenerations?after=nonsense", headers=OPERATOR)
    assert bad.status_code == 400 and bad.get_json()["code"] == "INVALID_FILTER"
    bad = client.get(f"{PREFIX}/api/regenerations?status=sleeping", headers=OPERATOR)
    assert bad.status_code == 400
    bad = client.get(f"{PREFIX}/api/regenerations?user_id=a%00b", headers=OPERATOR)
    assert bad.status_code == 400
    for generation_id in ("a%00b", "x" * 40):
        missing = client.get(f"{PREFIX}/api/regenerations/{generation_id}", headers=OPERATOR)
        assert missing.status_code == 404, generation_id
    html = client.get(f"{PREFIX}/regenerations?created_from=2001-02-30", headers=OPERATOR)
    assert html.status_code == 400 and "YYYY-MM-DD" in html.get_data(as_text=True)
    last_day = client.get(f"{PREFIX}/api/regenerations?created_to=9999-12-31", headers=OPERATOR)
    assert last_day.status_code == 400 and last_day.get_json()["code"] == "INVALID_FILTER"


def test_every_page_renders_for_an_operator(console: Flask, make_plan: Callable[..., str]) -> None:
    client = console.test_client()
    generation_id = regenerate(client, make_plan())["generationId"]
    pages = ["/", "/regenerations", f"/regenerations/{generation_id}", "/actions"]
    for path in [*pages, "/actions/requeue-class?failure_class=timeout", "/static/console.css"]:
        answer = client.get(PREFIX + path, headers=OPERATOR)
        assert answer.status_code == 200, path
        # One-click actions: never framed by another site, never cached.
        assert answer.headers["X-Frame-Options"] == "DENY", path
        if not path.startswith("/static/"):  # a stylesheet holds nothing to keep private
            assert answer.headers["Cache-Control"] == "no-store", path
    missing = client.get(f"{PREFIX}/regenerations/{new_id()}", headers=OPERATOR)
    assert missing.status_code == 404


def test_init_db_adds_the_console_indexes_to_existing_tables(console: Flask) -> None:
    with console.app_context():
        engine = db.engine
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP INDEX ix_plan_regen_regenerations_created_id")
        create_tables(engine, get_state().store)
        names = {index["name"] for index in inspect(engine).get_indexes("plan_regen_regenerations")}
    assert {
        "ix_plan_regen_regenerations_created_id",
        "ix_plan_regen_regenerations_status_created",
        "ix_plan_regen_regenerations_class_status_created",
        "ix_plan_regen_regenerations_finished",
    } <= names


def test_work_in_flight_shows_each_lease_age(console: Flask, redis_conn: Any) -> None:
    started = utcnow() - timedelta(seconds=40)
    leased, unleased = insert_rows(console, 2, status="processing", started_at=started)
    with console.app_context():
        state = get_state()
        ttl = console.config["PLAN_REGEN_LEASE_TTL"]
        redis_conn.set(
            state.key("lease", leased), "1:test", px=ttl * 1000 - 4000
        )  # renewed 4 s ago
    overview = console.test_client().get(f"{PREFIX}/api/overview", headers=OPERATOR).get_json()
    (low,) = [q for q in overview["queues"] if q["queue"] == "plan_regen_low"]
    flying = {row["generationId"]: row for row in low["inFlight"]}
    print({key: (row["runningSeconds"], row["leaseAgeSeconds"]) for key, row in flying.items()})
    assert set(flying) == {leased, unleased}
    assert 4 <= flying[leased]["leaseAgeSeconds"] < 10
    assert flying[unleased]["leaseAgeSeconds"] is None
    assert flying[leased]["runningSeconds"] >= 40


@pytest.mark.postgres
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_the_hourly_counts_are_per_utc_hour_on_both_databases(
    request: pytest.FixtureRequest, database: str
) -> None:
    app = with_console(request.getfixturevalue("app" if database == "sqlite" else "pg_app"))
    now = utcnow()
    ago = {hours: now - timedelta(hours=hours) for hours in (0, 2, 30)}
    insert_rows(app, 3, finished_at=ago[0])
    insert_rows(app, 2, finished_at=ago[2], status="failed", failure_class="timeout")
    insert_rows(app, 1, finished_at=ago[2], status="canceled")
    insert_rows(app, 4, finished_at=ago[30])  # older than the chart
    hours = app.test_client().get(f"{PREFIX}/api/overview", headers=OPERATOR).get_json()["hours"]
    charted = {
        hour["hour"]: (hour["succeeded"], hour["failed"], hour["canceled"])
        for hour in hours
        if hour["succeeded"] or hour["failed"] or hour["canceled"]
    }
    stamp = {key: value.strftime("%Y-%m-%dT%H:00:00Z") for key, value in ago.items()}
    print(database, charted)
    assert charted == {stamp[0]: (3, {}, 0), stamp[2]: (0, {"timeout": 2}, 1)}


def test_with_redis_down_the_overview_shows_the_database_and_actions_answer_503(
    console: Flask, make_plan: Callable[..., str]
) -> None:
    client = console.test_client()
    generation_id = regenerate(client, make_plan())["generationId"]
    token = csrf_token(client)
    lose_the_queue(console)
    page = client.get(f"{PREFIX}/", headers=OPERATOR)
    assert page.status_code == 200
    assert "Redis is unavailable" in page.get_data(as_text=True)
    overview = client.get(f"{PREFIX}/api/overview", headers=OPERATOR).get_json()
    assert overview["statuses"]["pending"] == 1 and overview["queues"] == []
    print(overview["redisError"])
    headers = {**OPERATOR, "X-CSRF-Token": token}
    switch = client.post(f"{PREFIX}/actions/switch", json={"enabled": False}, headers=headers)
    assert switch.status_code == 503 and switch.get_json()["code"] == "REDIS_UNAVAILABLE"
    detail = client.get(f"{PREFIX}/regenerations/{generation_id}", headers=OPERATOR)
    assert detail.status_code == 200


def test_the_decorator_registers_the_operator_hook(
    sqlite_uri: str, redis_url: str, redis_conn: Any
) -> None:
    app = Flask("host")
    app.config.update(SQLALCHEMY_DATABASE_URI=sqlite_uri, PLAN_REGEN_REDIS_URL=redis_url)
    regen = PlanRegen(app, db=SQLAlchemy(app))

    @regen.operator_required
    def staff_only() -> str | None:
        return "sam" if request.headers.get("X-Staff") == "yes" else None

    PlanRegen.create_all(app)
    with_console(app)
    client = app.test_client()
    assert client.get(f"{PREFIX}/api/actions").status_code == 403
    answer = client.get(f"{PREFIX}/", headers={"X-Staff": "yes"})
    assert answer.status_code == 200 and ">sam<" in answer.get_data(as_text=True)


def test_the_switch_reaches_every_web_process_within_its_recheck_time(
    console: Flask,
    make_plan: Callable[..., str],
    sqlite_uri: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(switch, "RECHECK_SECONDS", 1.0)  # the test waits less
    other = build_app(sqlite_uri, redis_url, **NO_LIMITS).test_client()  # another process

    def answer() -> int:
        url = f"/api/v1/plans/{make_plan()}/regenerate"
        return other.post(url, json={}, headers=ALICE).status_code

    assert answer() == 202  # it has now read the switch (on)
    client = console.test_client()
    headers = {**OPERATOR, "X-CSRF-Token": csrf_token(client)}
    switched = time.monotonic()
    client.post(f"{PREFIX}/actions/switch", json={"enabled": False}, headers=headers)
    wait_until(lambda: answer() == 503, timeout=10, what="the other process refusing")
    off = time.monotonic() - switched
    client.post(f"{PREFIX}/actions/switch", json={"enabled": True}, headers=headers)
    switched = time.monotonic()
    wait_until(lambda: answer() == 202, timeout=10, what="the other process accepting")
    on = time.monotonic() - switched
    print(f"seen by the other process after {off:.2f} s (off) and {on:.2f} s (on)")
    # The recheck time, plus room for a loaded machine's requests.
    assert off < 1.0 + 2 and on < 1.0 + 2


# The built-in provider's model, and the tier's model a budget reserves for.
PRICES = {
    model: {"input": "1.5", "output": "6"} for model in ("builtin-deterministic-1", "gpt-4o-mini")
}


def test_the_spend_page_sums_what_the_attempts_cost(
    sqlite_uri: str, redis_url: str, redis_conn: Any, app_config: dict[str, Any]
) -> None:
    config = {
        **app_config,
        "PLAN_REGEN_PRICES": PRICES,
        "PLAN_REGEN_MONTHLY_BUDGETS": {"free": "1"},
    }
    console = with_console(build_app(sqlite_uri, redis_url, **config))
    make_plan = plan_factory(console)
    client = console.test_client()
    for owner, headers in (("alice", ALICE), ("alice", ALICE), ("bob", {"X-User-Id": "bob"})):
        regenerate(client, make_plan(owner), headers=headers)
    run_jobs(console)
    with console.app_context():
        costs = {
            user: sum(
                db.session.scalars(
                    select(GenerationAttempt.cost_usd)
                    .join(Regeneration)
                    .where(Regeneration.user_id == user)
                )
            )
            for user in ("alice", "bob")
        }
    total = costs["alice"] + costs["bob"]
    assert total > 0
    spend = client.get(f"{PREFIX}/api/spend", headers=OPERATOR).get_json()
    print(f"costs {costs}; spend page {spend['byModel']}")
    (model,) = spend["byModel"]
    assert (model["key"], Decimal(model["costUsd"]), model["attempts"]) == (
        "builtin-deterministic-1",
        total,
        3,
    )
    assert Decimal(spend["spentUsd"]) == total
    assert [(u["userId"], Decimal(u["spentUsd"])) for u in spend["topUsers"]] == [
        ("alice", costs["alice"]),
        ("bob", costs["bob"]),
    ]
    assert spend["topUsers"][0]["budgetUsd"] == "1"
    assert spend["topUsers"][0]["usedShare"] == pytest.approx(float(costs["alice"]))
    hours = client.get(f"{PREFIX}/api/overview", headers=OPERATOR).get_json()["spendHours"]
    assert sum(Decimal(hour["costUsd"]) for hour in hours) == total
    page = client.get(f"{PREFIX}/spend", headers=OPERATOR).get_data(as_text=True)
    assert f"${total.normalize():f}" in page
    # One pass grouped by model and tier gives the sums of `flask plan-regen costs` by each.
    (pro,) = insert_rows(console, 1, tier="pro", created_at=utcnow())
    with console.app_context():
        other = {"regeneration_id": pro, "outcome": "failed", "duration_ms": 5, "provider": "x",
                 "prompt_hash": ""}  # fmt: skip
        db.session.execute(
            insert(GenerationAttempt),
            [
                {**other, "number": 1, "model": "other-model", "cost_usd": Decimal("0.5")},
                {**other, "number": 2, "model": None, "billed": True, "completion_tokens": 9},
            ],
        )
        db.session.commit()
    spend = client.get(f"{PREFIX}/api/spend", headers=OPERATOR).get_json()
    assert len(spend["byModel"]) == 3 and len(spend["byTier"]) == 2
    with console.app_context():
        for by in ("model", "tier"):
            report = cost_report(get_state(), current_period(), by=by)
            assert spend[f"by{by.title()}"] == [row.document() for row in report]


def test_the_providers_page_shows_each_entry_as_info_does(
    console: Flask, make_plan: Callable[..., str]
) -> None:
    client = console.test_client()
    regenerate(client, make_plan())
    run_jobs(console)
    document = client.get(f"{PREFIX}/api/providers", headers=OPERATOR).get_json()
    with console.app_context():
        info = collect_info(get_state())["providers"]
    print(document)
    assert document["providers"] == info and len(info) >= 1
    page = client.get(f"{PREFIX}/providers", headers=OPERATOR).get_data(as_text=True)
    for entry in info:
        assert f'data-entry="{entry["name"]}"' in page
        assert entry["breaker"]["state"] in page
