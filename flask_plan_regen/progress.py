"""A regeneration's progress: the events a client is shown, and how changes are announced.

Each state a regeneration passes through has an event id, computed from its
status and attempt count, that only grows along the regeneration's life:

=====================================  ==========
queued, or waiting to retry attempt n  ``3n + 1``
attempt n running                      ``3n``
ended after n attempts                 ``3n + 2``
=====================================  ==========

A regeneration only moves ``pending(n) -> processing(n+1) -> pending(n+1) |
ended(n+1)`` or ``pending(n) -> ended(n)`` (canceled, capped), so its row alone
tells every state it went through: the event stream (streams.py) re-reads the
row and sends the states after the last id the client saw. The pub/sub message
:func:`publish` sends after each change only says "look again": a lost or late
message delays an event, it never drops one, and a client that reconnects with
``Last-Event-ID`` is sent exactly the states it missed.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from redis.exceptions import RedisError

from .models import TERMINAL_STATUSES, FailureClass, Regeneration, Status
from .state import RegenState

logger = logging.getLogger("flask_plan_regen.progress")


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    """One state of a regeneration, as the event stream sends it."""

    id: int
    generation_id: str
    plan_id: str
    status: Status
    attempts: int
    failure_class: str | None = None
    """Why the regeneration failed, or (while ``pending`` to retry) why the last attempt did."""
    error: str | None = None
    result: dict[str, Any] | None = None

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_STATUSES


def event_id(status: Status, attempts: int) -> int:
    """The id of the state ``status`` after ``attempts`` attempts (see the module doc)."""
    if status == Status.PROCESSING:
        return 3 * attempts
    if status == Status.PENDING:
        return 3 * attempts + 1
    return 3 * attempts + 2


def history(regeneration: Regeneration) -> list[ProgressEvent]:
    """Every state ``regeneration`` has been in, oldest first; the last is its current one."""
    attempts = regeneration.attempts
    status = Status(regeneration.status)
    failures = {
        entry.get("attempt"): entry
        for entry in regeneration.error_history or []
        if isinstance(entry, dict)
    }

    def state(status: Status, number: int, **data: Any) -> ProgressEvent:
        return ProgressEvent(
            event_id(status, number), regeneration.id, regeneration.plan_id, status, number, **data
        )

    def waiting_after(number: int) -> ProgressEvent:
        failure = failures.get(number, {})
        return state(
            Status.PENDING, number, failure_class=failure.get("class"), error=failure.get("error")
        )

    events = [state(Status.PENDING, 0)]
    for number in range(1, attempts + 1):
        events.append(state(Status.PROCESSING, number))
        if number < attempts or _waited_after_last_attempt(regeneration, status, failures):
            events.append(waiting_after(number))
    if status in TERMINAL_STATUSES:
        events.append(
            state(
                status,
                attempts,
                failure_class=regeneration.failure_class,
                error=regeneration.error,
                result=regeneration.result if status == Status.SUCCEEDED else None,
            )
        )
    return events


def _waited_after_last_attempt(
    regeneration: Regeneration, status: Status, failures: dict[Any, Any]
) -> bool:
    """Whether the row went back to ``pending`` after its last attempt.

    It is waiting now, or it ended from there: canceled while waiting to retry
    (that attempt's failure is in the history; an attempt that was running when
    canceled records none), or failed as ``capped`` (only a pending row is).
    """
    return (
        status == Status.PENDING
        or (status == Status.CANCELED and regeneration.attempts in failures)
        or regeneration.failure_class == FailureClass.CAPPED
    )


def events_after(regeneration: Regeneration, last_event_id: int | None) -> list[ProgressEvent]:
    """What a client that saw ``last_event_id`` is sent: the current state when it saw none."""
    events = history(regeneration)
    if last_event_id is None:
        return events[-1:]
    return [event for event in events if event.id > last_event_id]


def channel(state: RegenState, generation_id: str) -> str:
    """The pub/sub channel announcing changes of one regeneration."""
    return state.key("progress", generation_id)


def publish(state: RegenState, generation_id: str, status: Status) -> None:
    """Tell open event streams that the regeneration changed (to ``status``; committed).

    Best effort: with Redis unreachable this only logs, and the streams see the
    change when they next re-read the row (``PLAN_REGEN_STREAM_RECHECK``).
    """
    try:
        state.redis.publish(channel(state, generation_id), str(status))
    except RedisError as error:
        logger.warning(
            "progress of %s (%s) not published, Redis unavailable: %s; event streams see it "
            "at their next re-read",
            generation_id,
            status,
            error,
        )
