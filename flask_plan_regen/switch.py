"""The kill switch: ``PLAN_REGEN_ENABLED`` in config, and an operator's switch in Redis.

Config is per process and needs a deploy to change; the operator's switch
(the console's Actions page) is one Redis key every web process reads, so it
takes effect at once everywhere. New regenerations are refused while either is
off; work already queued still runs.
"""

from __future__ import annotations

import logging

from flask import current_app
from redis.exceptions import RedisError

from .state import RegenState

logger = logging.getLogger("flask_plan_regen.switch")


def _key(state: RegenState) -> str:
    return state.key("switched_off")


def switched_off_by_operator(state: RegenState) -> str | None:
    """Who switched regeneration off from the console, or ``None`` while it is on.

    With Redis unreachable the switch reads as on: nothing can be queued then
    anyway, and the enqueue answers its own 503.
    """
    try:
        raw = state.redis.get(_key(state))
    except RedisError as error:
        logger.warning("kill switch not read, Redis unavailable: %s", error)
        return None
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def is_enabled(state: RegenState) -> bool:
    """Whether new regenerations may be queued (config and the operator's switch)."""
    enabled = bool(current_app.config["PLAN_REGEN_ENABLED"])
    return enabled and switched_off_by_operator(state) is None


def switch_off(state: RegenState, operator: str) -> None:
    state.redis.set(_key(state), operator)


def switch_on(state: RegenState) -> None:
    state.redis.delete(_key(state))
