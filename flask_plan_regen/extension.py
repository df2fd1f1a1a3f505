"""The :class:`PlanRegen` extension object and its per-app state."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, g
from flask_sqlalchemy import SQLAlchemy
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import configure_mappers

from . import config as settings
from .errors import ApiError, ConfigurationError
from .hooks import (
    F,
    PlanLoader,
    StripeCustomerLoader,
    TierResolver,
    default_tier,
    deny_all,
    load_object,
    no_customer_loader,
)
from .models import metadata
from .providers import BuiltinProvider, GenerationProvider
from .ratelimit import RegenRateLimiter
from .store import PlanStore, SQLAlchemyPlanStore
from .types import PlanInput

if TYPE_CHECKING:
    from .billing import StripeBilling

EXTENSION_KEY = "plan_regen"
# Per-request memos on flask.g: the rate limit, idempotency and the view all
# need the user and tier, and the hooks behind them may cost a query or a
# Redis round trip each.
_G_USER = "plan_regen_user_id"
_G_TIERS = "plan_regen_tiers"


@dataclasses.dataclass
class RegenState:
    """What :class:`PlanRegen` keeps for one app, in ``app.extensions["plan_regen"]``."""

    extension: PlanRegen
    db: SQLAlchemy
    store: PlanStore
    provider: GenerationProvider
    redis: Redis
    config_hooks: dict[str, Any]
    rate_limiter: RegenRateLimiter
    billing: StripeBilling | None = None
    url_prefixes: list[str] = dataclasses.field(default_factory=list)
    engine_pid: int = dataclasses.field(default_factory=os.getpid)
    _queues: dict[str, Queue] = dataclasses.field(default_factory=dict)

    def hook(self, key: str, registered: Any, default: Any) -> Any:
        """A hook from config, else the decorator-registered one, else the default."""
        return self.config_hooks.get(key) or registered or default

    def authenticate(self) -> str:
        """The request's user id (401 without one); the hook runs once per request."""
        user_id: str | None = g.get(_G_USER)
        if user_id is None:
            handler = self.hook("PLAN_REGEN_AUTH_HANDLER", self.extension._auth_handler, deny_all)
            found = handler()
            if not found:
                raise ApiError(401, "UNAUTHORIZED", "Authentication required.")
            user_id = str(found)
            setattr(g, _G_USER, user_id)
        return user_id

    def load_plan(self, plan_id: str) -> PlanInput | None:
        loader: PlanLoader = self.hook(
            "PLAN_REGEN_PLAN_LOADER", self.extension._plan_loader, self.store.load_plan
        )
        return loader(plan_id)

    def resolve_tier(self, user_id: str) -> str:
        """The user's tier; the resolver (a Stripe cache read) runs once per request."""
        tiers: dict[str, str] = g.setdefault(_G_TIERS, {})
        if user_id not in tiers:
            resolver: TierResolver = self.hook(
                "PLAN_REGEN_TIER_RESOLVER",
                self.extension._tier_resolver,
                self.billing.resolve_tier if self.billing else default_tier,
            )
            tiers[user_id] = resolver(user_id)
        return tiers[user_id]

    def stripe_customer_id(self, user_id: str) -> str | None:
        loader: StripeCustomerLoader = self.hook(
            "PLAN_REGEN_STRIPE_CUSTOMER_LOADER",
            self.extension._stripe_customer_loader,
            no_customer_loader,
        )
        return loader(user_id)

    def queue(self, name: str) -> Queue:
        if name not in self._queues:
            self._queues[name] = Queue(name, connection=self.redis, serializer=JSONSerializer)
        return self._queues[name]

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
        """Drop pooled connections inherited from a parent process, once per process."""
        if self.engine_pid != os.getpid():
            for engine in self.db.engines.values():
                engine.dispose(close=False)
            self.engine_pid = os.getpid()


class PlanRegen:
    """Plan regeneration for a Flask app.

    ``PlanRegen(app, db=db)`` or, with an app factory, ``regen.init_app(app, db=db)``.
    Register the blueprint :data:`~flask_plan_regen.regen_bp` after ``init_app``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        db: SQLAlchemy | None = None,
        store: PlanStore | None = None,
        provider: GenerationProvider | None = None,
    ) -> None:
        self._db = db
        self._store = store
        self._provider = provider
        self._auth_handler: Any = None
        self._plan_loader: Any = None
        self._tier_resolver: Any = None
        self._stripe_customer_loader: Any = None
        if app is not None:
            self.init_app(app, db=db, store=store, provider=provider)

    def init_app(
        self,
        app: Flask,
        *,
        db: SQLAlchemy | None = None,
        store: PlanStore | None = None,
        provider: GenerationProvider | None = None,
    ) -> None:
        """Check the app's ``PLAN_REGEN_*`` config and set up this app's state."""
        db = db or self._db
        if db is None:
            raise ConfigurationError(
                "PlanRegen needs the app's Flask-SQLAlchemy instance: init_app(app, db=db)."
            )
        if EXTENSION_KEY in app.extensions:
            raise ConfigurationError("PlanRegen.init_app was already called for this app.")
        settings.apply_defaults(app.config)
        settings.validate(app.config)
        config_hooks = {
            key: load_object(app.config[key], key)
            for key in (
                "PLAN_REGEN_AUTH_HANDLER",
                "PLAN_REGEN_PLAN_LOADER",
                "PLAN_REGEN_TIER_RESOLVER",
                "PLAN_REGEN_STRIPE_CUSTOMER_LOADER",
            )
            if app.config[key] is not None
        }
        timeout = float(app.config["PLAN_REGEN_REDIS_TIMEOUT"])
        redis = Redis.from_url(
            app.config["PLAN_REGEN_REDIS_URL"],
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
        )
        app.extensions[EXTENSION_KEY] = RegenState(
            extension=self,
            db=db,
            store=self._make_store(app, db, store or self._store),
            provider=self._make_provider(app, provider or self._provider),
            redis=redis,
            config_hooks=config_hooks,
            rate_limiter=RegenRateLimiter(redis, app.config),
            billing=self._make_billing(app, redis),
        )
        from .cli import plan_regen_cli
        from .routes import json_routing_errors

        app.before_request(json_routing_errors)
        if app.config["PLAN_REGEN_STRIPE_WEBHOOK_SECRET"]:
            from .webhooks import register_webhook

            register_webhook(app)
        if "plan-regen" not in app.cli.commands:
            app.cli.add_command(plan_regen_cli)

    @staticmethod
    def _make_store(app: Flask, db: SQLAlchemy, store: PlanStore | None) -> PlanStore:
        configured = load_object(app.config["PLAN_REGEN_STORE"], "PLAN_REGEN_STORE")
        chosen = store or configured
        if chosen is None:
            return SQLAlchemyPlanStore(db)
        if not isinstance(chosen, PlanStore):
            chosen = chosen(db)
        if not isinstance(chosen, PlanStore):
            raise ConfigurationError("PLAN_REGEN_STORE does not implement PlanStore.")
        return chosen

    @staticmethod
    def _make_billing(app: Flask, redis: Redis) -> StripeBilling | None:
        if app.config["PLAN_REGEN_STRIPE_API_KEY"] is None:
            return None
        try:
            from .billing import StripeBilling
        except ImportError as error:
            raise ConfigurationError(
                "PLAN_REGEN_STRIPE_API_KEY needs the stripe package: "
                f"pip install 'flask-plan-regen[stripe]' ({error})"
            ) from error
        return StripeBilling(redis, app.config)

    @staticmethod
    def _make_provider(app: Flask, provider: GenerationProvider | None) -> GenerationProvider:
        configured = load_object(app.config["PLAN_REGEN_PROVIDER"], "PLAN_REGEN_PROVIDER")
        chosen = provider or configured
        if chosen is None:
            return BuiltinProvider()
        if isinstance(chosen, type) or not isinstance(chosen, GenerationProvider):
            chosen = chosen()
        if not isinstance(chosen, GenerationProvider):
            raise ConfigurationError("PLAN_REGEN_PROVIDER does not implement GenerationProvider.")
        return chosen

    def auth_handler(self, func: F) -> F:
        """Register ``() -> user id or None``; ``None`` answers 401."""
        self._auth_handler = func
        return func

    def plan_loader(self, func: F) -> F:
        """Register ``(plan_id) -> PlanInput or None``; ``None`` answers 404."""
        self._plan_loader = func
        return func

    def tier_resolver(self, func: F) -> F:
        """Register ``(user_id) -> tier name``."""
        self._tier_resolver = func
        return func

    def stripe_customer_loader(self, func: F) -> F:
        """Register ``(user_id) -> Stripe customer id or None`` (used with Stripe tiers)."""
        self._stripe_customer_loader = func
        return func

    @staticmethod
    def create_all(app: Flask | None = None) -> None:
        """Create this package's tables on the app's database if they are missing."""
        metadata.create_all(get_state(app).db.engine)


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
