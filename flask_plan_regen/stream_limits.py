"""How many event streams a process, and a user, may hold open (docs/http-api.md).

An open stream holds a server thread for its whole life. Per process,
``PLAN_REGEN_STREAM_MAX_OPEN`` bounds them (503 beyond); left ``None`` it is
derived from the server's threads where they can be known (gunicorn's
``--threads``, from its command line or ``GUNICORN_CMD_ARGS``): a quarter of
them, so that streams never take the threads every other request needs.

Per user, ``PLAN_REGEN_STREAM_MAX_PER_USER`` bounds them across every process
sharing the Redis: one more is refused with 429 rather than closing the
user's oldest one. Refusing is decided by the request alone, and tells the
client what happened; closing the oldest would need a signal to a stream in
another process, and two tabs (or a client reconnecting in a loop) would keep
closing each other's streams. Each stream holds an entry in a sorted set
that expires a while after ``PLAN_REGEN_STREAM_MAX_LIFE``, so a process that
dies holding streams gives their places back on its own.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

from redis.exceptions import RedisError

from .errors import ApiError
from .state import RegenState

logger = logging.getLogger("flask_plan_regen.streams")

DEFAULT_MAX_OPEN = 100
"""The per-process cap where the server's threads cannot be known (or are not a bound)."""
THREADS_PER_STREAM = 4
"""A derived cap lets streams hold one server thread in this many."""
# Gunicorn worker classes (short and class names) that run each request on a thread of
# a fixed pool.
_THREADED_WORKERS = ("sync", "gthread", "SyncWorker", "ThreadWorker")

# Drop the user's expired entries; add one if under the cap. KEYS[1]: the set;
# ARGV: now, cap, member, its expiry (epoch s). Returns 1 if added.
_CLAIM = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(ARGV[4] - ARGV[1]))
return 1
"""


def server_threads() -> int | None:
    """The threads of this gunicorn worker, when its settings say; else ``None``.

    Read as gunicorn reads them, from ``GUNICORN_CMD_ARGS`` and the command line.
    ``None`` outside gunicorn, with a config file (its settings are code), and for
    worker classes not bounded by threads (gevent, eventlet, ...).
    """
    if "gunicorn.arbiter" not in sys.modules:
        return None
    # Imported here: only under gunicorn (not a dependency of the package).
    from gunicorn.config import Config, get_default_config_file  # type: ignore[import-untyped]

    parser = Config().parser()
    try:
        from_env, _ = parser.parse_known_args(shlex.split(os.environ.get("GUNICORN_CMD_ARGS", "")))
        given, _ = parser.parse_known_args(sys.argv[1:])
    except SystemExit:
        return None
    if given.config or from_env.config or get_default_config_file() is not None:
        return None
    threads = given.threads or from_env.threads or 1
    worker_class = str(given.worker_class or from_env.worker_class or "sync")
    if worker_class.rsplit(".", 1)[-1] not in _THREADED_WORKERS:
        return None
    return int(threads)


def max_open_streams(config: Mapping[str, Any]) -> int:
    """``PLAN_REGEN_STREAM_MAX_OPEN``, or the cap derived from the server's threads.

    Logs a warning when a configured cap leaves the server's other requests
    fewer threads than the derived one would.
    """
    configured = config["PLAN_REGEN_STREAM_MAX_OPEN"]
    threads = server_threads()
    safe = None if threads is None else max(1, threads // THREADS_PER_STREAM)
    if configured is None:
        return DEFAULT_MAX_OPEN if safe is None else safe
    if safe is not None and configured > safe:
        logger.warning(
            "PLAN_REGEN_STREAM_MAX_OPEN = %s exceeds %s, a quarter of this server's %s threads: "
            "open event streams can take every thread and stall all other requests",
            configured,
            safe,
            threads,
        )
    return int(configured)


def claim_user_stream(state: RegenState, user_id: str, config: Mapping[str, Any]) -> str | None:
    """Count a new stream of ``user_id``; its token for :func:`release_user_stream`.

    Raises a 429 :class:`ApiError` when the user holds ``PLAN_REGEN_STREAM_MAX_PER_USER``
    streams already. ``None`` when Redis cannot count: the stream is let through.
    """
    now = time.time()
    # Past its maximum life a stream still waits out at most a keepalive before closing.
    expires = (
        now
        + float(config["PLAN_REGEN_STREAM_MAX_LIFE"])
        + 2 * float(config["PLAN_REGEN_STREAM_KEEPALIVE"])
    )
    token = uuid.uuid4().hex
    cap = int(config["PLAN_REGEN_STREAM_MAX_PER_USER"])
    try:
        added = state.redis.eval(_CLAIM, 1, _user_key(state, user_id), now, cap, token, expires)
    except RedisError as error:
        logger.warning("event streams of %s not counted, Redis unavailable: %s", user_id, error)
        return None
    if not added:
        raise ApiError(
            429,
            "TOO_MANY_STREAMS_FOR_USER",
            f"You have {cap} event streams open, as many as one user may; close one, or poll "
            "the status route.",
            # A closed stream's place is free once the server notices, at its next keepalive.
            headers={"Retry-After": str(math.ceil(float(config["PLAN_REGEN_STREAM_KEEPALIVE"])))},
        )
    return token


def release_user_stream(state: RegenState, user_id: str, token: str | None) -> None:
    """Give back the place a stream took with :func:`claim_user_stream`; best effort."""
    if token is None:
        return
    try:
        state.redis.zrem(_user_key(state, user_id), token)
    except RedisError as error:  # the entry expires on its own
        logger.warning("event stream of %s not uncounted, Redis unavailable: %s", user_id, error)


def _user_key(state: RegenState, user_id: str) -> str:
    return state.key("streams", user_id)
