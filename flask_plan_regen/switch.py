"""The kill switch: ``PLAN_REGEN_ENABLED`` in config, and an operator's switch in Redis.

Config is per process and needs a deploy to change; the operator's switch
(the console's Actions page) is one Redis key every web process reads, so it
takes effect everywhere within :data:`RECHECK_SECONDS` (at once in the process
that threw it). New regenerations are refused while either is off; work
already queued still runs.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref

from flask import current_app
from redis import Redis
from redis.exceptions import RedisError

from .state import RegenState

logger = logging.getLogger("flask_plan_regen.switch")

RECHECK_SECONDS = 5.0
"""How long a process trusts the switch it read: requests pay a Redis round trip for it
at most once per this many seconds per process."""

# Per Redis client (so per app), per key: until when the value read is trusted, and it.
_seen: weakref.WeakKeyDictionary[Redis, dict[str, tuple[float, str | None]]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def _key(state: RegenState) -> str:
    return state.key("switched_off")


def switched_off_by_operator(state: RegenState) -> str | None:
    """Who switched regeneration off from the console, or ``None`` while it is on.

    With Redis unreachable the switch reads as on: nothing can be queued then
    anyway, and the enqueue answers its own 503.
    """
    seen = _seen.get(state.redis, {}).get(_key(state))
    if seen is not None and seen[0] > time.monotonic():
        return seen[1]
    try:
        raw = state.redis.get(_key(state))
    except RedisError as error:
        logger.warning("kill switch not read, Redis unavailable: %s", error)
        return None
    operator = None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)
    _remember(state, operator)
    return operator


def _remember(state: RegenState, operator: str | None) -> None:
    with _lock:
        _seen.setdefault(state.redis, {})[_key(state)] = (
            time.monotonic() + RECHECK_SECONDS,
            operator,
        )


def is_enabled(state: RegenState) -> bool:
    """Whether new regenerations may be queued (config and the operator's switch)."""
    enabled = bool(current_app.config["PLAN_REGEN_ENABLED"])
    return enabled and switched_off_by_operator(state) is None


def switch_off(state: RegenState, operator: str) -> None:
    state.redis.set(_key(state), operator)
    _remember(state, operator)


def switch_on(state: RegenState) -> None:
    state.redis.delete(_key(state))
    _remember(state, None)
