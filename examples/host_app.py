"""A complete host app embedding flask_plan_regen.

Run it::

    export FLASK_APP=examples.host_app:create_app
    flask plan-regen init-db
    flask create-plan --owner alice --topic "Interview prep: data structures"
    flask run                      # the web app
    flask plan-regen worker        # a worker, in another shell

Demo authentication: the ``X-User-Id`` header names the user, or the user
signed in on the demo page at ``/`` (a session cookie, see ``demo_page.py``).
It is only for demos and tests; a real app returns the logged-in user's id
instead (for example ``flask_login.current_user.get_id()``).
"""

from __future__ import annotations

import os
from datetime import date
from typing import Any

import click
from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy

import flask_plan_regen
from flask_plan_regen import PlanRegen, regen_bp

from .demo_page import demo_bp, signed_in_user

db = SQLAlchemy()
regen = PlanRegen()


@regen.auth_handler
def current_user_id() -> str | None:
    """Demo only: trust the X-User-Id header, else the demo page's signed-in user."""
    return request.headers.get("X-User-Id") or signed_in_user()


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=os.environ.get(
            "SQLALCHEMY_DATABASE_URI", "sqlite:///" + os.path.abspath("plan_regen_demo.sqlite")
        ),
        PLAN_REGEN_REDIS_URL=os.environ.get("PLAN_REGEN_REDIS_URL", "redis://127.0.0.1:6379/0"),
        # Signs the demo page's session cookie. A demo value: a real app sets its own secret
        # (FLASK_SECRET_KEY in the environment overrides this one).
        SECRET_KEY="plan-regen-demo-only",
        SESSION_COOKIE_SAMESITE="Lax",
    )
    # FLASK_PLAN_REGEN_BUILTIN_DELAY=0.5 etc. set any PLAN_REGEN_* key from the environment.
    app.config.from_prefixed_env()
    app.config.update(config or {})
    db.init_app(app)
    regen.init_app(app, db=db)
    app.register_blueprint(regen_bp)
    app.register_blueprint(demo_bp)
    app.cli.add_command(create_plan)
    return app


@click.command("create-plan")
@click.option("--owner", required=True, help="The user id that owns the plan.")
@click.option("--topic", required=True)
@click.option(
    "--skill-level", type=click.Choice(["beginner", "intermediate", "advanced"]), default="beginner"
)
@click.option("--weekly-hours", type=click.IntRange(1, 80), default=5)
@click.option(
    "--learning-style",
    type=click.Choice(["reading", "video", "practice", "mixed"]),
    default="mixed",
)
@click.option("--start-date", type=click.DateTime(["%Y-%m-%d"]), default=None)
@click.option("--deadline", type=click.DateTime(["%Y-%m-%d"]), default=None)
def create_plan(
    owner: str,
    topic: str,
    skill_level: str,
    weekly_hours: int,
    learning_style: str,
    start_date: Any,
    deadline: Any,
) -> None:
    """Create a plan (no modules yet) and print its id on the last line."""
    try:
        plan_id = flask_plan_regen.create_plan(
            owner,
            topic,
            skill_level=skill_level,
            weekly_hours=weekly_hours,
            learning_style=learning_style,
            start_date=_date(start_date),
            deadline_date=_date(deadline),
        )
    except ValueError as error:  # e.g. a deadline before the start date
        raise click.UsageError(str(error)) from error
    click.echo(plan_id)


def _date(value: Any) -> date | None:
    return value.date() if value is not None else None
