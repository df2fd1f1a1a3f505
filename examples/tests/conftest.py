"""The example app's own test suite: pytest + pytest-flask, and no Redis server.

``TEST_CONFIG`` puts the package's Redis in process (``memory://``) and runs each
job in the request that queued it (``PLAN_REGEN_EAGER``); docs/testing.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from examples.host_app import create_app
from flask_plan_regen import PlanRegen
from flask_plan_regen.testing import TEST_CONFIG


@pytest.fixture
def app_config() -> dict[str, Any]:
    """Extra config for one test: override it, or parametrize it indirectly."""
    return {}


@pytest.fixture
def app(app_config: dict[str, Any]) -> Iterator[Flask]:
    app = create_app(
        {"TESTING": True, "SQLALCHEMY_DATABASE_URI": "sqlite://", **TEST_CONFIG, **app_config}
    )
    with app.app_context():
        PlanRegen.create_all()
    yield app


ALICE = {"X-User-Id": "alice"}
BOB = {"X-User-Id": "bob"}
