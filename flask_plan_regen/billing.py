"""Subscription tiers from Stripe: the built-in tier resolver and its Redis cache.

A user's tier is the ``metadata.tier`` of the product behind the subscription
items of their Stripe customer (the host maps users to customers with
``@regen.stripe_customer_loader``). Only entitled subscriptions count: active
or trialing, and past_due while ``PLAN_REGEN_STRIPE_PAST_DUE_KEEPS_TIER``; no
entitled subscription gives ``PLAN_REGEN_DEFAULT_TIER`` (free). Tiers are
cached in Redis for ``PLAN_REGEN_TIER_CACHE_TTL`` seconds, and a long-lived
"last known" copy is what a request gets while Stripe cannot be reached
(:func:`is_outage`); a customer Stripe says does not exist gets the default
tier at once, and the last known copy becomes the default tier too.
Requires the ``stripe`` extra: ``pip install 'flask-plan-regen[stripe]'``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import stripe
from redis import Redis, RedisError

logger = logging.getLogger("flask_plan_regen.billing")

LAST_KNOWN_TTL = 90 * 24 * 3600
# How long a fallback tier stands in for Stripe's answer while Stripe fails:
# an outage then costs one slow call per customer per this many seconds.
FALLBACK_CACHE_TTL = 30
ENTITLED_STATUSES = frozenset({"active", "trialing"})


def is_entitled(subscription: Mapping[str, Any], *, past_due_keeps_tier: bool, now: float) -> bool:
    """Whether a subscription (a plain dict) gives its tier right now."""
    status = subscription.get("status")
    if status == "past_due":
        return past_due_keeps_tier
    if status not in ENTITLED_STATUSES:
        return False
    # Cancelled at period end: Stripe keeps it active until the period ends,
    # then cancels it; don't trust a stale "active" past that moment.
    end = period_end(subscription)
    return not (subscription.get("cancel_at_period_end") and end is not None and end <= now)


def period_end(subscription: Mapping[str, Any]) -> int | None:
    """The current period's end: on the items in recent API versions, else on the subscription."""
    ends = [item.get("current_period_end") for item in subscription_items(subscription)]
    known = [end for end in [*ends, subscription.get("current_period_end")] if end is not None]
    return int(min(known)) if known else None


def subscription_items(subscription: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    items = subscription.get("items") or {}
    return list(items.get("data") or [])


def item_product(item: Mapping[str, Any]) -> str | Mapping[str, Any] | None:
    """The product id (or expanded product) of an item's price, or of its legacy plan.

    Read defensively: some Stripe fakes (localstripe) know plans but no prices.
    """
    for key in ("price", "plan"):
        priced = item.get(key)
        if isinstance(priced, Mapping) and priced.get("product"):
            product: str | Mapping[str, Any] = priced["product"]
            return product
    return None


def is_outage(error: stripe.StripeError) -> bool:
    """Whether Stripe could not answer, rather than answered that the customer does not exist.

    Network errors, 5xx, auth errors (a revoked key is ours to fix, not the
    customer's) and rate limiting are outages: the last known tier stands in.
    Any other answer (a 404 for a deleted customer) is Stripe's word.
    """
    if isinstance(
        error,
        stripe.APIConnectionError
        | stripe.AuthenticationError
        | stripe.PermissionError
        | stripe.RateLimitError,
    ):
        return True
    return error.http_status is None or error.http_status >= 500


def best_tier(tiers: Iterable[str], priorities: Mapping[str, int]) -> str | None:
    """The tier with the highest priority, for customers with several subscriptions."""
    return max(tiers, key=lambda tier: priorities[tier], default=None)


class StripeBilling:
    """The Stripe client, the tier cache and the tier resolver of one app."""

    def __init__(self, redis: Redis, config: Mapping[str, Any]) -> None:
        base = config["PLAN_REGEN_STRIPE_API_BASE"]
        self.client = stripe.StripeClient(
            config["PLAN_REGEN_STRIPE_API_KEY"],
            base_addresses={"api": base} if base else None,
            max_network_retries=config["PLAN_REGEN_STRIPE_MAX_NETWORK_RETRIES"],
            http_client=stripe.RequestsClient(timeout=config["PLAN_REGEN_STRIPE_TIMEOUT"]),
        )
        self.redis = redis
        namespace = config["PLAN_REGEN_NAMESPACE"]
        self.cache_prefix = f"{namespace}:tier:"
        self.last_known_prefix = f"{namespace}:tier_last_known:"
        self.webhook_secret: str | None = config["PLAN_REGEN_STRIPE_WEBHOOK_SECRET"]
        self.cache_ttl = int(config["PLAN_REGEN_TIER_CACHE_TTL"])
        self.past_due_keeps_tier = bool(config["PLAN_REGEN_STRIPE_PAST_DUE_KEEPS_TIER"])
        self.default_tier = str(config["PLAN_REGEN_DEFAULT_TIER"])
        self.priorities: Mapping[str, int] = config["PLAN_REGEN_TIER_PRIORITY"]

    def tier_for_customer(self, customer_id: str) -> str:
        """Cached tier, else Stripe's; if Stripe fails, the last known tier, else the default."""
        cached = self._cache_get(self.cache_prefix + customer_id)
        if cached is not None:
            return cached
        try:
            return self.refresh(customer_id, overwrite=False)
        except stripe.StripeError as error:
            last_known = self._cache_get(self.last_known_prefix + customer_id)
            fallback = last_known or self.default_tier
            logger.warning(
                "Stripe unavailable for customer %s (%s: %s); using the %s tier %r",
                customer_id,
                type(error).__name__,
                error,
                "last known" if last_known else "default",
                fallback,
            )
            self._cache_fallback(customer_id, fallback)
            return fallback

    def refresh(self, customer_id: str, *, overwrite: bool = True) -> str:
        """Read the customer's tier from Stripe now and cache it. Raises ``StripeError``.

        A request that found no cached tier passes ``overwrite=False``: if a
        webhook cached a newer tier while this read was in flight, that one stays.
        """
        tier, ttl = self.fetch_tier(customer_id)
        try:
            pipe = self.redis.pipeline()
            pipe.set(self.cache_prefix + customer_id, tier, ex=ttl, nx=not overwrite)
            pipe.set(self.last_known_prefix + customer_id, tier, ex=LAST_KNOWN_TTL)
            pipe.execute()
        except RedisError as error:
            logger.warning("tier cache not written, Redis unavailable: %s", error)
        return tier

    def _cache_fallback(self, customer_id: str, tier: str) -> None:
        ttl = min(FALLBACK_CACHE_TTL, self.cache_ttl)
        try:
            self.redis.set(self.cache_prefix + customer_id, tier, ex=ttl, nx=True)
        except RedisError as error:
            logger.warning("fallback tier not cached, Redis unavailable: %s", error)

    def forget(self, customer_id: str) -> None:
        """Drop the cached tier (not the last known one) so the next request asks Stripe."""
        try:
            self.redis.delete(self.cache_prefix + customer_id)
        except RedisError as error:
            logger.warning("tier cache not cleared, Redis unavailable: %s", error)

    def fetch_tier(self, customer_id: str) -> tuple[str, int]:
        """``(tier, seconds to cache it)`` from the customer's subscriptions in Stripe."""
        now = time.time()
        ttl = self.cache_ttl
        tiers: list[str] = []
        product_tiers: dict[str, str | None] = {}
        try:
            listing = self.client.v1.subscriptions.list(
                params={"customer": customer_id, "status": "all", "limit": 100}
            )
            subscriptions = [entry.to_dict() for entry in listing.auto_paging_iter()]
        except stripe.StripeError as error:
            if is_outage(error):
                raise
            # Stripe answered, and it knows no such customer (deleted): no paid tier.
            logger.warning(
                "Stripe refused the subscriptions of customer %s (%s: %s); the default tier %r",
                customer_id,
                type(error).__name__,
                error,
                self.default_tier,
            )
            return self.default_tier, ttl
        for subscription in subscriptions:
            if not is_entitled(subscription, past_due_keeps_tier=self.past_due_keeps_tier, now=now):
                continue
            end = period_end(subscription)
            if subscription.get("cancel_at_period_end") and end is not None:
                ttl = max(1, min(ttl, int(end - now)))  # re-read when the tier lapses
            for item in subscription_items(subscription):
                tier = self._product_tier(item_product(item), product_tiers)
                if tier is not None:
                    tiers.append(tier)
        return best_tier(tiers, self.priorities) or self.default_tier, ttl

    def _product_tier(
        self, product: str | Mapping[str, Any] | None, seen: dict[str, str | None]
    ) -> str | None:
        if product is None:
            return None
        if isinstance(product, str):
            if product not in seen:
                seen[product] = self._tier_of(self.client.v1.products.retrieve(product).to_dict())
            return seen[product]
        return self._tier_of(product)

    def _tier_of(self, product: Mapping[str, Any]) -> str | None:
        tier = (product.get("metadata") or {}).get("tier")
        if tier is None:
            return None
        if tier not in self.priorities:
            logger.warning(
                "Stripe product %s has metadata.tier %r, not one of %s; ignored",
                product.get("id"),
                tier,
                sorted(self.priorities),
            )
            return None
        return str(tier)

    def _cache_get(self, key: str) -> str | None:
        try:
            value = self.redis.get(key)
        except RedisError as error:
            logger.warning("tier cache not read, Redis unavailable: %s", error)
            return None
        return value.decode() if isinstance(value, bytes) else None
