"""The per-user rate limit on regeneration requests, counted in Redis.

A moving window of the ``limits`` library (one atomic Lua script per hit on
the package's Redis), so it holds across any number of web processes. If
Redis cannot be reached the request answers 503 ``QUEUE_UNAVAILABLE`` at once:
the queue lives in the same Redis, so it could not be queued anyway, and a hung
Redis costs one client timeout, not one per Redis call of the request.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from flask import Response, request
from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from redis import Redis, RedisError

from .errors import ApiError, queue_unavailable

logger = logging.getLogger("flask_plan_regen.ratelimit")

# Where a counted request's status waits for add_rate_limit_headers: the request's own
# environ, never flask.g (shared by requests pushed inside one app context).
_STATUS_KEY = "flask_plan_regen.rate_limit"

# limits' moving window (a Redis list of hit timestamps, newest first, trimmed to the
# limit), hit and read in one script: through limits that takes two calls
# (acquire_entry, then get_moving_window), a second Redis round trip on every request.
# Returns {allowed 1|0, hits in the window, oldest hit in the window as a string}.
_HIT_AND_COUNT = """
local now, limit, expiry = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local last = redis.call('lindex', KEYS[1], limit - 1)
local allowed = 0
if not (last and tonumber(last) >= now - expiry) then
    allowed = 1
    redis.call('lpush', KEYS[1], ARGV[1])
    redis.call('ltrim', KEYS[1], 0, limit - 1)
    redis.call('expire', KEYS[1], expiry)
end
local count, oldest = 0, ARGV[1]
for _, hit in ipairs(redis.call('lrange', KEYS[1], 0, limit - 1)) do
    if tonumber(hit) < now - expiry then break end
    count, oldest = count + 1, hit
end
return {allowed, count, oldest}
"""


@dataclasses.dataclass(frozen=True)
class RateLimitStatus:
    """Where a user stands in their current window."""

    limit: int
    remaining: int
    reset_after: int  # seconds until a request is allowed again / the window frees up
    window: str

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_after),
        }


class RegenRateLimiter:
    """``PLAN_REGEN_RATE_LIMIT`` per user, or the user's tier's ``PLAN_REGEN_TIER_RATE_LIMITS``."""

    def __init__(self, redis: Redis, config: Mapping[str, Any]) -> None:
        storage = RedisStorage(
            config["PLAN_REGEN_REDIS_URL"],
            connection_pool=redis.connection_pool,
            key_prefix=f"{config['PLAN_REGEN_NAMESPACE']}_limits",
        )
        self._storage = storage
        self._limiter = MovingWindowRateLimiter(storage)
        self._hit_and_count = redis.register_script(_HIT_AND_COUNT)
        self._default = parse(config["PLAN_REGEN_RATE_LIMIT"])
        self._per_tier = {
            tier: parse(rate) for tier, rate in config["PLAN_REGEN_TIER_RATE_LIMITS"].items()
        }

    @property
    def depends_on_tier(self) -> bool:
        return bool(self._per_tier)

    def item(self, tier: str | None) -> RateLimitItem:
        return self._per_tier.get(tier, self._default) if tier is not None else self._default

    def hit(self, user_id: str, tier: str | None) -> tuple[bool, RateLimitStatus]:
        """Count one request; ``(allowed, status after it)``. Raises ``RedisError``."""
        item = self.item(tier)
        key = self._storage.prefixed_key(item.key_for("regenerate", user_id))
        expiry = item.get_expiry()
        allowed, hits, oldest = self._hit_and_count(
            keys=[key], args=[repr(time.time()), item.amount, expiry]
        )
        return bool(allowed), self._status(item, float(oldest) + expiry, item.amount - hits)

    def status(self, user_id: str, tier: str | None) -> RateLimitStatus:
        """The user's window without counting anything. Raises ``RedisError``."""
        item = self.item(tier)
        reset_time, remaining = self._limiter.get_window_stats(item, "regenerate", user_id)
        return self._status(item, reset_time, remaining)

    @staticmethod
    def _status(item: RateLimitItem, reset_time: float, remaining: int) -> RateLimitStatus:
        return RateLimitStatus(
            limit=item.amount,
            remaining=max(remaining, 0),
            reset_after=max(math.ceil(reset_time - time.time()), 0),
            window=f"{item.multiples} {item.GRANULARITY.name}",
        )


def enforce_rate_limit(limiter: RegenRateLimiter, user_id: str, tier: str | None) -> None:
    """Count this request; 429 ``RATE_LIMITED`` with ``Retry-After`` past the limit.

    The status is kept with the request so that :func:`add_rate_limit_headers`
    puts the ``RateLimit-*`` headers on whatever this request finally answers.
    """
    try:
        allowed, status = limiter.hit(user_id, tier)
    except RedisError as error:
        raise queue_unavailable() from error
    request.environ[_STATUS_KEY] = status
    if not allowed:
        retry_after = max(status.reset_after, 1)
        raise ApiError(
            429,
            "RATE_LIMITED",
            f"Too many regeneration requests: at most {status.limit} per {status.window}. "
            f"Try again in {retry_after} s.",
            details={"limit": status.limit, "retryAfter": retry_after},
            headers={**status.headers(), "Retry-After": str(retry_after)},
        )


def note_rate_limit(limiter: RegenRateLimiter, user_id: str, tier: str | None) -> None:
    """Keep the user's status for the headers without counting, for answers the view didn't give.

    An idempotent replay or refusal spends nothing but still carries the
    ``RateLimit-*`` headers; without Redis it goes without them.
    """
    status = rate_limit_usage(limiter, user_id, tier)
    if status is not None:
        request.environ[_STATUS_KEY] = status


def add_rate_limit_headers(response: Response) -> Response:
    """``after_request``: the ``RateLimit-*`` headers of a request that was counted."""
    status: RateLimitStatus | None = request.environ.get(_STATUS_KEY)
    if status is not None:
        response.headers.update(status.headers())
    return response


def rate_limit_usage(
    limiter: RegenRateLimiter, user_id: str, tier: str | None
) -> RateLimitStatus | None:
    """Where ``user_id`` stands, counting nothing; ``None`` while Redis is unreachable."""
    try:
        return limiter.status(user_id, tier)
    except RedisError as error:
        logger.warning("rate limit status unavailable, Redis unavailable: %s", error)
        return None
