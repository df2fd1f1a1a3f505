"""The Stripe webhook: subscription, invoice and customer events refresh a customer's cached tier.

Registered by ``init_app`` at ``PLAN_REGEN_STRIPE_WEBHOOK_PATH`` when
``PLAN_REGEN_STRIPE_WEBHOOK_SECRET`` is set. The raw body's signature is
checked with that secret (400 and nothing changes when it is bad or missing),
then its shape (400 ``INVALID_EVENT`` unless it is an object with string
``id`` and ``type`` and an object ``data.object``). An event id is remembered
in Redis once the event was handled, so an event that answered 503 is applied
when Stripe delivers it again, and one that was applied is not applied twice.
The tier is read again from Stripe rather than from the event, so events
arriving out of order cannot leave an old tier behind.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import stripe
from flask import Flask, Response, jsonify, request
from marshmallow import ValidationError
from redis import RedisError
from werkzeug.exceptions import HTTPException

from . import documents
from .bodies import read_body
from .errors import ApiError
from .routes import error_response, http_api_error
from .schemas import stripe_event_schema
from .state import RegenState, get_state

logger = logging.getLogger("flask_plan_regen.webhooks")

REFRESHING_EVENTS = frozenset(
    {
        "checkout.session.completed",
        "customer.deleted",
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
    """Verify, de-duplicate and apply one Stripe event; every answer is JSON."""
    try:
        return jsonify(documents.dump(documents.webhook_receipt_schema, handle_event(get_state())))
    except HTTPException as error:
        return error_response(http_api_error(error))
    except ApiError as error:
        if error.status >= 500:
            logger.warning("Stripe event not applied: %s (%s)", error.message, error.__cause__)
        return error_response(error)
    except Exception:
        logger.exception("Stripe event not applied: unexpected error")
        return error_response(ApiError(500, "INTERNAL_ERROR", "An internal error occurred."))


def handle_event(state: RegenState) -> dict[str, Any]:
    billing = state.billing
    assert billing is not None  # the route exists only when Stripe is configured
    payload = read_body(MAX_PAYLOAD_BYTES)
    try:
        stripe.WebhookSignature.verify_header(
            payload,
            request.headers.get("Stripe-Signature"),
            billing.webhook_secret,
            stripe.Webhook.DEFAULT_TOLERANCE,
        )
    except (ValueError, stripe.SignatureVerificationError):
        raise ApiError(
            400, "INVALID_SIGNATURE", "The Stripe-Signature header is missing or invalid."
        ) from None
    event = load_event(payload)
    event_key = state.key("stripe_event", event["id"])
    try:
        if state.redis.exists(event_key):
            return {"received": True, "duplicate": True}
    except RedisError as error:
        raise unavailable("Redis") from error
    customer_id = event_customer(event) if event["type"] in REFRESHING_EVENTS else None
    if customer_id is not None:
        try:
            tier = billing.refresh(customer_id)
        except stripe.StripeError as error:
            # Not applied, and not remembered: Stripe's next delivery is. The tier cache
            # is dropped so that requests ask Stripe again instead of keeping a stale tier.
            billing.forget(customer_id)
            raise unavailable("Stripe") from error
        logger.info(
            "%s %s: customer %s is on tier %r", event["type"], event["id"], customer_id, tier
        )
    try:
        state.redis.set(event_key, event["type"], ex=EVENT_TTL)
    except RedisError:
        # Applied all the same; a redelivery would only read the same tier again.
        logger.warning("Stripe event %s applied but not remembered: Redis unavailable", event["id"])
    return {"received": True, "duplicate": False, "refreshed": customer_id is not None}


def load_event(payload: bytes) -> dict[str, Any]:
    """The signed payload as an event, or 400 ``INVALID_EVENT``."""
    try:
        event: dict[str, Any] = stripe_event_schema.load(json.loads(payload))
    except (ValueError, RecursionError, ValidationError):
        raise ApiError(
            400,
            "INVALID_EVENT",
            "The event must be a JSON object with string 'id' and 'type' and an object "
            "'data.object'.",
        ) from None
    return event


def event_customer(event: Mapping[str, Any]) -> str | None:
    """The customer id an event is about.

    The object's ``customer`` (an id, or the expanded customer), or the object
    itself when it is a customer (``customer.deleted``).
    """
    subject = event["data"]["object"]
    customer = subject.get("id") if subject.get("object") == "customer" else subject.get("customer")
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
