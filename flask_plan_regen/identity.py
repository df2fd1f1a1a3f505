"""Who is asking, and at which tier: the host's hooks, memoised per request.

The memos live in the request's WSGI environ, never on ``flask.g``: two
requests served inside one app context (a host's tests, or a ``with
app.app_context():`` block around test-client calls) share ``g`` but never
an environ, so one request can never be answered as another's user.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, has_request_context, request

from .errors import ApiError
from .hooks import default_tier, deny_all, no_customer_loader
from .state import RegenState
from .types import PlanInput

_USER_KEY = "flask_plan_regen.user_id"
_TIERS_KEY = "flask_plan_regen.tiers"


def current_user_id(state: RegenState) -> str:
    """The request's user id (401 without one); the auth hook runs once per request."""
    environ = request.environ
    user_id: str | None = environ.get(_USER_KEY)
    if user_id is None:
        handler = state.configured_hooks.auth_handler or state.registered_hooks.auth_handler
        found = (handler or deny_all)()
        if not found:
            raise ApiError(401, "UNAUTHORIZED", "Authentication required.")
        user_id = environ[_USER_KEY] = str(found)
    return user_id


def tier_of(state: RegenState, user_id: str) -> str:
    """``user_id``'s tier, checked against ``PLAN_REGEN_TIER_PRIORITY``.

    The resolver (a Stripe cache read) runs once per request. A tier the
    config does not know is a server misconfiguration, answered 500
    ``UNKNOWN_TIER`` by every route that needs a tier.
    """
    tiers: dict[str, str] = (
        request.environ.setdefault(_TIERS_KEY, {}) if has_request_context() else {}
    )
    if user_id not in tiers:
        tier = _resolve(state, user_id)
        known = current_app.config["PLAN_REGEN_TIER_PRIORITY"]
        if tier not in known:
            raise ApiError(
                500, "UNKNOWN_TIER", "The subscription tier could not be resolved."
            ) from LookupError(
                f"tier resolver returned {tier!r}, not one of {sorted(known)} "
                "(PLAN_REGEN_TIER_PRIORITY)"
            )
        tiers[user_id] = tier
    return tiers[user_id]


def _resolve(state: RegenState, user_id: str) -> Any:
    resolver = state.configured_hooks.tier_resolver or state.registered_hooks.tier_resolver
    if resolver is not None:
        return resolver(user_id)
    if state.billing is None:
        return default_tier(user_id)
    customer_id = stripe_customer_id(state, user_id)
    return state.billing.tier_for_customer(customer_id) if customer_id else default_tier(user_id)


def rate_limit_tier(state: RegenState, user_id: str) -> str | None:
    """The tier the rate limit needs: ``None`` unless limits differ per tier."""
    return tier_of(state, user_id) if state.rate_limiter.depends_on_tier else None


def stripe_customer_id(state: RegenState, user_id: str) -> str | None:
    loader = (
        state.configured_hooks.stripe_customer_loader
        or state.registered_hooks.stripe_customer_loader
        or no_customer_loader
    )
    return loader(user_id)


def load_plan(state: RegenState, plan_id: str) -> PlanInput | None:
    """The plan through the host's plan loader, else the store."""
    loader = (
        state.configured_hooks.plan_loader
        or state.registered_hooks.plan_loader
        or state.store.load_plan
    )
    return loader(plan_id)


def owned_plan(state: RegenState, plan_id: str, user_id: str) -> PlanInput:
    """The plan if ``user_id`` owns it; the same 404 whether it is missing or not theirs."""
    plan = load_plan(state, plan_id) if len(plan_id) <= 64 else None
    if plan is None or plan.owner_id != user_id:
        raise ApiError(404, "PLAN_NOT_FOUND", "Plan not found.")
    return plan
