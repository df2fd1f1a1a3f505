"""The host app's hooks: their signatures, defaults and import-string loading."""

from __future__ import annotations

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

F = TypeVar("F", bound=Callable[..., Any])

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


def default_tier(user_id: str) -> str:
    """The default tier resolver: ``PLAN_REGEN_DEFAULT_TIER`` for everyone."""
    return str(current_app.config["PLAN_REGEN_DEFAULT_TIER"])
