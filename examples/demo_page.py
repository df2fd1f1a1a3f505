"""The demo page: sign in as a demo user, create a plan, regenerate it, watch it live.

Plain HTML and JavaScript in ``page/`` (no build step), served at ``/`` by the
example host app. Signing in keeps the user id in Flask's signed session
cookie: the page's ``EventSource`` cannot send the ``X-User-Id`` header that
the scripted examples use, but the browser sends the cookie with every
same-origin request, the event stream included, as it would a real app's
login session.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, jsonify, request, session

SESSION_KEY = "demo_user_id"
USER_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")

demo_bp = Blueprint("demo", __name__, static_folder="page", static_url_path="/demo")


def signed_in_user() -> str | None:
    """The user the page signed in as, if any."""
    user_id = session.get(SESSION_KEY)
    return user_id if isinstance(user_id, str) else None


@demo_bp.get("/")
def page() -> Response:
    return demo_bp.send_static_file("index.html")


@demo_bp.get("/demo/session")
def current_session() -> Response:
    return jsonify(userId=signed_in_user())


@demo_bp.post("/demo/session")
def sign_in() -> tuple[Response, int] | Response:
    """Sign in as any demo user: ``{"userId": "alice"}``. There is no password: a demo."""
    body = request.get_json(silent=True)
    user_id = body.get("userId") if isinstance(body, dict) else None
    if not isinstance(user_id, str) or not USER_ID.fullmatch(user_id):
        message = "userId must be 1-64 letters, digits, '_', '.' or '-'."
        return jsonify(error=message, code="VALIDATION_ERROR"), 400
    session[SESSION_KEY] = user_id
    return jsonify(userId=user_id)


@demo_bp.delete("/demo/session")
def sign_out() -> tuple[str, int]:
    session.pop(SESSION_KEY, None)
    return "", 204
