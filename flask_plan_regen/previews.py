"""Modules shown while an attempt is still generating: stored, counted, and sent as events.

Each module a provider completes is checked against the output rules
(output.check_module; a broken one ends the attempt as ``validation`` at
once, before more tokens are paid for), then pushed to a Redis list per
regeneration and announced on its progress channel. Redis, not the
database: a preview is read by event streams only while the regeneration
runs, is replaced by the next attempt, and must never be mistaken for the
plan, so it costs one ``RPUSH`` + ``EXPIRE`` per module (one round trip) and
no write to the database, which every finishing regeneration needs. The list
expires ``job_timeout`` seconds after its last module, as long as the attempt
could still be running; a new attempt clears it.

A module's event id is ``"<attempt's processing id>.<module number>"``
(``"3.1"`` is the first module of attempt 1): after the attempt's
``processing`` event (id ``3n``) and before its next state (``3n+1``,
``3n+2``), so ``Last-Event-ID`` resumes between modules too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any

from redis.exceptions import RedisError

from . import documents, progress
from .checkpoints import Checkpoints
from .config import job_timeout
from .models import Regeneration, Status
from .output import MAX_MODULES, check_module
from .progress import ProgressEvent
from .state import RegenState

logger = logging.getLogger("flask_plan_regen.previews")

MODULE_EVENT = "module"
"""The SSE event name of a module (states are unnamed ``message`` events)."""

Cursor = tuple[int, int]
"""An event's place in the stream: ``(state id, module number)``; states have number 0."""


@dataclasses.dataclass(frozen=True)
class ModuleEvent:
    """One completed module of the running attempt, as the event stream sends it."""

    generation_id: str
    plan_id: str
    attempt: int
    index: int
    title: str
    minutes: int
    tasks: list[dict[str, Any]]

    @property
    def cursor(self) -> Cursor:
        return (progress.event_id(Status.PROCESSING, self.attempt), self.index + 1)

    @property
    def id(self) -> str:
        return "{}.{}".format(*self.cursor)


def _key(state: RegenState, generation_id: str) -> str:
    return state.key("modules", generation_id)


class ModulePreviews:
    """The ``module_ready`` callback of one attempt (``GenerationRequest.module_ready``)."""

    def __init__(
        self,
        state: RegenState,
        regeneration: Regeneration,
        checkpoints: Checkpoints,
        config: Mapping[str, Any],
    ) -> None:
        self.state = state
        self.generation_id = regeneration.id
        self.attempt = regeneration.attempts
        self.checkpoints = checkpoints
        self.ttl = job_timeout(config)
        if self.attempt > 1:
            self._forget()

    def __call__(self, index: int, module: Any) -> None:
        """Check module ``index`` (0-based) as it arrives, store and announce it."""
        if index >= MAX_MODULES:  # dropped from the plan, so not previewed either
            return
        checked = check_module(module)
        self.checkpoints.module_arrived()
        entry = {
            "attempt": self.attempt,
            "index": index,
            "title": checked.title,
            "minutes": checked.estimated_minutes,
            "tasks": [
                {"title": task.title, "minutes": task.estimated_minutes} for task in checked.tasks
            ],
        }
        key = _key(self.state, self.generation_id)
        try:
            pipe = self.state.redis.pipeline(transaction=False)
            pipe.rpush(key, json.dumps(entry, separators=(",", ":")))
            pipe.expire(key, self.ttl)
            pipe.publish(progress.channel(self.state, self.generation_id), MODULE_EVENT)
            pipe.execute()
        except RedisError as error:  # a preview only: the plan itself is unaffected
            logger.warning("module preview of %s not stored: %s", self.generation_id, error)

    def _forget(self) -> None:
        """Drop an earlier attempt's modules: this attempt writes its own."""
        try:
            self.state.redis.delete(_key(self.state, self.generation_id))
        except RedisError as error:
            logger.warning("module previews of %s not cleared: %s", self.generation_id, error)


def regeneration_document(state: RegenState, regeneration: Regeneration) -> dict[str, Any]:
    """The regeneration's status document (``documents.RegenerationSchema``), with
    ``modulesReady`` read from the preview: the status route and the signals send this."""
    # Not a column: the schema reads it from the row object, where it is set for this dump.
    regeneration.modules_ready = modules_ready(state, regeneration)  # type: ignore[attr-defined]
    return documents.dump(documents.regeneration_schema, regeneration)


def modules_ready(state: RegenState, regeneration: Regeneration) -> int | None:
    """How many modules the running attempt has completed; ``None`` unless processing."""
    if regeneration.status != Status.PROCESSING:
        return None
    return len(_module_events(state, regeneration))


def _module_events(state: RegenState, regeneration: Regeneration) -> list[ModuleEvent]:
    try:
        entries: list[bytes] = state.redis.lrange(_key(state, regeneration.id), 0, -1)  # type: ignore[assignment]
    except RedisError as error:
        logger.warning("module previews of %s not read: %s", regeneration.id, error)
        return []
    events = []
    for raw in entries:
        entry = json.loads(raw)
        if entry.get("attempt") == regeneration.attempts:
            events.append(ModuleEvent(regeneration.id, regeneration.plan_id, **entry))
    return events


def events_after(
    state: RegenState, regeneration: Regeneration, after: Cursor | None
) -> list[ProgressEvent | ModuleEvent]:
    """The states (progress.events_after) and the running attempt's modules after ``after``.

    A client that saw nothing gets the current state and, while an attempt
    runs, the modules it has completed so far.
    """
    states: list[ProgressEvent | ModuleEvent] = list(
        progress.events_after(regeneration, after[0] if after else None)
    )
    if after is None and regeneration.status != Status.PROCESSING:
        return states
    modules: list[ProgressEvent | ModuleEvent] = [
        event
        for event in _module_events(state, regeneration)
        if after is None or event.cursor > after
    ]
    return sorted(states + modules, key=cursor_of)


def cursor_of(event: ProgressEvent | ModuleEvent) -> Cursor:
    return event.cursor if isinstance(event, ModuleEvent) else (event.id, 0)
