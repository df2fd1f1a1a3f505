"""The event stream of one regeneration (server-sent events), for the events route.

The first event is the regeneration's current state or, for a client that
sends ``Last-Event-ID``, every state after that one (progress.py); then one
event per change until it ends, when the server closes the stream. A
regeneration that has already ended is answered at once: the states the
client has not seen, or ``204 No Content`` (which tells an ``EventSource`` to
stop reconnecting) when it has seen them all.

Changes are noticed through the regeneration's pub/sub channel, and by
re-reading the row right after subscribing and whenever no message came for
``PLAN_REGEN_STREAM_RECHECK`` seconds: a change made before the subscription,
or a message lost, is sent late, never dropped. With Redis unreachable the
stream keeps re-reading the row on that schedule. A comment line after
``PLAN_REGEN_STREAM_KEEPALIVE`` idle seconds keeps proxies from closing the
stream and lets the server notice a client that has gone.

An open stream holds one of the process's ``PLAN_REGEN_STREAM_MAX_OPEN`` slots
(503 beyond), one of its user's ``PLAN_REGEN_STREAM_MAX_PER_USER`` (429 beyond,
stream_limits.py), one Redis connection and, under a threaded server, one
thread; it gives its database connection back between reads. After
``PLAN_REGEN_STREAM_MAX_LIFE`` seconds the server closes it: the client
(``EventSource`` does it on its own) reconnects with ``Last-Event-ID`` and
carries on where it was.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

from flask import Response, current_app, stream_with_context
from redis.client import PubSub
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from . import documents, previews, progress
from .errors import ApiError
from .models import TERMINAL_STATUSES, Regeneration, Status
from .output import MAX_MODULES
from .previews import Cursor, ModuleEvent
from .progress import ProgressEvent
from .state import RegenState
from .stream_limits import claim_user_stream, release_user_stream

logger = logging.getLogger("flask_plan_regen.streams")

MIMETYPE = "text/event-stream"
LAST_EVENT_ID_HEADER = "Last-Event-ID"
KEEPALIVE = ": keepalive\n\n"
# Before closing a stream at its maximum life: reconnect after 1 s (EventSource's default is ~3).
RECONNECT = "retry: 1000\n\n"
# No caching, and no buffering by nginx (which would hold events back).
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event_stream(
    state: RegenState, regeneration: Regeneration, last_event_id: str | None
) -> Response:
    """The answer of the events route for ``regeneration`` (owned by the caller)."""
    after = parse_last_event_id(last_event_id, regeneration)
    events = previews.events_after(state, regeneration, after)
    ended = Status(regeneration.status) in TERMINAL_STATUSES
    generation_id = regeneration.id
    state.db.session.close()  # no database connection held while the stream waits
    if ended:
        if not events:
            return Response(status=204)
        return Response("".join(map(format_event, events)), mimetype=MIMETYPE, headers=HEADERS)
    if not state.stream_slots.acquire(blocking=False):
        raise ApiError(
            503,
            "TOO_MANY_STREAMS",
            "This server has as many event streams open as it may; poll the status route "
            "or try again shortly.",
            headers={"Retry-After": "5"},
        )
    user_id = regeneration.user_id
    try:
        user_slot = claim_user_stream(state, user_id, current_app.config)
    except ApiError:
        state.stream_slots.release()
        raise
    follow = _follow(state, generation_id, events, after or (0, 0), current_app.config)
    response = Response(stream_with_context(follow), mimetype=MIMETYPE, headers=HEADERS)
    # Called when the server closes the response, even one never iterated.
    response.call_on_close(state.stream_slots.release)
    response.call_on_close(lambda: release_user_stream(state, user_id, user_slot))
    return response


def parse_last_event_id(value: str | None, regeneration: Regeneration) -> Cursor | None:
    """The client's ``Last-Event-ID``: ``None`` when absent, 400 unless one of our ids.

    A state's id is a number (progress.py), a module's ``<number>.<module>`` (previews.py).
    """
    if value is None or not value.strip():
        return None
    current = progress.event_id(Status(regeneration.status), regeneration.attempts)
    state_id, dot, module = value.strip().partition(".")
    if not (
        len(state_id) <= 9
        and state_id.isascii()
        and state_id.isdigit()
        and int(state_id) <= current
        and (
            not dot
            or (
                len(module) <= 2
                and module.isascii()
                and module.isdigit()
                and 1 <= int(module) <= MAX_MODULES
                and int(state_id) % 3 == 0  # after an attempt's processing state
            )
        )
    ):
        raise ApiError(
            400,
            "INVALID_LAST_EVENT_ID",
            f"{LAST_EVENT_ID_HEADER} must be the id of an event this stream sent.",
        )
    return int(state_id), int(module) if dot else 0


def format_event(event: ProgressEvent | ModuleEvent) -> str:
    if isinstance(event, ModuleEvent):
        data = documents.dump(documents.module_event_schema, event)
        kind = f"event: {previews.MODULE_EVENT}\n"
    else:
        data = documents.dump(documents.regeneration_event_schema, event)
        kind = ""
    return f"id: {event.id}\n{kind}data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _follow(
    state: RegenState,
    generation_id: str,
    first: list[ProgressEvent | ModuleEvent],
    last_id: Cursor,
    config: Mapping[str, Any],
) -> Iterator[str]:
    keepalive = float(config["PLAN_REGEN_STREAM_KEEPALIVE"])
    recheck = float(config["PLAN_REGEN_STREAM_RECHECK"])
    close_at = time.monotonic() + float(config["PLAN_REGEN_STREAM_MAX_LIFE"])
    for event in first:
        yield format_event(event)
        last_id = previews.cursor_of(event)
    if not first:  # the client is up to date: a comment, since servers hold headers till a byte
        yield KEEPALIVE
    with _Subscription(state, generation_id, float(config["PLAN_REGEN_REDIS_TIMEOUT"])) as changes:
        read_at = 0.0  # at once: the row may have changed before the subscription
        last_write = time.monotonic()
        while True:
            if time.monotonic() >= read_at:
                events, ended = _read(state, generation_id, last_id)
                for event in events:
                    yield format_event(event)
                    last_id = previews.cursor_of(event)
                    last_write = time.monotonic()
                if ended:
                    return
                read_at = time.monotonic() + recheck
            if time.monotonic() >= close_at:
                yield RECONNECT
                return
            if time.monotonic() - last_write >= keepalive:
                yield KEEPALIVE
                last_write = time.monotonic()
            if changes.wait(min(read_at, last_write + keepalive, close_at) - time.monotonic()):
                read_at = 0.0


def _read(
    state: RegenState, generation_id: str, after: Cursor
) -> tuple[list[ProgressEvent | ModuleEvent], bool]:
    """The states after ``after``, and whether the regeneration has ended (or is gone)."""
    session = state.db.session
    try:
        regeneration = session.get(Regeneration, generation_id)
        if regeneration is None:
            return [], True
        events = previews.events_after(state, regeneration, after)
        return events, regeneration.status in TERMINAL_STATUSES
    except SQLAlchemyError as error:
        logger.warning(
            "event stream of %s: database unavailable, reading again later: %s",
            generation_id,
            error,
        )
        return [], False
    finally:
        session.close()


class _Subscription:
    """The regeneration's pub/sub channel; without Redis, :meth:`wait` only waits."""

    def __init__(self, state: RegenState, generation_id: str, confirm_timeout: float) -> None:
        self.generation_id = generation_id
        self.pubsub: PubSub | None = state.redis.pubsub()  # type: ignore[no-untyped-call]
        try:
            self.pubsub.subscribe(progress.channel(state, generation_id))
            # Once Redis confirms, no later publish is missed: the re-read that follows
            # sees every change made before it.
            self.pubsub.get_message(timeout=confirm_timeout)
        except RedisError as error:
            self._lost(error)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s; ``True`` if a change was announced meanwhile."""
        timeout = max(timeout, 0.0)
        if self.pubsub is None:
            time.sleep(timeout)
            return False
        try:
            message = self.pubsub.get_message(timeout=timeout)
        except RedisError as error:
            self._lost(error)
            return False
        return message is not None and message.get("type") == "message"

    def _lost(self, error: RedisError) -> None:
        logger.warning(
            "event stream of %s: no pub/sub, Redis unavailable (%s); re-reading the row "
            "every PLAN_REGEN_STREAM_RECHECK seconds instead",
            self.generation_id,
            error,
        )
        self.close()

    def close(self) -> None:
        if self.pubsub is not None:
            with contextlib.suppress(RedisError):  # the connection is dropped either way
                self.pubsub.close()
            self.pubsub = None

    def __enter__(self) -> _Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
