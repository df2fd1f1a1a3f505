"""The :class:`PlanRegen` extension object: ``init_app`` builds each app's state."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from redis import Redis

from . import config as settings
from .cli import plan_regen_cli
from .errors import ConfigurationError
from .hooks import F, Hooks, load_object
from .models import metadata
from .providers import BuiltinProvider, GenerationProvider
from .ratelimit import RegenRateLimiter
from .routes import json_routing_errors
from .state import EXTENSION_KEY, RegenState, get_state
from .store import PlanStore, SQLAlchemyPlanStore
from .webhooks import register_webhook

if TYPE_CHECKING:
    from .billing import StripeBilling


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
        self._hooks = Hooks()
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
        db = db or self._db or app.extensions.get("sqlalchemy")
        if db is None:
            raise ConfigurationError(
                "PlanRegen needs the app's Flask-SQLAlchemy instance: call db.init_app(app) "
                "first, or pass init_app(app, db=db)."
            )
        if EXTENSION_KEY in app.extensions:
            raise ConfigurationError("PlanRegen.init_app was already called for this app.")
        settings.apply_defaults(app.config)
        settings.validate(app.config)
        timeout = float(app.config["PLAN_REGEN_REDIS_TIMEOUT"])
        redis = Redis.from_url(
            app.config["PLAN_REGEN_REDIS_URL"],
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
        )
        app.extensions[EXTENSION_KEY] = RegenState(
            db=db,
            store=_make_store(app, db, store or self._store),
            provider=_make_provider(app, provider or self._provider),
            redis=redis,
            namespace=app.config["PLAN_REGEN_NAMESPACE"],
            registered_hooks=self._hooks,
            configured_hooks=Hooks.from_config(app.config),
            rate_limiter=RegenRateLimiter(redis, app.config),
            stream_slots=threading.BoundedSemaphore(app.config["PLAN_REGEN_STREAM_MAX_OPEN"]),
            billing=_make_billing(app, redis),
        )
        app.before_request(json_routing_errors)
        if app.config["PLAN_REGEN_STRIPE_WEBHOOK_SECRET"]:
            register_webhook(app)
        if "plan-regen" not in app.cli.commands:
            app.cli.add_command(plan_regen_cli)

    def auth_handler(self, func: F) -> F:
        """Register ``() -> user id or None``; ``None`` answers 401."""
        self._hooks.auth_handler = func
        return func

    def plan_loader(self, func: F) -> F:
        """Register ``(plan_id) -> PlanInput or None``; ``None`` answers 404."""
        self._hooks.plan_loader = func
        return func

    def tier_resolver(self, func: F) -> F:
        """Register ``(user_id) -> tier name``."""
        self._hooks.tier_resolver = func
        return func

    def stripe_customer_loader(self, func: F) -> F:
        """Register ``(user_id) -> Stripe customer id or None`` (used with Stripe tiers)."""
        self._hooks.stripe_customer_loader = func
        return func

    @staticmethod
    def create_all(app: Flask | None = None) -> None:
        """Create this package's tables on the app's database if they are missing."""
        metadata.create_all(get_state(app).db.engine)


def _make_store(app: Flask, db: SQLAlchemy, store: Any) -> PlanStore:
    """An instance, a class or a factory (called with ``db``), from the argument or config."""
    chosen = store or load_object(app.config["PLAN_REGEN_STORE"], "PLAN_REGEN_STORE")
    if chosen is None:
        return SQLAlchemyPlanStore(db)
    if isinstance(chosen, type) or not isinstance(chosen, PlanStore):
        chosen = chosen(db)
    if not isinstance(chosen, PlanStore):
        raise ConfigurationError("PLAN_REGEN_STORE does not implement PlanStore.")
    return chosen


def _make_provider(app: Flask, provider: Any) -> GenerationProvider:
    """An instance, a class or a factory (called with no argument), from the argument or config."""
    chosen = provider or load_object(app.config["PLAN_REGEN_PROVIDER"], "PLAN_REGEN_PROVIDER")
    if chosen is None:
        return BuiltinProvider()
    if isinstance(chosen, type) or not isinstance(chosen, GenerationProvider):
        chosen = chosen()
    if not isinstance(chosen, GenerationProvider):
        raise ConfigurationError("PLAN_REGEN_PROVIDER does not implement GenerationProvider.")
    return chosen


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
