"""The package's Redis client: a Redis server's, a Sentinel-managed primary's, or an in-process one.

``PLAN_REGEN_REDIS_URL`` takes three kinds of URL:

* ``redis://``, ``rediss://`` (TLS) or ``unix://``: one Redis server, with
  redis-py's URL options (``?ssl_ca_certs=/path/ca.pem`` for a private CA,
  ``ssl_certfile``/``ssl_keyfile`` for a client certificate: docs/operations.md).
* ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db][?options]``
  (``rediss+sentinel://`` for TLS to the Redis servers): the primary that the
  Sentinels name for ``service``. Every command goes to the address the
  Sentinels give, asked again after a connection fails or a server answers
  READONLY, so a process follows a failover with no restart. The password is
  the Redis servers'; ``sentinel_password`` (and ``sentinel_username``) in the
  query are the Sentinels'. The other options are redis-py's, as for ``redis://``.
* ``"memory://"`` gives each app its own in-process Redis (fakeredis, with Lua
  scripts run by lupa): RQ's queues, the rate limit, idempotency keys, the tier
  cache, leases and locks then need no server. A job queued on it can only run
  in the same process: ``PLAN_REGEN_EAGER`` or
  :func:`flask_plan_regen.testing.run_pending_jobs` (docs/testing.md).
"""

from __future__ import annotations

import logging
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from redis import Redis
from redis.connection import parse_url
from redis.exceptions import (
    ConnectionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TimeoutError,
    TryAgainError,
)
from redis.exceptions import MasterDownError as _MasterDownError
from redis.sentinel import Sentinel

from .config import MEMORY_REDIS_URL

logger = logging.getLogger("flask_plan_regen.redis")

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379
SENTINEL_TIMEOUT = 2.0
"""Seconds to wait for a Sentinel's answer when the client has no timeout of its own."""

TRANSIENT_ERRORS: tuple[type[RedisError], ...] = (
    ConnectionError,  # includes LOADING (BusyLoadingError) and no primary known to the Sentinels
    TimeoutError,
    ReadOnlyError,  # a primary demoted to replica, until clients find the new one
    OutOfMemoryError,  # maxmemory reached under noeviction, until memory is freed
    _MasterDownError,  # a replica whose primary is down (replica-serve-stale-data no)
    TryAgainError,
)
"""Redis errors that end by themselves: wait with backoff and try again, never give up."""


PUBLIC_URL_OPTIONS = frozenset(
    {
        "db",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "ssl_min_version",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "health_check_interval",
        "retry_on_timeout",
        "protocol",
        "client_name",
    }
)
"""URL options that hold no secret (paths, switches, timeouts): printed as they are.
A key file's path is not its content; every other option's value is masked."""


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` ends by itself: one of :data:`TRANSIENT_ERRORS`, or a blocking
    command cut short by the server changing role (``UNBLOCKED``, a primary demoted)."""
    return isinstance(error, TRANSIENT_ERRORS) or (
        isinstance(error, RedisError) and str(error).startswith("UNBLOCKED")
    )


def is_in_process(url: str) -> bool:
    """Whether ``url`` names the in-process Redis, which no other process can reach."""
    return url == MEMORY_REDIS_URL


def is_sentinel(url: str) -> bool:
    """Whether ``url`` names a primary through Redis Sentinels (``redis+sentinel://``)."""
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def connect(url: str, *, timeout: float | None = None) -> Redis:
    """A client for ``url``; ``timeout`` bounds connecting and each reply (a server's only).

    Each call with ``"memory://"`` makes a new, empty in-process Redis.
    """
    if is_in_process(url):
        # Imported here: fakeredis is only installed with the testing extra.
        import fakeredis

        return fakeredis.FakeRedis(server=fakeredis.FakeServer())
    try:
        if is_sentinel(url):
            client = _sentinel_primary(url, timeout)
        else:
            client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        # Builds (without connecting) one connection: an option redis-py does not know
        # fails here, at start-up, rather than in every command.
        pool = client.connection_pool
        pool.connection_class(**pool.connection_kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"PLAN_REGEN_REDIS_URL is not usable: {error}") from None
    return client


def parse_sentinel_url(
    url: str,
) -> tuple[list[tuple[str, int]], str, dict[str, Any], dict[str, Any]]:
    """``(sentinel addresses, service name, Redis options, Sentinel options)`` of ``url``.

    Raises ``ValueError`` naming what is wrong.
    """
    parts = urlsplit(url)
    user_info, _, hosts = parts.netloc.rpartition("@")
    addresses = []
    for host in filter(None, hosts.split(",")):
        if host.startswith("["):  # [IPv6]:port
            name, _, port = host[1:].partition("]")
            port = port.removeprefix(":")
        elif host.count(":") == 1:
            name, _, port = host.partition(":")
        else:
            name, port = host, ""
        if port and not port.isdigit():
            raise ValueError(f"a Sentinel's port is a number; got {port!r}")
        addresses.append((name, int(port or DEFAULT_SENTINEL_PORT)))
    if not addresses:
        raise ValueError("a redis+sentinel:// URL names at least one Sentinel host:port")
    path = [unquote(segment) for segment in parts.path.split("/") if segment]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("a redis+sentinel:// URL's path is /<service name>[/<db>]")
    query = dict(parse_qsl(parts.query))
    sentinel_options = {
        key: query.pop(f"sentinel_{key}")
        for key in ("username", "password")
        if f"sentinel_{key}" in query
    }
    # redis-py's own URL parsing turns the rest into connection options, types and all.
    scheme = "rediss" if parts.scheme.lower().startswith("rediss") else "redis"
    at = f"{user_info}@" if user_info else ""
    db = path[1] if len(path) == 2 else "0"
    options: dict[str, Any] = parse_url(  # type: ignore[no-untyped-call]
        f"{scheme}://{at}localhost/{db}?{urlencode(query)}"
    )
    for key in ("host", "port", "path"):
        options.pop(key, None)
    if options.pop("connection_class", None) is not None and scheme == "rediss":
        options["ssl"] = True
    return addresses, path[0], options, sentinel_options


def _sentinel_primary(url: str, timeout: float | None) -> Redis:
    addresses, service, options, sentinel_options = parse_sentinel_url(url)
    timeouts = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    options = {**timeouts, **options}
    # A Sentinel that hangs is skipped for the next one, even by a worker (no timeout).
    asking = timeout if timeout is not None else SENTINEL_TIMEOUT
    sentinel_kwargs = {"socket_connect_timeout": asking, "socket_timeout": asking}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        addresses, sentinel_kwargs={**sentinel_kwargs, **sentinel_options}, **options
    )
    client: Redis = sentinel.master_for(service, redis_class=Redis)  # type: ignore[no-untyped-call]
    return client


def warn_unless_noeviction(redis: Redis) -> str | None:
    """Log (and return) a warning when Redis may evict keys (``maxmemory-policy`` not
    ``noeviction``).

    An evicting Redis silently drops rate-limit counters, leases and worker
    records. Nothing is said when Redis is unreachable or refuses ``CONFIG``
    (managed services often do).
    """
    try:
        settings: dict[str, str] = redis.config_get("maxmemory-policy")  # type: ignore[assignment]
        policy = settings.get("maxmemory-policy")
    except RedisError:
        return None
    if policy in (None, "noeviction"):
        return None
    message = (
        f"Redis maxmemory-policy is {policy!r}, not 'noeviction': under memory pressure it "
        "evicts rate-limit counters, leases and worker records, and jobs run twice or are "
        "requeued (docs/operations.md, 'Redis memory')"
    )
    logger.warning(message)
    return message


def synchronous(redis: Redis) -> Any:
    """``redis`` typed as the synchronous client it is (redis-py's types also allow async)."""
    return cast(Any, redis)


def as_text(value: Any) -> str:
    """A Redis reply (bytes or text) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
