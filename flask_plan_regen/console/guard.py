"""Who may use the console (the operator hook) and CSRF tokens for its forms.

CSRF tokens are signed with the app's ``SECRET_KEY`` by itsdangerous (which
Flask already depends on), bound to the operator's identity and valid for
:data:`TOKEN_MAX_AGE`: stateless, so they need no session and work whatever
the host's login is (cookie, header, proxy). Flask-WTF's ``CSRFProtect``
would protect every POST route of the host app once installed, and keeps its
token in the session; the console must not change the host's other routes.
"""

from __future__ import annotations

import hmac

from flask import current_app, g, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from ..errors import ApiError
from ..state import get_state

TOKEN_MAX_AGE = 8 * 3600
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_SALT = "flask-plan-regen-console-csrf"


def current_operator() -> str:
    """The operator's identity from the hook (once per request); 403 without one."""
    operator: str | None = g.get("plan_regen_operator")
    if operator is None:
        state = get_state()
        handler = (
            state.configured_hooks.operator_required or state.registered_hooks.operator_required
        )
        found = handler() if handler is not None else None
        if not isinstance(found, str) or not found:
            raise ApiError(
                403,
                "OPERATOR_REQUIRED",
                "The console is for operators: the operator hook "
                "(@regen.operator_required or PLAN_REGEN_OPERATOR_HANDLER) did not name one.",
            )
        operator = g.plan_regen_operator = found
    return operator


def _serializer(salt: str = _SALT) -> URLSafeTimedSerializer:
    if not current_app.secret_key:
        raise ApiError(
            403,
            "CSRF_UNAVAILABLE",
            "The console's forms need the app's SECRET_KEY to sign their CSRF tokens.",
        )
    return URLSafeTimedSerializer(current_app.secret_key, salt=salt)


def csrf_token() -> str:
    """A token for the current operator's forms (the same one for the whole request);
    ``""`` without a ``SECRET_KEY`` (every POST is refused then)."""
    token: str | None = g.get("plan_regen_csrf")
    if not current_app.secret_key:
        return ""
    if token is None:
        token = g.plan_regen_csrf = str(_serializer().dumps(current_operator()))
    return token


def check_csrf() -> None:
    """Refuse (403 ``CSRF_FAILED``) a POST without a valid token of this operator."""
    serializer = _serializer()
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
    if not sent:
        raise ApiError(403, "CSRF_FAILED", "The form's CSRF token is missing.")
    try:
        signed_for = serializer.loads(sent, max_age=TOKEN_MAX_AGE)
    except BadSignature:
        raise ApiError(
            403, "CSRF_FAILED", "The form's CSRF token is invalid or expired; reload the page."
        ) from None
    if not hmac.compare_digest(str(signed_for), current_operator()):
        raise ApiError(403, "CSRF_FAILED", "The form's CSRF token is another operator's.")


_NOTICE_SALT = "flask-plan-regen-console-notice"
NOTICE_MAX_AGE = 300


def signed_notice(message: str) -> str:
    """``message`` for the page an action redirects to, signed: a crafted link cannot make
    the console claim an action it did not take."""
    return str(_serializer(_NOTICE_SALT).dumps(message))


def read_notice() -> str | None:
    """The signed ``?notice=`` of the request, if it is one this app signed lately."""
    token = request.args.get("notice")
    if not token or not current_app.secret_key:
        return None
    try:
        return str(_serializer(_NOTICE_SALT).loads(token, max_age=NOTICE_MAX_AGE))
    except BadSignature:
        return None
