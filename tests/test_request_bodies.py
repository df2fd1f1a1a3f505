"""Request bodies over real HTTP (werkzeug): only JSON is taken, and never past the limit."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import requests
from app_server import serve
from conftest import ALICE, regenerate, statuses
from flask import Flask

from examples.host_app import db
from flask_plan_regen import Plan

# What a cross-site page can send without a CORS preflight, and what a careless client sends.
REFUSED = [
    pytest.param({"Content-Type": "text/plain"}, b'{"topic": "Rust"}', id="text/plain"),
    pytest.param({"Content-Type": "application/x-www-form-urlencoded"}, b"topic=Rust", id="form"),
    pytest.param(
        {"Content-Type": "multipart/form-data; boundary=b"},
        b'--b\r\nContent-Disposition: form-data; name="topic"\r\n\r\nRust\r\n--b--\r\n',
        id="multipart",
    ),
    pytest.param({}, b"", id="no content type, empty"),
    pytest.param({}, b'{"topic": "Rust"}', id="no content type, JSON"),
    pytest.param({"Content-Type": "application/vnd.api+json"}, b"{}", id="+json"),
]


@pytest.mark.parametrize(("headers", "body"), REFUSED)
def test_a_post_that_is_not_json_is_415_and_records_nothing(
    app: Flask, make_plan: Callable[..., str], headers: dict[str, str], body: bytes
) -> None:
    plan_id = make_plan()
    pending = regenerate(app.test_client(), plan_id)["generationId"]
    cancel_url = f"/api/v1/plans/{plan_id}/regenerations/{pending}/cancel"
    with serve(app) as base_url:
        answers = [
            requests.post(base_url + path, data=body, headers={**ALICE, **headers}, timeout=10)
            for path in ("/api/v1/plans", f"/api/v1/plans/{plan_id}/regenerate", cancel_url)
        ]
        # Before authentication: a forged request learns nothing else either.
        anonymous = requests.post(f"{base_url}/api/v1/plans", data=body, headers=headers)
        usage = requests.get(f"{base_url}/api/v1/usage", headers=ALICE, timeout=10).json()

    for answer in [*answers, anonymous]:
        assert answer.status_code == 415, answer.text
        assert answer.json()["code"] == "UNSUPPORTED_MEDIA_TYPE"
    assert statuses(app) == {pending: "pending"}  # not canceled, nothing new
    with app.app_context():
        assert db.session.query(Plan).count() == 1
    # Neither the rate limit nor the quota counted them (only the one accepted request).
    assert (usage["rateLimit"]["remaining"], usage["monthly"]["used"]) == (9, 1)


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
def test_json_with_or_without_a_body_is_taken(
    app: Flask, make_plan: Callable[..., str], content_type: str
) -> None:
    plan_id = make_plan()
    with serve(app) as base_url:
        empty = requests.post(
            f"{base_url}/api/v1/plans/{plan_id}/regenerate",
            headers={**ALICE, "Content-Type": content_type},
            timeout=10,
        )
        generation_id = empty.json()["generationId"]
        canceled = requests.post(
            f"{base_url}/api/v1/plans/{plan_id}/regenerations/{generation_id}/cancel",
            headers={**ALICE, "Content-Type": content_type},
            timeout=10,
        )
        created = requests.post(
            f"{base_url}/api/v1/plans",
            data=b'{"topic": "Rust"}',
            headers={**ALICE, "Content-Type": content_type},
            timeout=10,
        )
    assert empty.status_code == 202  # an empty body still means no overrides
    assert (canceled.status_code, canceled.json()["status"]) == (200, "canceled")
    assert created.status_code == 202


def chunks(payload: bytes, size: int = 8192) -> Iterator[bytes]:
    """A generator body: requests sends it with Transfer-Encoding: chunked, no length."""
    for start in range(0, len(payload), size):
        yield payload[start : start + size]


def test_a_chunked_body_over_the_limit_is_413_like_one_with_a_length(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    plan_id = make_plan()
    # Valid JSON up to the limit: cut at 64 KiB it used to parse, and be queued.
    padded = b'{"overrides": {}}' + b" " * (70 * 1024)
    url_path = f"/api/v1/plans/{plan_id}/regenerate"
    with serve(app) as base_url:
        url = base_url + url_path

        def post(body: Iterator[bytes] | bytes, **headers: str) -> requests.Response:
            all_headers = {**ALICE, "Content-Type": "application/json", **headers}
            return requests.post(url, data=body, headers=all_headers, timeout=10)

        chunked = post(chunks(padded))
        with_length = post(padded)
        with_key = post(chunks(padded), **{"Idempotency-Key": "big-1"})
        at_the_limit = post(chunks(b"{}" + b" " * (64 * 1024 - 2)))

    print(f"\nchunked {chunked.status_code}, with a length {with_length.status_code}")
    for answer in (chunked, with_length, with_key):
        assert (answer.status_code, answer.json()["code"]) == (413, "PAYLOAD_TOO_LARGE")
    assert at_the_limit.status_code == 202  # exactly PLAN_REGEN_MAX_BODY_BYTES is fine
    assert list(statuses(app).values()) == ["pending"]
