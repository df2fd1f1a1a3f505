"""Leases: a running attempt's proof of life, a Redis key its work horse renews.

While an attempt runs, a thread of the process running it sets
``<namespace>:lease:<generation id>`` every third of ``PLAN_REGEN_LEASE_TTL``,
starting a third of the TTL after the attempt started: an attempt shorter than
that never touches Redis for its lease (in a forked work horse, that first use
would also open a Redis connection). A worker killed with its work horse stops
renewing, the key expires, and the next sweep (recovery.py) releases the
attempt. Nothing is released in the first TTL after an attempt started (the
sweep and a takeover both check ``started_at``), so its first lease, a third
of a TTL in, is always there in time. A lease is only taken to be lapsed once
two looks at least half a TTL apart found it missing, so a Redis that lost its
data (and with it every lease) gives the renewing threads time to set theirs
again before anything is released.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator, Sequence

from flask import current_app
from redis.exceptions import RedisError

from .state import RegenState

logger = logging.getLogger("flask_plan_regen.leases")

# Delete the lease only if it is still this attempt's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lease_ttl() -> int:
    return int(current_app.config["PLAN_REGEN_LEASE_TTL"])


@contextlib.contextmanager
def held_lease(state: RegenState, generation_id: str, attempt: int) -> Iterator[None]:
    """Hold the lease of ``generation_id``'s attempt ``attempt`` while the block runs."""
    ttl = lease_ttl()
    key = state.key("lease", generation_id)
    token = f"{attempt}:{secrets.token_hex(6)}"
    redis = state.redis
    stop = threading.Event()
    taken = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl / 3):
            try:
                redis.set(key, token, ex=ttl)
                taken.set()
            except RedisError as error:
                logger.warning(
                    "lease of %s not renewed, Redis unavailable: %s", generation_id, error
                )

    renew_thread = threading.Thread(target=renew, name=f"lease-{generation_id}", daemon=True)
    renew_thread.start()
    try:
        yield
    finally:
        stop.set()
        renew_thread.join(timeout=ttl)
        if taken.is_set():  # else there is nothing to release
            try:
                redis.eval(_RELEASE, 1, key, token)
            except RedisError as error:
                logger.warning("lease of %s not released (it expires): %s", generation_id, error)


def is_held(state: RegenState, generation_id: str) -> bool:
    """Whether some attempt of ``generation_id`` holds its lease right now."""
    return bool(state.redis.exists(state.key("lease", generation_id)))


def lapsed(state: RegenState, generation_ids: Sequence[str]) -> set[str]:
    """The ids whose lease has been missing since a look at least half a TTL ago.

    Raises ``RedisError``: with Redis down, no lease can be judged lapsed.
    """
    if not generation_ids:
        return set()
    ttl = lease_ttl()
    with state.redis.pipeline(transaction=False) as pipe:
        for generation_id in generation_ids:
            pipe.exists(state.key("lease", generation_id))
        held = pipe.execute()
    now = time.time()
    with state.redis.pipeline(transaction=False) as pipe:
        for generation_id, exists in zip(generation_ids, held, strict=True):
            seen = state.key("lease_missing", generation_id)
            if exists:  # back (or never gone): a later absence starts a new count
                pipe.delete(seen)
            else:
                pipe.set(seen, repr(now), nx=True, ex=4 * ttl)
                pipe.get(seen)
        answers = iter(pipe.execute())
    lapsed_ids = set()
    for generation_id, exists in zip(generation_ids, held, strict=True):
        next(answers)  # the DELETE, or the SET NX
        if not exists and now - float(next(answers)) >= ttl / 2:
            lapsed_ids.add(generation_id)
    return lapsed_ids


def lease_ages(state: RegenState, generation_ids: Sequence[str]) -> dict[str, float | None]:
    """Seconds since each attempt last renewed its lease; ``None`` where none is held
    (an attempt younger than a third of the TTL has not set one yet)."""
    if not generation_ids:
        return {}
    ttl = lease_ttl()
    with state.redis.pipeline(transaction=False) as pipe:
        for generation_id in generation_ids:
            pipe.pttl(state.key("lease", generation_id))
        left = pipe.execute()
    return {
        generation_id: (ttl - ms / 1000 if ms >= 0 else None)
        for generation_id, ms in zip(generation_ids, left, strict=True)
    }
