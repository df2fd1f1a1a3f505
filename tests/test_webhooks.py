"""The Stripe webhook: signature, de-duplication, tier refresh, configurable path."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import localstripe.webhooks
import pytest
import redis
import requests
import stripe
from app_server import serve
from conftest import ALICE, build_app, wait_until
from flask import Flask
from servers import free_port
from stripe_server import CACHE_KEY, WEBHOOK_SECRET, Subscribe, stripe_config, tier_of

EVENT_KEY = "plan_regen:stripe_event:"
LAST_KNOWN_KEY = "plan_regen:tier_last_known:"

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


def post_raw(app: Flask, payload: bytes) -> Any:
    return app.test_client().post(
        WEBHOOK, data=payload, headers=signed(payload), content_type="application/json"
    )


@pytest.mark.parametrize(
    "payload",
    [
        b"[]",
        b'"str"',
        b"null",
        b"123",
        b'{"id": "evt_1", "type": "invoice.paid", "data": {"object": "x"}}',
        b'{"id": "evt_1", "type": "invoice.paid", "data": null}',
        b'{"id": "evt_1", "type": "invoice.paid"}',
        b'{"id": 1, "type": "invoice.paid", "data": {"object": {}}}',
        b'{"id": "", "type": "invoice.paid", "data": {"object": {}}}',
        b"[" * 50_000 + b"]" * 50_000,
        b"not json at all",
        b'{"id": "evt_\\ud800", "type": "customer.deleted", "data": {"object": {"id": "c"}}}',
    ],
)
def test_a_signed_payload_of_the_wrong_shape_is_a_json_400(
    stripe_app: Flask, redis_conn: redis.Redis, payload: bytes
) -> None:
    answer = post_raw(stripe_app, payload)
    assert answer.status_code == 400, answer.get_data()[:200]
    assert answer.is_json and answer.json["code"] == "INVALID_EVENT"
    assert redis_conn.keys(EVENT_KEY + "*") == []


def test_an_event_that_answered_503_is_applied_when_stripe_delivers_it_again(
    stripe_app: Flask,
    subscribe: Subscribe,
    stripe_client: stripe.StripeClient,
    sqlite_uri: str,
    redis_url: str,
    customers: dict[str, str],
    redis_conn: redis.Redis,
) -> None:
    customer_id, subscription_id = subscribe("alice", "pro")
    assert tier_of(stripe_app) == "pro"
    stripe_client.v1.subscriptions.cancel(subscription_id)
    # The same Redis, but Stripe unreachable: the first delivery cannot be applied.
    cut_off = build_app(
        sqlite_uri, redis_url, **stripe_config(f"http://127.0.0.1:{free_port()}", customers)
    )
    body = event("customer.subscription.deleted", customer_id)

    first = post(cut_off, body)
    assert (first.status_code, first.json["code"]) == (503, "WEBHOOK_UNAVAILABLE")
    assert redis_conn.exists(EVENT_KEY + body["id"]) == 0  # not counted as processed
    redelivered = post(stripe_app, body)
    assert redelivered.json == {"received": True, "duplicate": False, "refreshed": True}
    assert tier_of(stripe_app) == "free"
    assert post(stripe_app, body).json["duplicate"] is True  # handled: now it counts


# ------------------------------------------------------------------ customer deleted


@pytest.fixture
def localstripe_webhook(localstripe_url: str) -> Iterator[Callable[[str], None]]:
    """``register(url)``: localstripe delivers its events, signed, to ``url``."""
    webhook_id = f"plan_regen_{uuid.uuid4().hex[:8]}"

    def register(url: str) -> None:
        answer = requests.post(
            f"{localstripe_url}/_config/webhooks/{webhook_id}",
            data={"url": url, "secret": WEBHOOK_SECRET},
            timeout=10,
        )
        answer.raise_for_status()

    yield register
    localstripe.webhooks._webhooks.pop(webhook_id, None)  # no API to remove one


def test_a_deleted_customer_gets_the_default_tier_at_once(
    stripe_app: Flask,
    subscribe: Subscribe,
    stripe_client: stripe.StripeClient,
    redis_conn: redis.Redis,
    localstripe_webhook: Callable[[str], None],
) -> None:
    """localstripe deletes the customer and sends the signed customer.deleted event itself."""
    customer_id, _ = subscribe("alice", "pro")
    with serve(stripe_app) as base_url:
        assert requests.get(f"{base_url}/api/v1/usage", headers=ALICE).json()["tier"] == "pro"
        localstripe_webhook(base_url + WEBHOOK)
        stripe_client.v1.customers.delete(customer_id)
        handled = wait_until(
            lambda: [key for key in redis_conn.keys(EVENT_KEY + "*")
                     if redis_conn.get(key) == b"customer.deleted"],
            timeout=30,
            what="localstripe's customer.deleted event being handled",
        )  # fmt: skip
        usage = requests.get(f"{base_url}/api/v1/usage", headers=ALICE).json()
    assert len(handled) == 1
    assert usage["tier"] == "free"
    assert redis_conn.get(LAST_KNOWN_KEY + customer_id) == b"free"  # pro is not kept


def test_without_the_event_a_gone_customer_is_not_an_outage(
    stripe_app: Flask,
    subscribe: Subscribe,
    stripe_client: stripe.StripeClient,
    redis_conn: redis.Redis,
) -> None:
    customer_id, _ = subscribe("alice", "pro")
    assert tier_of(stripe_app) == "pro"  # cached, and kept as the last known tier
    stripe_client.v1.customers.delete(customer_id)  # no webhook is listening
    redis_conn.delete(CACHE_KEY + customer_id)  # the cached tier expired

    assert tier_of(stripe_app) == "free"  # Stripe's 404 is an answer, not an outage
    answer = post(stripe_app, event("customer.subscription.updated", customer_id))
    assert answer.json == {"received": True, "duplicate": False, "refreshed": True}  # not 503
