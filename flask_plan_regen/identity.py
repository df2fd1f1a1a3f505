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
from .models import PLAN_ID_LENGTH, USER_ID_LENGTH, storable
from .state import RegenState
from .types import PlanInput

_USER_KEY = "flask_plan_regen.user_id"
_TIERS_KEY = "flask_plan_regen.tiers"


def current_user_id(state: RegenState) -> str:
    """The request's user id (401 without one); the auth hook runs once per request.

    ``None`` or ``""`` from the hook is "nobody" (401). Anything else that is
    not a storable string of at most 255 characters is the host's bug, answered
    500 ``INVALID_USER_ID`` with a log line naming the hook, before it can
    reach a database column.
    """
    environ = request.environ
    user_id: str | None = environ.get(_USER_KEY)
    if user_id is None:
        handler = (
            state.configured_hooks.auth_handler or state.registered_hooks.auth_handler or deny_all
        )
        found = handler()
        if found is None or found == "":
            raise ApiError(401, "UNAUTHORIZED", "Authentication required.")
        problem = user_id_problem(found)
        if problem:
            raise ApiError(
                500, "INVALID_USER_ID", "The user could not be identified."
            ) from TypeError(f"auth handler {_hook_name(handler)} returned {problem}")
        user_id = environ[_USER_KEY] = found
    return user_id


def user_id_problem(value: object) -> str | None:
    """What is wrong with ``value`` as a user id, or ``None`` (the value itself is not shown)."""
    if not isinstance(value, str):
        return f"a value of type {type(value).__name__}, not a string"
    if len(value) > USER_ID_LENGTH:
        return f"a string of {len(value)} characters, over {USER_ID_LENGTH}"
    if not storable(value):
        return "a string with a NUL character or an unpaired surrogate"
    return None


def _hook_name(hook: Any) -> str:
    return f"{getattr(hook, '__module__', '?')}.{getattr(hook, '__qualname__', repr(hook))}"


def findable_id(value: str, length: int) -> bool:
    """Whether an id from a URL could name a row: one that cannot be stored names nothing.

    Looking it up is skipped, so a NUL (which PostgreSQL refuses) or an id longer
    than its column answers the route's 404 rather than a database error.
    """
    return len(value) <= length and storable(value)


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
    plan = load_plan(state, plan_id) if findable_id(plan_id, PLAN_ID_LENGTH) else None
    if plan is None or plan.owner_id != user_id:
        raise ApiError(404, "PLAN_NOT_FOUND", "Plan not found.")
    return plan
