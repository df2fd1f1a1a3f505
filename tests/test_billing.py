"""Tiers from Stripe (localstripe): product metadata, statuses, cache, outage fallback."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import redis
import stripe
from conftest import ALICE, build_app, plan_factory, regenerate
from flask import Flask
from servers import free_port
from stripe_server import API_KEY, CACHE_KEY, WEBHOOK_SECRET, Subscribe, stripe_config, tier_of

from flask_plan_regen import ConfigurationError, get_state, identity
from flask_plan_regen.billing import FALLBACK_CACHE_TTL, is_entitled


def test_tier_is_the_products_metadata_tier(stripe_app: Flask, subscribe: Subscribe) -> None:
    subscribe("alice", "pro")

    assert tier_of(stripe_app) == "pro"
    usage = stripe_app.test_client().get("/api/v1/usage", headers=ALICE).json
    assert (usage["tier"], usage["monthly"]["limit"]) == ("pro", 50)
    plan_id = plan_factory(stripe_app)()
    assert regenerate(stripe_app.test_client(), plan_id)["priority"] == 10  # and 202


def test_no_subscription_or_no_customer_is_free(
    stripe_app: Flask, stripe_client: stripe.StripeClient, customers: dict[str, str]
) -> None:
    customers["alice"] = stripe_client.v1.customers.create().id

    assert tier_of(stripe_app, "alice") == "free"
    assert tier_of(stripe_app, "nobody-in-stripe") == "free"


def test_several_subscriptions_give_the_highest_tier_and_untagged_products_count_for_none(
    stripe_app: Flask, subscribe: Subscribe
) -> None:
    subscribe("alice", None)
    subscribe("alice", "starter")
    subscribe("alice", "pro")

    assert tier_of(stripe_app) == "pro"


def test_cancel_at_period_end_keeps_the_tier_until_the_subscription_ends(
    stripe_app: Flask, subscribe: Subscribe, stripe_client: stripe.StripeClient
) -> None:
    customer_id, subscription_id = subscribe("alice", "starter")
    stripe_client.v1.subscriptions.update(subscription_id, params={"cancel_at_period_end": True})
    with stripe_app.app_context():
        billing = get_state().billing
        assert billing is not None
        assert billing.refresh(customer_id) == "starter"

        stripe_client.v1.subscriptions.cancel(subscription_id)  # the period ended
        assert billing.refresh(customer_id) == "free"


def test_a_request_never_overwrites_a_tier_a_webhook_cached_meanwhile(
    stripe_app: Flask, subscribe: Subscribe, redis_conn: redis.Redis
) -> None:
    customer_id, _ = subscribe("alice", "starter")
    with stripe_app.app_context():
        billing = get_state().billing
        assert billing is not None
        # A webhook cached the newest tier while this request was reading Stripe.
        redis_conn.set(CACHE_KEY + customer_id, "pro")
        assert billing.refresh(customer_id, overwrite=False) == "starter"
        assert redis_conn.get(CACHE_KEY + customer_id) == b"pro"
        # The webhook path itself always writes what Stripe says now.
        assert billing.refresh(customer_id) == "starter"
        assert redis_conn.get(CACHE_KEY + customer_id) == b"starter"


@pytest.mark.parametrize(
    ("subscription", "past_due_keeps_tier", "entitled"),
    [
        ({"status": "active"}, True, True),
        ({"status": "trialing"}, True, True),
        ({"status": "past_due"}, True, True),
        ({"status": "past_due"}, False, False),
        ({"status": "unpaid"}, True, False),
        ({"status": "incomplete"}, True, False),
        ({"status": "canceled"}, True, False),
        ({"status": "active", "cancel_at_period_end": True, "current_period_end": 2e9}, True, True),
        # A stale "active" past the end of a period it was cancelled at.
        (
            {"status": "active", "cancel_at_period_end": True, "current_period_end": 1e9},
            True,
            False,
        ),
        (
            {
                "status": "trialing",
                "cancel_at_period_end": True,
                "items": {"data": [{"current_period_end": 1e9}]},
            },
            True,
            False,
        ),
    ],
)
def test_which_subscription_statuses_give_their_tier(
    subscription: dict[str, Any], past_due_keeps_tier: bool, entitled: bool
) -> None:
    # localstripe never produces trialing or past_due, so the rule is checked on its own.
    now = time.time()
    assert is_entitled(subscription, past_due_keeps_tier=past_due_keeps_tier, now=now) is entitled


def test_tier_is_cached_for_the_ttl(
    stripe_app: Flask,
    subscribe: Subscribe,
    stripe_client: stripe.StripeClient,
    redis_conn: redis.Redis,
) -> None:
    customer_id, subscription_id = subscribe("alice", "pro")
    assert tier_of(stripe_app) == "pro"
    stripe_client.v1.subscriptions.cancel(subscription_id)

    assert tier_of(stripe_app) == "pro"  # from the cache
    assert 0 < redis_conn.ttl(CACHE_KEY + customer_id) <= 300

    redis_conn.delete(CACHE_KEY + customer_id)  # as when the TTL runs out
    assert tier_of(stripe_app) == "free"


def test_stripe_down_uses_the_last_known_tier_else_the_default_and_warns(
    stripe_app: Flask,
    subscribe: Subscribe,
    customers: dict[str, str],
    sqlite_uri: str,
    redis_url: str,
    redis_conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    customer_id, _ = subscribe("alice", "pro")
    assert tier_of(stripe_app) == "pro"
    redis_conn.delete(CACHE_KEY + customer_id)  # expired; the last known tier stays
    customers["bob"] = "cus_never_seen"
    closed = f"http://127.0.0.1:{free_port()}"
    down = build_app(sqlite_uri, redis_url, **stripe_config(closed, customers))

    with caplog.at_level(logging.WARNING, logger="flask_plan_regen.billing"):
        assert tier_of(down, "alice") == "pro"
        assert tier_of(down, "bob") == "free"

    warnings = [r.getMessage() for r in caplog.records]
    assert any("last known tier 'pro'" in w for w in warnings)
    assert any("default tier 'free'" in w for w in warnings)
    # The fallback stands in for Stripe briefly: the next requests don't wait for Stripe.
    assert redis_conn.get(CACHE_KEY + customer_id) == b"pro"
    assert 0 < redis_conn.ttl(CACHE_KEY + customer_id) <= FALLBACK_CACHE_TTL <= 30
    assert redis_conn.get(CACHE_KEY + "cus_never_seen") == b"free"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flask_plan_regen.billing"):
        assert tier_of(down, "alice") == "pro"
        assert tier_of(down, "bob") == "free"
    assert not caplog.records  # no second Stripe call, so no second warning
    client = down.test_client()
    plan_id = plan_factory(down)()
    regenerate(client, plan_id)  # 202
    assert client.get("/api/v1/usage", headers={"X-User-Id": "bob"}).status_code == 200


def test_stripe_key_without_customer_loader_is_a_clear_setup_error(
    sqlite_uri: str, redis_url: str, redis_conn: redis.Redis, localstripe_url: str
) -> None:
    app = build_app(
        sqlite_uri,
        redis_url,
        PLAN_REGEN_STRIPE_API_KEY=API_KEY,
        PLAN_REGEN_STRIPE_API_BASE=localstripe_url,
    )

    with app.app_context(), pytest.raises(ConfigurationError, match="stripe_customer_loader"):
        identity.tier_of(get_state(), "alice")


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"PLAN_REGEN_STRIPE_API_KEY": "pk_test_public"}, "PLAN_REGEN_STRIPE_API_KEY"),
        ({"PLAN_REGEN_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET}, "PLAN_REGEN_STRIPE_WEBHOOK_SECRET"),
        (
            {"PLAN_REGEN_STRIPE_API_KEY": API_KEY, "PLAN_REGEN_STRIPE_WEBHOOK_SECRET": "secret"},
            "PLAN_REGEN_STRIPE_WEBHOOK_SECRET",
        ),
        ({"PLAN_REGEN_TIER_CACHE_TTL": 0}, "PLAN_REGEN_TIER_CACHE_TTL"),
    ],
)
def test_bad_stripe_config_is_refused_at_init(
    sqlite_uri: str, redis_url: str, config: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigurationError, match=key):
        build_app(sqlite_uri, redis_url, **config)
