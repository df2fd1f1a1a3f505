"""Per-app state: what ``init_app`` builds, kept in ``app.extensions["plan_regen"]``.

Every module that needs "the state" imports this one, and this one imports no
feature module back: the services it holds are typed by their own leaf modules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from typing import TYPE_CHECKING

from flask import Flask, current_app
from flask_sqlalchemy import SQLAlchemy
from redis import Redis
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import configure_mappers
from sqlalchemy.pool import QueuePool

from .database import OutageLog
from .hooks import Hooks
from .providers import GenerationProvider
from .ratelimit import RegenRateLimiter
from .store import PlanStore

if TYPE_CHECKING:
    from .billing import StripeBilling

EXTENSION_KEY = "plan_regen"


@dataclasses.dataclass
class RegenState:
    """What :class:`~flask_plan_regen.PlanRegen` keeps for one app."""

    db: SQLAlchemy
    store: PlanStore
    provider: GenerationProvider
    redis: Redis
    namespace: str
    registered_hooks: Hooks
    """The hooks registered with the extension's decorators (shared, so later ones count)."""
    configured_hooks: Hooks
    """The hooks given in ``PLAN_REGEN_*`` config; they win over decorators."""
    rate_limiter: RegenRateLimiter
    stream_slots: threading.BoundedSemaphore
    """One per event stream this process may hold open (``PLAN_REGEN_STREAM_MAX_OPEN``)."""
    billing: StripeBilling | None = None
    url_prefixes: list[str] = dataclasses.field(default_factory=list)
    database_outage: OutageLog = dataclasses.field(default_factory=OutageLog)
    engine_pid: int = dataclasses.field(default_factory=os.getpid)

    def key(self, *parts: str) -> str:
        """A Redis key of this app: ``<namespace>:<part>:<part>...``."""
        return ":".join((self.namespace, *parts))

    def prepare_for_fork(self) -> None:
        """In a worker's main process, do once what every forked work horse would redo.

        Configures the ORM mappers and lets each engine's dialect read the database
        server's settings on a first connection, then drops the pooled connections,
        which must not cross ``fork()``. A database that is down now only costs the
        work horses that first connection later.
        """
        configure_mappers()
        for engine in self.db.engines.values():
            with contextlib.suppress(SQLAlchemyError), engine.connect():
                pass
            engine.dispose()

    def dispose_engines_after_fork(self) -> None:
        """Drop pooled connections inherited from a parent process, once per process.

        A pool that holds none (the parent ran :meth:`prepare_for_fork`) is kept:
        building a new one is a cost a work horse pays for every job.
        """
        if self.engine_pid != os.getpid():
            for engine in self.db.engines.values():
                pool = engine.pool
                if not isinstance(pool, QueuePool) or pool.checkedin() or pool.checkedout():
                    engine.dispose(close=False)
            self.engine_pid = os.getpid()


def get_state(app: Flask | None = None) -> RegenState:
    """The :class:`RegenState` of ``app`` (default: the current app)."""
    target = app if app is not None else current_app
    try:
        state: RegenState = target.extensions[EXTENSION_KEY]
    except KeyError:
        raise RuntimeError(
            "flask_plan_regen is not set up on this app: call PlanRegen().init_app(app, db=db) "
            "before registering regen_bp."
        ) from None
    return state
