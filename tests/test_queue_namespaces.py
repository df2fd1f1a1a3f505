"""Queue names live inside their namespace: two apps on one real Redis never share a queue.

Also: every pattern that checks a whole value matches the whole value, and a
row left on a queue that is no longer configured is moved by the sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import build_app, plan_factory, regenerate, run_jobs, status_of, worker_env
from flask import Flask
from marshmallow import ValidationError
from servers import WorkerProcs

from flask_plan_regen import ConfigurationError, get_state, queue
from flask_plan_regen.lifecycle import PENDING_GRACE
from flask_plan_regen.models import utcnow
from flask_plan_regen.recovery import sweep
from flask_plan_regen.schemas import SINGLE_LINE

# The app A: its "regen_high" in namespace "plan" was "plan_regen_high", a queue of
# the default namespace "plan_regen" too.
CLASHING = {
    "PLAN_REGEN_NAMESPACE": "plan",
    "PLAN_REGEN_QUEUES": [["regen_high", 10], ["regen_low", 0]],
}
RENAMED = {
    "PLAN_REGEN_NAMESPACE": "plan",
    "PLAN_REGEN_QUEUES": [["regen-high", 10], ["regen-low", 0]],
}


def test_a_queue_name_that_would_reach_into_another_namespace_is_refused(
    tmp_path: Path, redis_url: str
) -> None:
    with pytest.raises(ConfigurationError, match="no '_', which joins the namespace") as refused:
        build_app(f"sqlite:///{tmp_path / 'a.sqlite'}", redis_url, **CLASHING)
    print(refused.value)


@pytest.mark.slow
def test_another_namespaces_worker_leaves_this_apps_jobs_alone(
    tmp_path: Path, redis_url: str, redis_conn: object, worker_procs: WorkerProcs
) -> None:
    app_a = build_app(f"sqlite:///{tmp_path / 'a.sqlite'}", redis_url, **RENAMED)
    b_database = f"sqlite:///{tmp_path / 'b.sqlite'}"
    build_app(b_database, redis_url)  # B: the default namespace, its own tables
    plan_id = plan_factory(app_a)()
    client = app_a.test_client()
    generation_id = regenerate(client, plan_id)["generationId"]
    assert status_of(client, plan_id, generation_id)["queue"] == "plan_regen-low"

    b_worker = worker_procs.spawn(
        ["flask", "plan-regen", "worker", "--burst"], worker_env(b_database, redis_url)
    )
    assert b_worker.wait(timeout=60) == 0, worker_procs.log_tail(b_worker)
    print(worker_procs.log(b_worker).splitlines()[0])
    with app_a.app_context():
        waiting = queue.rq_queue(get_state().redis, "plan_regen-low").job_ids
    print(f"A's queue after B's worker: {waiting}")
    assert waiting == [generation_id]
    assert status_of(client, plan_id, generation_id)["status"] == "pending"
    assert run_jobs(app_a) == 1
    assert status_of(client, plan_id, generation_id)["status"] == "succeeded"


def test_the_sweep_moves_rows_off_a_queue_no_longer_configured(
    app: Flask, sqlite_uri: str, redis_url: str, make_plan: Callable[..., str]
) -> None:
    """An upgrade that renames the queues strands nothing: the sweep moves this app's rows."""
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]  # on plan_regen_low
    renamed = [["urgent", 10], ["normal", 5], ["later", 0]]
    upgraded = build_app(sqlite_uri, redis_url, PLAN_REGEN_QUEUES=renamed)
    with upgraded.app_context():
        state = get_state()
        counts = sweep(state, now=utcnow() + PENDING_GRACE + timedelta(seconds=1))
        old = queue.rq_queue(state.redis, "plan_regen_low").job_ids
        new = queue.rq_queue(state.redis, "plan_regen_later").job_ids
    print(f"sweep {counts}; old queue {old}, new queue {new}")
    assert (counts["requeued"], old, new) == (1, [], [generation_id])
    assert status_of(client, plan_id, generation_id)["queue"] == "plan_regen_later"
    assert run_jobs(upgraded) == 1
    assert status_of(client, plan_id, generation_id)["status"] == "succeeded"


def test_another_namespace_on_the_same_database_sweeps_none_of_this_apps_rows(
    app: Flask, sqlite_uri: str, redis_url: str, make_plan: Callable[..., str]
) -> None:
    """An app moving to a new namespace while the old one drains shares its database:
    the new namespace's sweep must not take the old one's rows (their jobs and leases
    live under the old keys, where the new one does not look)."""
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]  # on plan_regen_low
    moved_on = build_app(sqlite_uri, redis_url, PLAN_REGEN_NAMESPACE="hx")
    with moved_on.app_context():
        counts = sweep(get_state(), now=utcnow() + PENDING_GRACE + timedelta(seconds=1))
    document = status_of(client, plan_id, generation_id)
    print(f"namespace hx swept the default namespace's pending row: {counts}, {document['queue']}")
    assert counts == {"released": 0, "requeued": 0}
    assert (document["status"], document["queue"]) == ("pending", "plan_regen_low")


@pytest.mark.parametrize(
    "settings",
    [
        {"PLAN_REGEN_NAMESPACE": "app\n"},
        {"PLAN_REGEN_QUEUES": [["high\n", 10], ["low", 0]]},
    ],
)
def test_a_value_with_a_final_newline_is_refused(
    tmp_path: Path, redis_url: str, settings: dict[str, object]
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        build_app(f"sqlite:///{tmp_path / 'a.sqlite'}", redis_url, **settings)
    print(refused.value)


def test_a_single_line_field_refuses_a_final_newline() -> None:
    assert SINGLE_LINE("one line") == "one line"
    with pytest.raises(ValidationError):
        SINGLE_LINE("one line\n")
