"""The Stripe webhook: subscription and invoice events refresh a customer's cached tier.

Registered by ``init_app`` at ``PLAN_REGEN_STRIPE_WEBHOOK_PATH`` when
``PLAN_REGEN_STRIPE_WEBHOOK_SECRET`` is set. The raw body's signature is
checked with that secret (400 and nothing changes when it is bad or missing);
an event id is handled once (``SET NX`` in Redis). The tier is read again
from Stripe rather than from the event, so events arriving out of order
cannot leave an old tier behind.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import stripe
from flask import Flask, Response, jsonify, request
from redis import RedisError
from werkzeug.exceptions import HTTPException

from . import documents
from .errors import ApiError
from .routes import error_response, http_api_error
from .state import RegenState, get_state

logger = logging.getLogger("flask_plan_regen.webhooks")

REFRESHING_EVENTS = frozenset(
    {
        "checkout.session.completed",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.paused",
        "customer.subscription.resumed",
        "invoice.paid",
        "invoice.payment_succeeded",
        "invoice.payment_failed",
    }
)
EVENT_TTL = 7 * 24 * 3600  # Stripe retries a delivery for up to 3 days
MAX_PAYLOAD_BYTES = 1024 * 1024


def register_webhook(app: Flask) -> None:
    """Add the webhook route at ``PLAN_REGEN_STRIPE_WEBHOOK_PATH``."""
    app.add_url_rule(
        app.config["PLAN_REGEN_STRIPE_WEBHOOK_PATH"],
        endpoint="plan_regen_stripe_webhook",
        view_func=stripe_webhook,
        methods=["POST"],
    )


def stripe_webhook() -> Response:
    """Verify, de-duplicate and apply one Stripe event; errors answer in the API's JSON shape."""
    try:
        return jsonify(documents.dump(documents.webhook_receipt_schema, handle_event(get_state())))
    except HTTPException as error:
        return error_response(http_api_error(error))
    except ApiError as error:
        if error.status >= 500:
            logger.warning("Stripe event not applied: %s (%s)", error.message, error.__cause__)
        return error_response(error)


def handle_event(state: RegenState) -> dict[str, Any]:
    billing = state.billing
    assert billing is not None  # the route exists only when Stripe is configured
    request.max_content_length = MAX_PAYLOAD_BYTES
    try:
        event = billing.client.construct_event(
            request.get_data(), request.headers.get("Stripe-Signature"), billing.webhook_secret
        ).to_dict()
    except (ValueError, stripe.SignatureVerificationError):
        raise ApiError(
            400, "INVALID_SIGNATURE", "The Stripe-Signature header is missing or invalid."
        ) from None
    if not (isinstance(event.get("id"), str) and isinstance(event.get("type"), str)):
        raise ApiError(400, "INVALID_EVENT", "The event has no string 'id' and 'type'.")
    event_key = state.key("stripe_event", event["id"])
    try:
        first_delivery = state.redis.set(event_key, str(event["type"]), nx=True, ex=EVENT_TTL)
    except RedisError as error:
        raise unavailable("Redis") from error
    if not first_delivery:
        return {"received": True, "duplicate": True}
    customer_id = event_customer(event) if event["type"] in REFRESHING_EVENTS else None
    if customer_id is None:
        return {"received": True, "duplicate": False, "refreshed": False}
    try:
        tier = billing.refresh(customer_id)
    except stripe.StripeError as error:
        # Not applied: forget the event so that Stripe's next delivery is, and the tier
        # cache so that requests ask Stripe again instead of keeping a stale tier.
        billing.forget(customer_id)
        try:
            state.redis.delete(event_key)
        except RedisError:
            logger.warning("event %s stays marked as handled: Redis unavailable", event["id"])
        raise unavailable("Stripe") from error
    logger.info("%s %s: customer %s is on tier %r", event["type"], event["id"], customer_id, tier)
    return {"received": True, "duplicate": False, "refreshed": True}


def event_customer(event: Mapping[str, Any]) -> str | None:
    """The customer id an event is about (the field may be expanded to an object)."""
    customer = ((event.get("data") or {}).get("object") or {}).get("customer")
    if isinstance(customer, Mapping):
        customer = customer.get("id")
    return customer if isinstance(customer, str) and customer else None


def unavailable(service: str) -> ApiError:
    return ApiError(
        503,
        "WEBHOOK_UNAVAILABLE",
        f"{service} is unavailable; the event was not applied. Stripe will deliver it again.",
        headers={"Retry-After": "60"},
    )
