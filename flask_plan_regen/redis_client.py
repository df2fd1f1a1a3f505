"""The package's Redis client: a Redis server's, or an in-process one for tests.

``PLAN_REGEN_REDIS_URL = "memory://"`` gives each app its own in-process Redis
(fakeredis, with Lua scripts run by lupa): RQ's queues, the rate limit,
idempotency keys, the tier cache, leases and locks then need no server. A job
queued on it can only run in the same process: ``PLAN_REGEN_EAGER`` or
:func:`flask_plan_regen.testing.run_pending_jobs` (docs/testing.md).
"""

from __future__ import annotations

from typing import Any, cast

from redis import Redis

from .config import MEMORY_REDIS_URL


def is_in_process(url: str) -> bool:
    """Whether ``url`` names the in-process Redis, which no other process can reach."""
    return url == MEMORY_REDIS_URL


def connect(url: str, *, timeout: float | None = None) -> Redis:
    """A client for ``url``; ``timeout`` bounds connecting and each reply (a server's only).

    Each call with ``"memory://"`` makes a new, empty in-process Redis.
    """
    if is_in_process(url):
        # Imported here: fakeredis is only installed with the testing extra.
        import fakeredis

        return fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)


def synchronous(redis: Redis) -> Any:
    """``redis`` typed as the synchronous client it is (redis-py's types also allow async)."""
    return cast(Any, redis)


def as_text(value: Any) -> str:
    """A Redis reply (bytes or text) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
