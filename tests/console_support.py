"""The console on the example app, for the console's tests: an operator hook that trusts
an ``X-Operator`` header or an ``operator`` cookie (test-only), and the blueprint at
:data:`PREFIX`."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, request
from flask.testing import FlaskClient

from flask_plan_regen.console import regen_admin_bp

PREFIX = "/admin/plan-regen"
OPERATOR = {"X-Operator": "olivia"}


def operator_from_request() -> str | None:
    """Test-only: whoever the header or the cookie names."""
    return request.headers.get("X-Operator") or request.cookies.get("operator")


CONSOLE_CONFIG: dict[str, Any] = {"PLAN_REGEN_OPERATOR_HANDLER": operator_from_request}


def with_console(app: Flask) -> Flask:
    app.register_blueprint(regen_admin_bp, url_prefix=PREFIX)
    return app


def csrf_token(client: FlaskClient, headers: dict[str, str] = OPERATOR) -> str:
    """The token the Actions page's forms carry."""
    page = client.get(f"{PREFIX}/actions", headers=headers)
    assert page.status_code == 200
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    assert found
    return found.group(1)
