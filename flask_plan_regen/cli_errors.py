"""Operator commands meet an unreachable Redis or database with one line, not a traceback.

Every ``flask plan-regen ...`` command runs through :class:`OperatorGroup`: a
Redis or database error that reaches it becomes one line naming what could not
be reached (its URL, credentials masked) and why, with exit code 1.
"""

from __future__ import annotations

from typing import Any

import click
from flask import Flask
from flask.cli import AppGroup, ScriptInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from .redact import mask_urls, masked_url

# Enough of the driver's message to tell a refused connection from a bad password.
_REASON_CHARS = 200


class OperatorGroup(AppGroup):
    """Flask's command group, answering Redis and database errors in one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (RedisError, SQLAlchemyError) as error:
            raise click.ClickException(describe(error, _loaded_app(ctx))) from None


def describe(error: RedisError | SQLAlchemyError, app: Flask | None) -> str:
    """One line: which server, at which URL (masked), and the driver's reason."""
    if isinstance(error, RedisError):
        url = app.config.get("PLAN_REGEN_REDIS_URL") if app is not None else None
        server, unreachable = "Redis", isinstance(error, RedisConnectionError | RedisTimeoutError)
        reason = str(error)
    else:
        url = app.config.get("SQLALCHEMY_DATABASE_URI") if app is not None else None
        # No statement: it failed connecting, not running one (e.g. "no such table").
        server = "The database"
        unreachable = isinstance(error, OperationalError) and error.statement is None
        reason = str(error.orig) if isinstance(error, DBAPIError) else str(error)
    where = f" at {masked_url(str(url))}" if url else ""
    what = "is unreachable" if unreachable else "answered an error"
    reason = mask_urls(" ".join(reason.split()))[:_REASON_CHARS]
    return f"{server}{where} {what} ({type(error).__name__}: {reason})"


def _loaded_app(ctx: click.Context) -> Flask | None:
    """The app the command ran with (loaded already: ``load_app`` returns it again)."""
    info = ctx.find_object(ScriptInfo)
    try:
        return info.load_app() if info is not None else None
    except Exception:  # no app to name the URLs from: the message goes without them
        return None
