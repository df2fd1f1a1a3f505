"""Waiting for worker processes to finish regenerations, by reading the database."""

from __future__ import annotations

import time
from collections.abc import Collection

from flask import Flask
from sqlalchemy import select

from examples.host_app import db
from flask_plan_regen import Regeneration
from flask_plan_regen.models import TERMINAL_STATUSES


def wait_until_terminal(
    app: Flask, ids: Collection[str] | None = None, timeout: float = 60.0
) -> dict[str, str]:
    """Poll until every regeneration (or those in ``ids``) has ended; return id -> status."""
    query = select(Regeneration.id, Regeneration.status)
    if ids is not None:
        query = query.where(Regeneration.id.in_(ids))
    deadline = time.monotonic() + timeout
    with app.app_context():
        while True:
            statuses = {row.id: row.status for row in db.session.execute(query)}
            db.session.rollback()  # a fresh snapshot next time
            if all(status in TERMINAL_STATUSES for status in statuses.values()):
                return statuses
            if time.monotonic() > deadline:
                active = {k: v for k, v in statuses.items() if v not in TERMINAL_STATUSES}
                raise AssertionError(f"{len(active)} regenerations still active: {active}")
            time.sleep(0.1)
