"""The Stripe webhook: signature, de-duplication, tier refresh, configurable path."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import pytest
import redis
import stripe
from conftest import build_app
from flask import Flask
from servers import free_port
from stripe_server import CACHE_KEY, WEBHOOK_SECRET, Subscribe, stripe_config, tier_of

EVENT_KEY = "plan_regen:stripe_event:"

WEBHOOK = "/api/v1/billing/stripe/webhook"


def event(event_type: str, customer_id: str, event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:20]}",
        "object": "event",
        "type": event_type,
        "data": {"object": {"object": "subscription", "customer": customer_id}},
    }


def signed(payload: bytes, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    """The Stripe-Signature header as Stripe computes it: HMAC-SHA256 of 't.payload'."""
    timestamp = str(int(time.time()))
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return {"Stripe-Signature": f"t={timestamp},v1={digest.hexdigest()}"}


def post(app: Flask, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    payload = json.dumps(body).encode()
    return app.test_client().post(
        WEBHOOK,
        data=payload,
        headers=signed(payload) if headers is None else headers,
        content_type="application/json",
    )


def test_signed_event_refreshes_the_cached_tier_at_once(
    stripe_app: Flask, subscribe: Subscribe, stripe_client: stripe.StripeClient
) -> None:
    customer_id, subscription_id = subscribe("alice", "starter")
    assert tier_of(stripe_app) == "starter"  # now cached
    stripe_client.v1.subscriptions.cancel(subscription_id)

    answer = post(stripe_app, event("customer.subscription.deleted", customer_id))

    assert answer.status_code == 200
    assert answer.json == {"received": True, "duplicate": False, "refreshed": True}
    assert tier_of(stripe_app) == "free"


def test_invoice_and_checkout_events_refresh_too(
    stripe_app: Flask, subscribe: Subscribe, redis_conn: redis.Redis
) -> None:
    customer_id, _ = subscribe("alice", "pro")

    for event_type in ("invoice.payment_failed", "checkout.session.completed"):
        redis_conn.delete(CACHE_KEY + customer_id)
        assert post(stripe_app, event(event_type, customer_id)).json["refreshed"] is True
        assert redis_conn.get(CACHE_KEY + customer_id) == b"pro"
    ignored = post(stripe_app, event("customer.created", customer_id))
    assert (ignored.status_code, ignored.json["refreshed"]) == (200, False)


def test_bad_or_missing_signature_is_400_and_changes_nothing(
    stripe_app: Flask,
    subscribe: Subscribe,
    stripe_client: stripe.StripeClient,
    redis_conn: redis.Redis,
) -> None:
    customer_id, subscription_id = subscribe("alice", "pro")
    assert tier_of(stripe_app) == "pro"
    stripe_client.v1.subscriptions.cancel(subscription_id)
    body = event("customer.subscription.deleted", customer_id)
    payload = json.dumps(body).encode()

    answers = [
        post(stripe_app, body, signed(payload, secret="whsec_someone_else")),
        post(stripe_app, body, {}),
        post(stripe_app, body, {"Stripe-Signature": "t=1,v1=00"}),
    ]

    assert [a.status_code for a in answers] == [400, 400, 400]
    assert {a.json["code"] for a in answers} == {"INVALID_SIGNATURE"}
    assert tier_of(stripe_app) == "pro"
    assert redis_conn.exists(EVENT_KEY + body["id"]) == 0
    # The same event, properly signed, is still applied.
    assert post(stripe_app, body).json["refreshed"] is True
    assert tier_of(stripe_app) == "free"


@pytest.mark.parametrize("missing", ["id", "type"])
def test_a_signed_event_without_id_or_type_is_a_json_400(
    stripe_app: Flask, customers: dict[str, str], redis_conn: redis.Redis, missing: str
) -> None:
    body = event("customer.subscription.updated", "cus_x")
    del body[missing]
    answer = post(stripe_app, body)
    assert answer.status_code == 400
    assert answer.json["code"] == "INVALID_EVENT"
    assert redis_conn.keys(EVENT_KEY + "*") == []


def test_a_duplicate_event_id_is_ignored(
    stripe_app: Flask, subscribe: Subscribe, stripe_client: stripe.StripeClient
) -> None:
    customer_id, subscription_id = subscribe("alice", "pro")
    first = event("customer.subscription.created", customer_id)
    assert post(stripe_app, first).json["refreshed"] is True
    stripe_client.v1.subscriptions.cancel(subscription_id)

    again = post(stripe_app, first)

    assert (again.status_code, again.json["duplicate"]) == (200, True)
    assert tier_of(stripe_app) == "pro"
    post(stripe_app, event("customer.subscription.deleted", customer_id))
    assert tier_of(stripe_app) == "free"


def test_stripe_down_answers_503_and_the_event_can_be_delivered_again(
    sqlite_uri: str,
    redis_url: str,
    redis_conn: redis.Redis,
    customers: dict[str, str],
) -> None:
    down = build_app(
        sqlite_uri, redis_url, **stripe_config(f"http://127.0.0.1:{free_port()}", customers)
    )
    body = event("invoice.payment_succeeded", "cus_unreachable")

    answer = post(down, body)

    assert answer.status_code == 503
    assert answer.json["code"] == "WEBHOOK_UNAVAILABLE"
    assert redis_conn.exists(EVENT_KEY + body["id"]) == 0


def test_the_path_is_configurable(
    sqlite_uri: str,
    redis_url: str,
    redis_conn: redis.Redis,
    localstripe_url: str,
    customers: dict[str, str],
) -> None:
    app = build_app(
        sqlite_uri,
        redis_url,
        **stripe_config(localstripe_url, customers, PLAN_REGEN_STRIPE_WEBHOOK_PATH="/hooks/stripe"),
    )
    client = app.test_client()

    assert client.post("/hooks/stripe", data=b"{}").status_code == 400
    moved = client.post(WEBHOOK, data=b"{}")
    assert (moved.status_code, moved.json["code"]) == (404, "NOT_FOUND")


def test_no_webhook_route_without_a_secret(
    sqlite_uri: str, redis_url: str, redis_conn: redis.Redis
) -> None:
    app = build_app(sqlite_uri, redis_url)

    assert app.test_client().post(WEBHOOK, data=b"{}").status_code == 404
