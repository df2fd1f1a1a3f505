"""``Idempotency-Key`` on the POST routes: a retried request is answered, not redone.

A key is scoped to the calling user. The first request with a key takes a Redis
lock (``SET NX``) holding an "in progress" marker and the request's fingerprint
(method, path and canonical JSON body). When it answers 2xx, the answer (status,
body, ``Location``) is kept for ``PLAN_REGEN_IDEMPOTENCY_TTL`` seconds and every
later request with that key and fingerprint gets it again, with
``Idempotent-Replayed: true``, without queueing anything. Other answers (4xx, 503)
changed nothing, so the lock is released and a retry is evaluated afresh.

A duplicate that arrives while the first is still running waits up to
``PLAN_REGEN_IDEMPOTENCY_WAIT`` seconds for its answer, then gets 409
``IDEMPOTENCY_REQUEST_IN_PROGRESS``. The same key with another fingerprint is 422
``IDEMPOTENCY_KEY_REUSED``. Answers given from the record (replays, 409, 422)
carry the caller's ``RateLimit-*`` headers on rate-limited routes, counting nothing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, cast

from flask import Response, current_app, request
from redis import Redis
from redis.exceptions import RedisError

from .bodies import read_body
from .errors import ApiError, queue_unavailable
from .identity import current_user_id, rate_limit_tier
from .ratelimit import note_rate_limit
from .state import get_state

P = ParamSpec("P")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# An "in progress" marker must outlive the request that holds it (else a duplicate
# would run it twice), yet free the key soon after a web process dies: it lives
# twice a POST's worst case (see in_progress_ttl), and at least this long.
MIN_IN_PROGRESS_TTL = 60
REDIS_CALLS_PER_REQUEST = 6  # lock, rate limit, tier cache, enqueue, answer, spare
STRIPE_MAX_BACKOFF = 5.0  # the Stripe SDK's longest sleep between retries
REQUEST_MARGIN = 10.0  # database statements and the rest of the request
POLL_INTERVAL = 0.05
REPLAYED_HEADERS = ("Location", "Content-Type", "Retry-After")

logger = logging.getLogger("flask_plan_regen.idempotency")

# Delete the marker only if it is still ours (it may have expired and been retaken).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def idempotent(*, rate_limited: bool) -> Callable[[Callable[P, Response]], Callable[P, Response]]:
    """Make a POST view honour the ``Idempotency-Key`` header (a no-op without it).

    ``rate_limited``: the view counts the rate limit, so answers given from the
    record carry the ``RateLimit-*`` headers too.
    """

    def decorator(view: Callable[P, Response]) -> Callable[P, Response]:
        @functools.wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Response:
            key = request.headers.get(HEADER)
            if key is None:
                return view(*args, **kwargs)
            state = get_state()
            user_id = current_user_id(state)  # 401 before any complaint about the key
            if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
                raise ApiError(
                    400,
                    "INVALID_IDEMPOTENCY_KEY",
                    f"{HEADER} must be 1-{MAX_KEY_LENGTH} printable ASCII characters.",
                )
            slot = IdempotencySlot(
                state.redis, state.key("idempotency"), user_id, key, request_fingerprint()
            )
            on_recorded_answer = (
                functools.partial(
                    note_rate_limit, state.rate_limiter, user_id, rate_limit_tier(state, user_id)
                )
                if rate_limited
                else None
            )
            try:
                return slot.run(lambda: view(*args, **kwargs), on_recorded_answer)
            except RedisError as error:
                raise queue_unavailable() from error

        return wrapper

    return decorator


def in_progress_ttl(config: Mapping[str, Any]) -> int:
    """Seconds an "in progress" marker lives: twice the worst case of a POST.

    That worst case is a Stripe call with all its retries (when Stripe is on),
    a slow Redis answering each call just inside its timeout, and a margin.
    """
    worst = REDIS_CALLS_PER_REQUEST * config["PLAN_REGEN_REDIS_TIMEOUT"] + REQUEST_MARGIN
    if config["PLAN_REGEN_STRIPE_API_KEY"]:
        attempts = config["PLAN_REGEN_STRIPE_MAX_NETWORK_RETRIES"] + 1
        worst += attempts * config["PLAN_REGEN_STRIPE_TIMEOUT"]
        worst += (attempts - 1) * STRIPE_MAX_BACKOFF
    return max(MIN_IN_PROGRESS_TTL, math.ceil(2 * float(worst)))


def request_fingerprint() -> str:
    """Hash of method, path and body; JSON bodies are compared by value, not by bytes."""
    raw = read_body(current_app.config["PLAN_REGEN_MAX_BODY_BYTES"])
    try:
        body = json.dumps(json.loads(raw) if raw.strip() else {}, sort_keys=True)
    except (ValueError, RecursionError):
        body = raw.hex()
    text = "\n".join((request.method, request.path, body))
    return hashlib.sha256(text.encode()).hexdigest()


class IdempotencySlot:
    """One (user, key) pair's record in Redis and the protocol around it."""

    def __init__(
        self, redis: Redis, key_prefix: str, user_id: str, key: str, fingerprint: str
    ) -> None:
        self.redis = redis
        scope = hashlib.sha256(json.dumps([user_id, key]).encode()).hexdigest()
        self.redis_key = f"{key_prefix}:{scope}"
        self.fingerprint = fingerprint
        self.marker = json.dumps(
            {"state": "in_progress", "fingerprint": fingerprint, "token": secrets.token_hex(8)}
        )

    def run(
        self, view: Callable[[], Response], on_recorded_answer: Callable[[], None] | None = None
    ) -> Response:
        """The view's answer, or one from the record (``on_recorded_answer`` is called first)."""
        config = current_app.config
        deadline = time.monotonic() + config["PLAN_REGEN_IDEMPOTENCY_WAIT"]
        marker_ttl = in_progress_ttl(config)
        while True:
            if self.redis.set(self.redis_key, self.marker, nx=True, ex=marker_ttl):
                return self._process(view, config["PLAN_REGEN_IDEMPOTENCY_TTL"])
            raw = cast(bytes | None, self.redis.get(self.redis_key))  # a sync client
            if raw is None:  # released or expired between SET and GET: try again
                continue
            answer = self._recorded_answer(json.loads(raw), deadline)
            if answer is None:
                time.sleep(POLL_INTERVAL)
                continue
            if on_recorded_answer is not None:
                on_recorded_answer()
            if isinstance(answer, ApiError):
                raise answer
            return answer

    def _recorded_answer(
        self, record: dict[str, Any], deadline: float
    ) -> Response | ApiError | None:
        """What the record answers; ``None`` while the first request may still answer."""
        if record["fingerprint"] != self.fingerprint:
            return ApiError(
                422,
                "IDEMPOTENCY_KEY_REUSED",
                f"This {HEADER} was already used with a different request.",
            )
        if record["state"] == "done":
            return replay(record)
        if time.monotonic() >= deadline:
            return ApiError(
                409,
                "IDEMPOTENCY_REQUEST_IN_PROGRESS",
                f"A request with this {HEADER} is still being processed; retry shortly.",
                headers={"Retry-After": "1"},
            )
        return None

    def _process(self, view: Callable[[], Response], ttl: int) -> Response:
        try:
            response = view()
        except BaseException:
            self._release()
            raise
        if not 200 <= response.status_code < 300:
            self._release()
            return response
        record = {
            "state": "done",
            "fingerprint": self.fingerprint,
            "status": response.status_code,
            "body": response.get_data(as_text=True),
            "headers": {h: response.headers[h] for h in REPLAYED_HEADERS if h in response.headers},
        }
        try:
            self.redis.set(self.redis_key, json.dumps(record), ex=ttl)
        except RedisError:
            # The work is done and queued; only replays of it are lost.
            logger.warning("could not store the answer for an idempotency key", exc_info=True)
        return response

    def _release(self) -> None:
        try:
            self.redis.eval(_RELEASE, 1, self.redis_key, self.marker)
        except RedisError:
            logger.warning("could not release an idempotency key; it expires by itself")


def replay(record: dict[str, Any]) -> Response:
    response = Response(record["body"], status=record["status"], headers=record["headers"])
    response.headers[REPLAYED_HEADER] = "true"
    return response
