"""The host app's hooks: their signatures, defaults and import-string loading."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app
from werkzeug.utils import import_string

from .errors import ApiError, ConfigurationError
from .types import PlanInput

AuthHandler = Callable[[], str | None]
"""``() -> user id`` of the request's user, or ``None`` (answered 401)."""

PlanLoader = Callable[[str], PlanInput | None]
"""``(plan_id) -> PlanInput`` with its ``owner_id``, or ``None`` (answered 404)."""

TierResolver = Callable[[str], str]
"""``(user_id) -> tier name``, a key of ``PLAN_REGEN_TIER_PRIORITY``."""

StripeCustomerLoader = Callable[[str], str | None]
"""``(user_id) -> Stripe customer id`` (``cus_...``), or ``None`` for a user with none."""

OperatorHandler = Callable[[], str | None]
"""``() -> operator identity`` of the request, or ``None``: the console answers 403."""

F = TypeVar("F", bound=Callable[..., Any])

HOOK_CONFIG_KEYS = {
    "auth_handler": "PLAN_REGEN_AUTH_HANDLER",
    "plan_loader": "PLAN_REGEN_PLAN_LOADER",
    "tier_resolver": "PLAN_REGEN_TIER_RESOLVER",
    "stripe_customer_loader": "PLAN_REGEN_STRIPE_CUSTOMER_LOADER",
    "operator_required": "PLAN_REGEN_OPERATOR_HANDLER",
}


@dataclasses.dataclass
class Hooks:
    """The host's hooks; ``None`` where the host gave none."""

    auth_handler: AuthHandler | None = None
    plan_loader: PlanLoader | None = None
    tier_resolver: TierResolver | None = None
    stripe_customer_loader: StripeCustomerLoader | None = None
    operator_required: OperatorHandler | None = None

    @classmethod
    def from_config(cls, config: Any) -> Hooks:
        """The hooks set in config, import strings resolved."""
        return cls(
            **{
                name: load_object(config[key], key)
                for name, key in HOOK_CONFIG_KEYS.items()
                if config[key] is not None
            }
        )


NO_AUTH_HANDLER = (
    "Authentication is not configured: register a function with "
    "@regen.auth_handler (or set PLAN_REGEN_AUTH_HANDLER) that returns the user id."
)


def load_object(value: Any, key: str) -> Any:
    """Resolve a config value that may be an import string ``'pkg.module:name'``."""
    if not isinstance(value, str):
        return value
    try:
        return import_string(value)
    except ImportError as error:
        raise ConfigurationError(f"{key}: cannot import {value!r}: {error}") from error


def deny_all() -> str | None:
    """The default auth handler: nobody is authenticated until the host says how."""
    raise ApiError(401, "UNAUTHORIZED", NO_AUTH_HANDLER)


def no_customer_loader(user_id: str) -> str | None:
    """The default while Stripe is configured but no customer loader is: a setup error."""
    raise ConfigurationError(
        "PLAN_REGEN_STRIPE_API_KEY is set but no Stripe customer loader is: register "
        "@regen.stripe_customer_loader (or set PLAN_REGEN_STRIPE_CUSTOMER_LOADER) returning "
        "the user's Stripe customer id."
    )


def default_tier(user_id: str) -> str:
    """The default tier resolver: ``PLAN_REGEN_DEFAULT_TIER`` for everyone."""
    return str(current_app.config["PLAN_REGEN_DEFAULT_TIER"])
