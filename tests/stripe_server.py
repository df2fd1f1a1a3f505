"""localstripe, a stateful fake Stripe API, served on 127.0.0.1 for the test suite.

``localstripe``'s own command binds every interface and keeps its data in
``/tmp/localstripe.pickle``; here its aiohttp application runs in a thread on a
free loopback port, and the store stays in memory so parallel runs cannot see
each other's customers. Session fixture ``localstripe_url`` -> ``http://127.0.0.1:<port>``;
``stripe_client`` (an SDK client on it), ``customers`` (the host's user -> customer
mapping for one test), ``subscribe`` (a customer subscribed to a product tagged with a
tier) and ``stripe_app`` (the example app with Stripe tiers and the webhook on).
:func:`tier_of` resolves a user's tier in an app as a request would.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import localstripe.resources
import pytest
import redis
import stripe
from aiohttp import web
from flask import Flask
from servers import free_port

from flask_plan_regen import get_state, identity

with warnings.catch_warnings():
    # localstripe registers plain-function handlers, which aiohttp deprecates.
    warnings.simplefilter("ignore", DeprecationWarning)
    from localstripe.server import app as localstripe_app


class LocalStripe:
    """localstripe's aiohttp app on 127.0.0.1 in a background thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(localstripe_app)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> str:
        # In memory only: the default pickle file in /tmp is shared by every process.
        localstripe.resources.Store.dump_to_disk = lambda self: None  # type: ignore[method-assign]
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)
        return self.url

    async def _serve(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


@pytest.fixture(scope="session")
def localstripe_url() -> Iterator[str]:
    """Base URL of a localstripe server running for the whole session."""
    server = LocalStripe()
    url = server.start()
    yield url
    server.stop()


API_KEY = "sk_test_plan_regen"
WEBHOOK_SECRET = "whsec_plan_regen_test"
CACHE_KEY = "plan_regen:tier:"  # + customer id: the cached tier in Redis

Subscribe = Callable[..., tuple[str, str]]


@pytest.fixture
def stripe_client(localstripe_url: str) -> stripe.StripeClient:
    return stripe.StripeClient(API_KEY, base_addresses={"api": localstripe_url})


@pytest.fixture
def customers() -> dict[str, str]:
    """The host's user -> Stripe customer mapping, filled by each test."""
    return {}


def tier_of(app: Flask, user_id: str = "alice") -> str:
    """``user_id``'s tier in ``app`` now (from the cache, else Stripe, else the fallback)."""
    with app.app_context():
        return identity.tier_of(get_state(), user_id)


def stripe_config(api_base: str, customers: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "PLAN_REGEN_STRIPE_API_KEY": API_KEY,
        "PLAN_REGEN_STRIPE_API_BASE": api_base,
        "PLAN_REGEN_STRIPE_CUSTOMER_LOADER": customers.get,
        "PLAN_REGEN_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PLAN_REGEN_STRIPE_MAX_NETWORK_RETRIES": 0,
        **extra,
    }


@pytest.fixture
def stripe_app(
    sqlite_uri: str,
    redis_url: str,
    redis_conn: redis.Redis,
    localstripe_url: str,
    customers: dict[str, str],
) -> Flask:
    """The example host app with Stripe tiers on localstripe and the webhook route."""
    from conftest import build_app  # conftest imports this module first

    return build_app(sqlite_uri, redis_url, **stripe_config(localstripe_url, customers))


@pytest.fixture
def subscribe(stripe_client: stripe.StripeClient, customers: dict[str, str]) -> Subscribe:
    """``subscribe(user, tier, **subscription params) -> (customer id, subscription id)``."""

    def make(user_id: str, tier: str | None, **params: Any) -> tuple[str, str]:
        product = stripe_client.v1.products.create(
            params={"name": f"Plan {tier}", "metadata": {"tier": tier} if tier else {}}
        )
        # localstripe has no Prices API: a legacy plan (free, so it is paid at once).
        plan = stripe_client.v1.plans.create(
            params={"amount": 0, "currency": "usd", "interval": "month", "product": product.id}
        )
        customer_id = customers.get(user_id) or stripe_client.v1.customers.create().id
        customers[user_id] = customer_id
        subscription = stripe_client.v1.subscriptions.create(
            params={"customer": customer_id, "items": [{"plan": plan.id}], **params}
        )
        return customer_id, subscription.id

    return make
