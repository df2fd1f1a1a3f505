"""Signals: what a host's receivers hear, and that a raising receiver breaks nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ALICE, regenerate, run_jobs, status_of
from flask import Flask

from flask_plan_regen import signals

ALL = {
    "queued": signals.regeneration_queued,
    "started": signals.regeneration_started,
    "succeeded": signals.regeneration_succeeded,
    "failed": signals.regeneration_failed,
    "canceled": signals.regeneration_canceled,
}


@pytest.fixture
def heard(app: Flask) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every signal the app sends, as (name, regeneration document)."""
    received: list[tuple[str, dict[str, Any]]] = []
    receivers = {}
    for name, signal in ALL.items():

        def receiver(sender: Flask, regeneration: dict[str, Any], name: str = name) -> None:
            assert sender is app
            received.append((name, regeneration))

        receivers[name] = receiver
        signal.connect(receiver, sender=app)
    yield received
    for name, signal in ALL.items():
        signal.disconnect(receivers[name], sender=app)


def test_a_regeneration_is_queued_started_and_succeeds(
    app: Flask, make_plan: Any, heard: list[tuple[str, dict[str, Any]]]
) -> None:
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id, weeklyHours=4)["generationId"]
    assert [name for name, _ in heard] == ["queued"]
    run_jobs(app)
    assert [name for name, _ in heard] == ["queued", "started", "succeeded"]
    (_, queued), (_, started), (_, succeeded) = heard
    assert (queued["status"], queued["attempts"]) == ("pending", 0)
    assert (started["status"], started["attempts"]) == ("processing", 1)
    assert succeeded == status_of(client, plan_id, generation_id)  # the status route's document


@pytest.mark.parametrize("app_config", [{"PLAN_REGEN_BUILTIN_FAILURE": "validation"}])
def test_a_failed_regeneration_is_heard(
    app: Flask, make_plan: Any, heard: list[tuple[str, dict[str, Any]]]
) -> None:
    regenerate(app.test_client(), make_plan())
    run_jobs(app)
    assert [name for name, _ in heard] == ["queued", "started", "failed"]
    assert heard[-1][1]["failureClass"] == "validation"


def test_a_canceled_regeneration_is_heard(
    app: Flask, make_plan: Any, heard: list[tuple[str, dict[str, Any]]]
) -> None:
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    url = f"/api/v1/plans/{plan_id}/regenerations/{generation_id}/cancel"
    assert client.post(url, json={}, headers=ALICE).status_code == 200
    assert [name for name, _ in heard] == ["queued", "canceled"]
    assert heard[-1][1]["status"] == "canceled"


def test_a_raising_receiver_breaks_neither_the_request_nor_the_job(
    app: Flask, make_plan: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(sender: Flask, regeneration: dict[str, Any]) -> None:
        raise RuntimeError("receiver bug")

    for signal in ALL.values():
        signal.connect(broken, sender=app)
    try:
        client = app.test_client()
        plan_id = make_plan()
        generation_id = regenerate(client, plan_id)["generationId"]
        run_jobs(app)
    finally:
        for signal in ALL.values():
            signal.disconnect(broken, sender=app)
    assert status_of(client, plan_id, generation_id)["status"] == "succeeded"
    logged = [r.getMessage() for r in caplog.records if r.name == "flask_plan_regen.signals"]
    assert logged == [  # each one logged with its traceback, and ignored
        f"a receiver of regeneration-{name} raised; ignored"
        for name in ("queued", "started", "succeeded")
    ]
