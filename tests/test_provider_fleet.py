"""A fleet sharing the provider: real worker pools (subprocesses) calling local
chat-completions servers (tests/openai_server.py) that enforce their own rate limit
and count what they receive. Windows are scaled down (seconds, not minutes) with
the same arithmetic as the issue's: N requests per window, many times N queued.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import NO_LIMITS, regenerate, wait_for_status, wait_until, worker_env
from flask import Flask
from openai_server import FakeOpenAI, provider_config
from servers import WorkerProcs
from sqlalchemy import select

from examples.host_app import db
from flask_plan_regen import GenerationAttempt, Regeneration, get_state
from flask_plan_regen.config import DEFAULTS
from flask_plan_regen.provider_limits import Lease, Limits, NoCapacity, acquire, finished, park


def fleet_config(server: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    """The provider on ``server``, users' limits out of the way, a 1 s retry backoff."""
    return provider_config(
        server,
        **{**NO_LIMITS, "PLAN_REGEN_RETRY_BACKOFF_BASE": 1.0},
        PLAN_REGEN_PROVIDER_MAX_OUTPUT_TOKENS=1024,
        **extra,
    )


def start_pools(
    worker_procs: WorkerProcs, app: Flask, config: dict[str, Any], pools: int, workers: int
) -> None:
    env = worker_env(
        app.config["SQLALCHEMY_DATABASE_URI"],
        app.config["PLAN_REGEN_REDIS_URL"],
        **{key: json.dumps(value) for key, value in config.items()},
    )
    for _ in range(pools):
        worker_procs.spawn(["flask", "plan-regen", "worker", "--workers", str(workers)], env)


def submit(app: Flask, make_plan: Callable[..., str], count: int, topic: str = "Go") -> list[str]:
    client = app.test_client()
    return [
        regenerate(client, make_plan(topic=f"{topic} {n}"))["generationId"] for n in range(count)
    ]


def answered_by(app: Flask, ids: list[str]) -> set[str]:
    """The provider entries named by the succeeded attempts of ``ids``."""
    with app.app_context():
        names = set(
            db.session.scalars(
                select(GenerationAttempt.provider).where(
                    GenerationAttempt.regeneration_id.in_(ids),
                    GenerationAttempt.outcome == "succeeded",
                )
            )
        )
        db.session.rollback()
        return names


def attempt_counts(app: Flask, ids: list[str]) -> list[int]:
    with app.app_context():
        counts = list(
            db.session.scalars(select(Regeneration.attempts).where(Regeneration.id.in_(ids)))
        )
        db.session.rollback()
        return counts


WINDOW, PER_WINDOW, QUEUED = 6.0, 12, 60  # the 60/minute and 300 queued, scaled by 1/10


@pytest.fixture
def limited_server(openai_server: FakeOpenAI) -> FakeOpenAI:
    openai_server.limit = (PER_WINDOW, WINDOW)
    return openai_server


@pytest.fixture
def app_config(limited_server: FakeOpenAI) -> dict[str, Any]:
    return fleet_config(
        limited_server,
        PLAN_REGEN_PROVIDER_LIMITS={"rpm": PER_WINDOW, "concurrent": 8},
        PLAN_REGEN_PROVIDER_LIMIT_WINDOW=WINDOW,
    )


@pytest.mark.slow
def test_two_pools_share_the_rate_limit_without_a_429_or_a_spent_attempt(
    app: Flask,
    make_plan: Callable[..., str],
    limited_server: FakeOpenAI,
    app_config: dict[str, Any],
    worker_procs: WorkerProcs,
) -> None:
    ids = submit(app, make_plan, QUEUED)
    started = time.monotonic()
    start_pools(worker_procs, app, app_config, pools=2, workers=8)

    final = wait_for_status(app, ids, timeout=180)
    drained = time.monotonic() - started

    ideal = (QUEUED / PER_WINDOW - 1) * WINDOW  # the last window's calls start this late
    most = limited_server.max_in_window(WINDOW)
    spent = attempt_counts(app, ids)
    every = sorted(r["at"] for r in limited_server.requests)
    closest = min(b - a for a, b in zip(every, every[PER_WINDOW:], strict=False))
    print(
        f"\n{QUEUED} regenerations, 2 pools of 8, {PER_WINDOW} per {WINDOW:.0f} s: drained in "
        f"{drained:.1f} s with the pools' start, calls from first to last "
        f"{every[-1] - every[0]:.1f} s (ideal {ideal:.0f} s); most in any window {most}; 429s "
        f"{limited_server.rejected}; attempts {sum(spent)}; closest {PER_WINDOW + 1} calls "
        f"{closest:.2f} s apart; lost: "
        f"{sum(status != 'succeeded' for status in final.values())}"
    )
    assert set(final.values()) == {"succeeded"}
    assert limited_server.rejected == 0
    assert most <= PER_WINDOW
    assert spent == [1] * QUEUED  # waiting spent no attempt
    assert len(limited_server.requests) == QUEUED


def test_a_429_with_retry_after_pauses_every_worker(
    app: Flask,
    make_plan: Callable[..., str],
    limited_server: FakeOpenAI,
    app_config: dict[str, Any],
    worker_procs: WorkerProcs,
) -> None:
    limited_server.limit = None
    limited_server.queue("status_429@4")
    start_pools(worker_procs, app, app_config, pools=1, workers=4)
    first = submit(app, make_plan, 1, topic="First")
    wait_until(lambda: limited_server.requests, 60, "the first call")
    refused_at = limited_server.requests[0]["at"]
    others = submit(app, make_plan, 7)

    wait_for_status(app, first + others, timeout=120)

    later = [r["at"] - refused_at for r in limited_server.requests[1:]]
    print(f"\nafter a 429 with Retry-After: 4, the next calls came {min(later):.2f} s later")
    assert min(later) >= 4.0 - 0.05
    assert [r["behaviour"] for r in limited_server.requests].count("status_429") == 1
    assert attempt_counts(app, others) == [1] * len(others)


def test_an_outage_opens_the_breaker_and_no_regeneration_fails(
    app: Flask,
    make_plan: Callable[..., str],
    openai_server: FakeOpenAI,
    app_config: dict[str, Any],
    worker_procs: WorkerProcs,
) -> None:
    config = {**app_config, "PLAN_REGEN_BREAKER_THRESHOLD": 2, "PLAN_REGEN_BREAKER_COOLDOWN": 3.0}
    openai_server.limit = None
    openai_server.default = "status_500"
    start_pools(worker_procs, app, config, pools=1, workers=4)
    ids = submit(app, make_plan, 12)
    with app.app_context():
        breaker_key = get_state().key("provider", "openai", "breaker")
        redis = get_state().redis
    wait_until(lambda: redis.hget(breaker_key, "state") == b"open", 60, "the breaker opening")
    outage_started = time.monotonic()
    wait_until(lambda: time.monotonic() - outage_started > 12, 20, "12 s of outage")
    during = len(openai_server.requests)
    openai_server.default = "good"
    recovered = time.monotonic()

    final = wait_for_status(app, ids, timeout=120)
    first_good = min(r["at"] for r in openai_server.requests if r["behaviour"] == "good")
    print(
        f"\n12 regenerations, 12 s outage: {during} calls during it (threshold 2, 4 workers, "
        f"a probe per 3 s cool-down), first success {first_good - recovered:.1f} s after "
        f"recovery; failed: {sum(s != 'succeeded' for s in final.values())}"
    )
    assert set(final.values()) == {"succeeded"}
    assert during <= 4 + 2 + 12 / 3 + 1  # in flight + threshold + one probe per cool-down
    # a probe that failed just before the recovery reopens it for a cool-down; then RQ
    # schedules in whole seconds (up to 1 s late, and 1 s to move the job) and forks
    assert first_good - recovered <= 3.0 + 4.0


def two_entries(primary: FakeOpenAI, secondary: FakeOpenAI) -> list[dict[str, Any]]:
    """``PLAN_REGEN_PROVIDERS``: model "a" on ``primary``, then model "b" on ``secondary``."""
    return [
        {"name": "primary", "base_url": primary.base_url, "api_key": "sk-a", "model": "a"},
        {"name": "secondary", "base_url": secondary.base_url, "api_key": "sk-b", "model": "b"},
    ]


@pytest.fixture
def secondary_server() -> Any:
    with FakeOpenAI() as server:
        yield server


def test_primary_down_goes_to_the_secondary_and_traffic_returns(
    app: Flask,
    make_plan: Callable[..., str],
    openai_server: FakeOpenAI,
    secondary_server: FakeOpenAI,
    worker_procs: WorkerProcs,
) -> None:
    entries = two_entries(openai_server, secondary_server)
    config = fleet_config(
        openai_server,
        PLAN_REGEN_PROVIDERS=entries,
        PLAN_REGEN_BREAKER_THRESHOLD=2,
        PLAN_REGEN_BREAKER_COOLDOWN=3.0,
    )
    openai_server.limit = None
    openai_server.default = "status_503"
    start_pools(worker_procs, app, config, pools=1, workers=4)

    down = submit(app, make_plan, 8, topic="Down")
    assert set(wait_for_status(app, down, timeout=120).values()) == {"succeeded"}
    answered = answered_by(app, down)
    primary_calls = len(openai_server.requests)

    openai_server.default = "good"
    with app.app_context():
        breaker_key = get_state().key("provider", "primary", "breaker")
        redis = get_state().redis

    def one_more_closes_it() -> bool:
        # Within the cool-down a regeneration goes to the secondary; the first after it
        # is the probe that closes the primary's breaker.
        wait_for_status(app, submit(app, make_plan, 1, topic="Probe"), timeout=60)
        return redis.hget(breaker_key, "state") == b"closed"

    wait_until(one_more_closes_it, 60, "the primary's breaker closing")
    returned = submit(app, make_plan, 4, topic="Back")
    wait_for_status(app, returned, timeout=60)
    after = answered_by(app, returned)
    print(
        f"\nprimary down: 8 regenerations answered by {answered}, primary called "
        f"{primary_calls} times; primary back: answered by {after}"
    )
    assert answered == {"secondary"}
    assert primary_calls <= 2 + 4  # the threshold, and calls already in flight
    assert after == {"primary"}
    assert {r["body"]["model"] for r in secondary_server.requests} == {"b"}


def test_a_regeneration_that_outlasts_the_outage_wait_fails_unavailable_without_a_call(
    app: Flask,
    make_plan: Callable[..., str],
    openai_server: FakeOpenAI,
    app_config: dict[str, Any],
    worker_procs: WorkerProcs,
) -> None:
    openai_server.limit = None
    openai_server.default = "status_500"
    config = {**app_config, "PLAN_REGEN_BREAKER_THRESHOLD": 1,
              "PLAN_REGEN_PROVIDER_OUTAGE_WAIT": 3.0}  # fmt: skip
    start_pools(worker_procs, app, config, pools=1, workers=1)
    (generation_id,) = submit(app, make_plan, 1)

    assert wait_for_status(app, [generation_id], timeout=60) == {generation_id: "failed"}
    with app.app_context():
        row = db.session.get(Regeneration, generation_id)
        assert row is not None
        print(f"\nfailed as {row.failure_class} after {row.attempts} attempt(s), "
              f"{len(openai_server.requests)} call(s)")  # fmt: skip
        assert row.failure_class == "provider_unavailable"
        assert row.attempts == 1  # the call that opened the breaker; waiting spent none
    assert len(openai_server.requests) == 1


def test_a_parked_high_priority_job_takes_capacity_before_a_lower_one(app: Flask) -> None:
    """The Lua scripts against the real Redis: one request per 2 s window."""
    limits = Limits(rpm=1)
    app.config["PLAN_REGEN_PROVIDER_LIMIT_WINDOW"] = 2.0
    with app.app_context():
        state = get_state()

        def take(job: str, priority: int) -> Lease | NoCapacity:
            return acquire(state, "p", limits, generation_id=job, priority=priority, tokens=100,
                           lease_seconds=60)  # fmt: skip

        first = take("first", 1)
        assert isinstance(first, Lease)
        finished(state, first, 50)  # its answer came back: it counts from now
        low = take("low", 1)
        assert isinstance(low, NoCapacity) and low.reason == "rpm"
        low_in = park(state, "low", 1, low.wait, 2.0)
        high = take("high", 10)
        assert isinstance(high, NoCapacity)
        parked = time.monotonic()
        high_in = park(state, "high", 10, high.wait, 2.0)
        assert high_in <= low_in  # placed ahead of the lower one parked before it
        wait_until(lambda: time.monotonic() - parked > high_in, 10, "the high one's turn")
        behind = take("low", 1)
        assert isinstance(behind, NoCapacity) and behind.reason == "queue"
        assert isinstance(take("high", 10), Lease)
        print(f"\nparked: low due in {low_in:.2f} s, high (parked later) in {high_in:.2f} s")


def test_fleet_settings_are_checked(tmp_path: Path, redis_url: str) -> None:
    from conftest import build_app

    from flask_plan_regen import ConfigurationError

    uri = f"sqlite:///{tmp_path / 'x.sqlite'}"
    bad_entries = [
        [{"name": "a"}],  # no model
        [{"name": "a", "model": "m"}, {"name": "a", "model": "n"}],  # names repeat
        [{"name": "a", "model": "m", "api_key": "sk-secret", "limits": {"rpm": 0}}],
        [{"name": "a b:c", "model": "m"}],  # a name is checked whole
        [{"name": "a\n", "model": "m"}],
    ]
    for entries in bad_entries:
        with pytest.raises(ConfigurationError) as raised:
            build_app(uri, redis_url, PLAN_REGEN_PROVIDERS=entries)
        assert "sk-secret" not in str(raised.value)
    build_app(uri, redis_url, PLAN_REGEN_PROVIDERS=[{"name": "eu_main-2", "model": "m"}])
    with pytest.raises(ConfigurationError, match="PLAN_REGEN_PROVIDER_LIMITS"):
        build_app(uri, redis_url, PLAN_REGEN_PROVIDER_LIMITS={"rps": 5})
    assert DEFAULTS["PLAN_REGEN_PROVIDER_OUTAGE_WAIT"] == 900.0


@pytest.mark.parametrize("refusal", ["status_429@30", "out_of_credit"])
def test_a_call_refused_without_an_answer_goes_to_the_next_entry_in_the_same_attempt(
    app: Flask,
    make_plan: Callable[..., str],
    openai_server: FakeOpenAI,
    secondary_server: FakeOpenAI,
    worker_procs: WorkerProcs,
    refusal: str,
) -> None:
    openai_server.limit = None
    openai_server.queue(refusal)
    entries = two_entries(openai_server, secondary_server)
    entries[1]["prices"] = {"input": "1.00", "output": "2.00"}
    config = fleet_config(openai_server, PLAN_REGEN_PROVIDERS=entries)
    start_pools(worker_procs, app, config, pools=1, workers=1)

    ids = submit(app, make_plan, 2)
    assert set(wait_for_status(app, ids, timeout=60).values()) == {"succeeded"}

    with app.app_context():
        rows = db.session.execute(
            select(GenerationAttempt.provider, GenerationAttempt.cost_usd).where(
                GenerationAttempt.regeneration_id.in_(ids)
            )
        ).all()
        db.session.rollback()
    print(f"\nafter {refusal} from the primary: attempts {rows}, primary called "
          f"{len(openai_server.requests)} time(s)")  # fmt: skip
    assert attempt_counts(app, ids) == [1, 1]  # the refused call spent no extra attempt
    assert {provider for provider, _ in rows} == {"secondary"}
    # 123 prompt and 456 completion tokens at the secondary's own prices (USD per million)
    assert {str(cost) for _, cost in rows} == {"0.0010350000"}
    assert len(openai_server.requests) == 1  # then skipped: cooling down / out of credit

    app.config["PLAN_REGEN_PROVIDERS"] = entries  # info reads the entries from the config
    shown = app.test_cli_runner().invoke(args=["plan-regen", "info"])
    assert "provider secondary:" in shown.output and "fallbacks taken 2" in shown.output
    assert "provider primary:" in shown.output and "breaker closed" in shown.output


def test_an_entry_without_prices_is_never_priced_as_another_model(
    app: Flask,
    make_plan: Callable[..., str],
    openai_server: FakeOpenAI,
    secondary_server: FakeOpenAI,
    worker_procs: WorkerProcs,
) -> None:
    """The secondary's model "b" has no price anywhere: its cost is unknown, not the price
    of the primary's model or of the single-provider model the table does know."""
    openai_server.limit = None
    openai_server.queue("status_429@30")
    config = fleet_config(
        openai_server, PLAN_REGEN_PROVIDERS=two_entries(openai_server, secondary_server)
    )
    price = {"input": "0.15", "output": "0.60"}
    config["PLAN_REGEN_PRICES"] = {"a": price, config["PLAN_REGEN_PROVIDER_MODEL"]: price}
    start_pools(worker_procs, app, config, pools=1, workers=1)

    ids = submit(app, make_plan, 1)
    assert set(wait_for_status(app, ids, timeout=60).values()) == {"succeeded"}
    with app.app_context():
        rows = db.session.execute(
            select(
                GenerationAttempt.provider, GenerationAttempt.model, GenerationAttempt.cost_usd
            ).where(GenerationAttempt.regeneration_id.in_(ids))
        ).all()
        db.session.rollback()
    print(f"\nanswered by the unpriced secondary: {rows}")
    assert [tuple(row) for row in rows] == [("secondary", "b", None)]


def test_tokens_are_corrected_from_the_usage_and_concurrent_slots_are_leases(app: Flask) -> None:
    """The Lua scripts against the real Redis: 2,000 tokens per window, one call at a time."""
    with app.app_context():
        state = get_state()

        def take(limits: Limits, job: str) -> Lease | NoCapacity:
            return acquire(state, "t", limits, generation_id=job, priority=1, tokens=1500,
                           lease_seconds=60)  # fmt: skip

        tokens = Limits(tpm=2000)
        first = take(tokens, "a")
        assert isinstance(first, Lease)
        refused = take(tokens, "b")
        assert isinstance(refused, NoCapacity) and refused.reason == "tpm"
        finished(state, first, 300)  # the server reported 300 tokens, not the 1,500 estimated
        assert isinstance(take(tokens, "b"), Lease)  # 300 + 1,500 fit in 2,000

        one_at_a_time = Limits(concurrent=1)
        state.redis.flushdb()
        running = take(one_at_a_time, "c")
        assert isinstance(running, Lease)
        waiting = take(one_at_a_time, "d")
        assert isinstance(waiting, NoCapacity) and waiting.reason == "concurrency"
        finished(state, running, None)
        assert isinstance(take(one_at_a_time, "d"), Lease)
