"""Canceling a regeneration: pending, processing (real worker), finished, and the commit race."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import (
    ALICE,
    BOB,
    plan_factory,
    regenerate,
    run_jobs,
    status_of,
    wait_for_status,
    wait_until,
    worker_env,
)
from flask import Flask
from servers import WorkerProcs

from flask_plan_regen import (
    BuiltinProvider,
    GenerationRequest,
    GenerationResult,
    Plan,
    Regeneration,
    get_state,
)
from flask_plan_regen.lifecycle import PLAN_DELETED


def cancel(app: Flask, plan_id: str, generation_id: str, headers: dict[str, str] = ALICE) -> Any:
    url = f"/api/v1/plans/{plan_id}/regenerations/{generation_id}/cancel"
    return app.test_client().post(url, json={}, headers=headers)


def modules(app: Flask, plan_id: str) -> list[Any]:
    plan = app.test_client().get(f"/api/v1/plans/{plan_id}", headers=ALICE).get_json()
    return list(plan["modules"])


def test_pending_cancel_means_the_job_never_runs(app: Flask, make_plan: Any) -> None:
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]

    answer = cancel(app, plan_id, generation_id)
    assert answer.status_code == 200
    assert answer.get_json()["status"] == "canceled"
    assert run_jobs(app) == 0  # the RQ job was canceled too
    document = status_of(client, plan_id, generation_id)
    assert (document["status"], document["attempts"]) == ("canceled", 0)
    assert modules(app, plan_id) == []
    # The plan is free for a new regeneration.
    regenerate(client, plan_id)


def test_finished_is_409_and_others_get_404(app: Flask, make_plan: Any) -> None:
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    assert cancel(app, plan_id, generation_id, headers=BOB).status_code == 404
    assert cancel(app, plan_id, "no-such-id").status_code == 404
    run_jobs(app)

    answer = cancel(app, plan_id, generation_id)
    assert answer.status_code == 409
    assert answer.get_json()["code"] == "REGENERATION_FINISHED"
    assert status_of(client, plan_id, generation_id)["status"] == "succeeded"


class CancelingProvider(BuiltinProvider):
    """Answers, then cancels its own regeneration over HTTP: after its last checkpoint,
    before the attempt's commit."""

    def generate(self, request: GenerationRequest) -> GenerationResult:
        from flask import current_app

        result = super().generate(request)
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        answer = cancel(app, request.plan.id, request.generation_id)
        assert answer.status_code == 200
        return result


@pytest.mark.parametrize("app_config", [{"PLAN_REGEN_PROVIDER": CancelingProvider}])
def test_cancel_racing_a_finishing_attempt_keeps_the_old_plan(app: Flask, make_plan: Any) -> None:
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    run_jobs(app)
    document = status_of(client, plan_id, generation_id)
    assert document["status"] == "canceled"
    assert modules(app, plan_id) == []  # the attempt's commit was refused as a whole
    # ... but the provider's answer was paid for: the attempt is on record, as canceled.
    (attempt,) = document["attemptLog"]
    assert (attempt["outcome"], attempt["billed"]) == ("canceled", True)
    assert attempt["completionTokens"]


@pytest.mark.slow
def test_processing_cancel_stops_the_running_attempt_which_records_itself(
    app: Flask, make_plan: Any, sqlite_uri: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    client = app.test_client()
    plan_id = make_plan()
    regenerate(client, plan_id)
    run_jobs(app)
    before = modules(app, plan_id)

    generation_id = regenerate(client, plan_id)["generationId"]
    env = worker_env(sqlite_uri, redis_url, PLAN_REGEN_BUILTIN_DELAY="30")
    worker = worker_procs.spawn(["flask", "plan-regen", "worker"], env)
    wait_until(
        lambda: status_of(client, plan_id, generation_id)["status"] == "processing",
        20,
        "the worker picking the regeneration up",
    )

    answer = cancel(app, plan_id, generation_id)
    canceled_at = time.monotonic()
    assert answer.status_code == 200
    # The built-in provider stops at its next checkpoint (no kill): the attempt is on record.
    worker_procs.wait_for_log(worker, "canceled during its provider call")
    print(f"attempt stopped {time.monotonic() - canceled_at:.2f} s after the cancel")
    document = wait_until(
        lambda: (doc := status_of(client, plan_id, generation_id))["attemptLog"] and doc,
        20,
        "the canceled attempt's row",
    )
    assert (document["status"], document["attempts"]) == ("canceled", 1)
    [attempt] = document["attemptLog"]
    assert (attempt["outcome"], attempt["error"]) == (
        "canceled",
        "Canceled during the provider call.",
    )
    assert attempt["durationMs"] < 25_000  # not the 30 s delay
    assert "stopped by user" not in worker_procs.log(worker)  # not killed
    assert modules(app, plan_id) == before


@pytest.mark.postgres
@pytest.mark.parametrize("app_config", [{"PLAN_REGEN_RETRY_BACKOFF_BASE": 0}])
def test_cancel_race_and_retry_on_postgresql(pg_app: Flask) -> None:
    client = pg_app.test_client()
    plan_id = plan_factory(pg_app)()
    state = get_state(pg_app)
    state.provider = CancelingProvider()
    generation_id = regenerate(client, plan_id)["generationId"]
    run_jobs(pg_app)
    assert status_of(client, plan_id, generation_id)["status"] == "canceled"
    assert modules(pg_app, plan_id) == []

    # The same app, now failing: the provider and the failure switch change at run time.
    state.provider = BuiltinProvider()
    pg_app.config["PLAN_REGEN_BUILTIN_FAILURE"] = "timeout"
    generation_id = regenerate(client, plan_id)["generationId"]
    run_jobs(pg_app)
    document = status_of(client, plan_id, generation_id)
    assert (document["status"], document["failureClass"], document["attempts"]) == (
        "failed",
        "timeout",
        3,
    )


@pytest.mark.slow
def test_a_plan_deleted_while_a_worker_regenerates_it_ends_canceled_and_keeps_the_billed_call(
    pg_app: Flask, postgres_url: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    client = pg_app.test_client()
    plan_id = plan_factory(pg_app)()
    generation_id = regenerate(client, plan_id)["generationId"]
    env = worker_env(postgres_url, redis_url, PLAN_REGEN_BUILTIN_DELAY="3")
    worker = worker_procs.spawn(["flask", "plan-regen", "worker"], env)
    worker_procs.wait_for_log(worker, f"regeneration {generation_id} attempt 1: calling provider")
    with pg_app.app_context():  # the host deletes the plan while the provider is called
        session = get_state().db.session
        session.delete(session.get(Plan, plan_id))
        session.commit()

    assert wait_for_status(pg_app, [generation_id], timeout=30) == {generation_id: "canceled"}
    with pg_app.app_context():
        row = get_state().db.session.get(Regeneration, generation_id)
        assert row is not None
        assert (row.failure_class, row.error, row.attempts) == (None, PLAN_DELETED, 1)
        [attempt] = row.attempt_rows  # the provider call is on record
        assert (attempt.outcome, attempt.error) == ("canceled", PLAN_DELETED)
        assert attempt.completion_tokens and attempt.billed
    # The provider was paid for that answer: deleting the plan mid-call is no free call.
    assert client.get("/api/v1/usage", headers=ALICE).json["monthly"]["used"] == 1
