"""Request bodies: only JSON is taken, and never more of it than the limit allows.

**Content type.** Every POST route of the blueprint takes only
``Content-Type: application/json`` (parameters such as ``charset`` allowed).
A browser sends a cross-site form (``text/plain``,
``application/x-www-form-urlencoded``, ``multipart/form-data``) without asking
the target first, with the victim's cookies; any other content type needs a
CORS preflight the host does not grant. So a host that authenticates with
cookies is safe from cross-site request forgery on these routes without CSRF
tokens: anything else answers 415 ``UNSUPPORTED_MEDIA_TYPE`` before
authentication, and nothing is recorded or counted.

**Size.** werkzeug enforces ``max_content_length`` on a body with a
``Content-Length``, but cuts a body without one (``Transfer-Encoding:
chunked``) at the limit without complaint. :func:`read_body` lets the stream
run one byte past the limit, so both answer 413.
"""

from __future__ import annotations

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from .errors import ApiError

JSON_MEDIA_TYPE = "application/json"


def require_json_content_type() -> None:
    """415 ``UNSUPPORTED_MEDIA_TYPE`` unless the request says its body is JSON."""
    if request.mimetype != JSON_MEDIA_TYPE:
        raise ApiError(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"Send the body as Content-Type: {JSON_MEDIA_TYPE} (an empty body is fine).",
        )


def read_body(limit: int) -> bytes:
    """The raw body, read once and cached; 413 when it is longer than ``limit`` bytes."""
    request.max_content_length = limit + 1
    raw = request.get_data(cache=True)
    if len(raw) > limit:
        raise RequestEntityTooLarge()
    return raw
