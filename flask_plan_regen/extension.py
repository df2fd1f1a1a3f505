"""The :class:`PlanRegen` extension object: ``init_app`` builds each app's state."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app
from flask_sqlalchemy import SQLAlchemy
from redis import Redis

from . import config as settings
from . import fallbacks, spend
from .cli import plan_regen_cli
from .database import prepare_no_statements
from .errors import ConfigurationError
from .hooks import F, Hooks, load_object
from .providers import BuiltinProvider, GenerationProvider
from .ratelimit import RegenRateLimiter
from .redis_client import connect
from .routes import json_routing_errors
from .state import EXTENSION_KEY, RegenState, get_state
from .store import PlanStore, SQLAlchemyPlanStore, create_tables
from .stream_limits import max_open_streams

if TYPE_CHECKING:
    from .billing import StripeBilling

StoreSpec = PlanStore | Callable[..., PlanStore]
"""A store object, or a class or factory making one (called with ``db`` if it takes it)."""
ProviderSpec = GenerationProvider | Callable[[], GenerationProvider]
"""A provider object, or a class or factory making one (called with no argument)."""


class PlanRegen:
    """Plan regeneration for a Flask app.

    ``PlanRegen(app, db=db)`` or, with an app factory, ``regen.init_app(app, db=db)``
    (without ``db``: the Flask-SQLAlchemy instance already set up on the app). ``store``
    and ``provider``: an object, or a class or factory making one (docs/hooks.md).
    Register the blueprint :data:`~flask_plan_regen.regen_bp` after ``init_app``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        db: SQLAlchemy | None = None,
        store: StoreSpec | None = None,
        provider: ProviderSpec | None = None,
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
        store: StoreSpec | None = None,
        provider: ProviderSpec | None = None,
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
        spend.check_config(app.config)
        fallbacks.check_prices(app.config)
        try:
            redis = connect(
                app.config["PLAN_REGEN_REDIS_URL"],
                timeout=float(app.config["PLAN_REGEN_REDIS_TIMEOUT"]),
            )
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
        app.extensions[EXTENSION_KEY] = RegenState(
            db=db,
            store=_make_store(app, db, store or self._store),
            provider=_make_provider(app, provider or self._provider),
            redis=redis,
            namespace=app.config["PLAN_REGEN_NAMESPACE"],
            registered_hooks=self._hooks,
            configured_hooks=Hooks.from_config(app.config),
            rate_limiter=RegenRateLimiter(redis, app.config),
            stream_slots=threading.BoundedSemaphore(max_open_streams(app.config)),
            billing=_make_billing(app, redis),
        )
        if app.config["PLAN_REGEN_PGBOUNCER"]:
            with app.app_context():
                prepare_no_statements(db.engines.values())
        app.before_request(json_routing_errors)
        if app.config["PLAN_REGEN_STRIPE_WEBHOOK_SECRET"]:
            # Imported here: it needs the stripe extra, which _make_billing has checked.
            from .webhooks import register_webhook

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

    def operator_required(self, func: F) -> F:
        """Register ``() -> operator identity or None`` for the console; ``None`` answers 403."""
        self._hooks.operator_required = func
        return func

    @staticmethod
    def create_all(app: Flask | None = None) -> None:
        """Create this package's tables on the app's database if they are missing.

        With a custom plan store, the built-in store's plan tables are left out.
        """
        target = app or current_app._get_current_object()  # type: ignore[attr-defined]
        with target.app_context():  # db.engine needs one
            state = get_state(target)
            create_tables(state.db.engine, state.store)


def _make_store(app: Flask, db: SQLAlchemy, store: Any) -> PlanStore:
    """From the argument or ``PLAN_REGEN_STORE``; the built-in store by default."""
    chosen = store or load_object(app.config["PLAN_REGEN_STORE"], "PLAN_REGEN_STORE")
    if chosen is None:
        return SQLAlchemyPlanStore(db)
    made: PlanStore = _make_plugin(chosen, PlanStore, "PLAN_REGEN_STORE", db)
    return made


def _make_provider(app: Flask, provider: Any) -> GenerationProvider:
    """From the argument or ``PLAN_REGEN_PROVIDER``; the built-in provider by default."""
    chosen = provider or load_object(app.config["PLAN_REGEN_PROVIDER"], "PLAN_REGEN_PROVIDER")
    if chosen is None:
        return BuiltinProvider()
    made: GenerationProvider = _make_plugin(chosen, GenerationProvider, "PLAN_REGEN_PROVIDER")
    return made


def _make_plugin(chosen: Any, interface: type, key: str, *args: Any) -> Any:
    """An object as it is; a class or a factory called, with ``args`` if it takes them.

    A class is told from an object first: a class has its methods too, so it
    passes the interface's ``isinstance`` check itself.
    """
    if not isinstance(chosen, type) and isinstance(chosen, interface):
        return chosen
    if not callable(chosen):
        raise ConfigurationError(
            f"{key} must be an object implementing {interface.__name__}, a class or a factory; "
            f"got a {type(chosen).__name__}."
        )
    try:
        inspect.signature(chosen).bind(*args)
    except TypeError:
        args = ()  # it takes no argument: a class or factory that needs nothing from us
    except ValueError:
        pass  # no signature to read (a builtin): call it as documented
    made = chosen(*args)
    if not isinstance(made, interface):
        raise ConfigurationError(
            f"{key}: {getattr(chosen, '__qualname__', chosen)!r} made a "
            f"{type(made).__name__}, which does not implement {interface.__name__}."
        )
    return made


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
