"""``memory://`` and ``PLAN_REGEN_EAGER`` outside testing mode, under real gunicorn processes.

Both only work inside one process: they refuse to start unless the app is in
testing mode or the host opts in for one process (``PLAN_REGEN_ALLOW_IN_PROCESS``);
a row an eager process leaves behind when it dies is recovered by the sweep.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from app_server import APP_FACTORY, serve_with_gunicorn
from conftest import ALICE, REPO_ROOT, wait_until, worker_env
from flask import Flask
from servers import WorkerProcs, free_port
from sqlalchemy import select

from examples.host_app import create_app, db
from flask_plan_regen import ConfigurationError, Regeneration
from flask_plan_regen.testing import TEST_CONFIG

MEMORY = '"memory://"'  # FLASK_PLAN_REGEN_* values are parsed as JSON


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``flask <args>`` in a subprocess with ``env`` over this one's; its output as text."""
    full_env = {**os.environ, **env}
    full_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), full_env["PATH"]])
    return subprocess.run(
        ["flask", *args], env=full_env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def refused_boot(procs: WorkerProcs, env: dict[str, str], workers: int) -> str:
    """Start gunicorn with ``workers`` processes; assert it exits, failing; its output."""
    command = ["gunicorn", "--workers", str(workers), "--bind", f"127.0.0.1:{free_port()}"]
    server = procs.spawn([*command, APP_FACTORY], env)
    started = time.monotonic()
    wait_until(lambda: server.poll() is not None, timeout=60, what="gunicorn to give up")
    print(f"gunicorn exited {server.returncode} after {time.monotonic() - started:.1f} s")
    assert server.returncode != 0
    return procs.log(server)


@pytest.mark.slow
def test_memory_redis_refuses_to_start_under_gunicorn_outside_testing(
    app: Flask, sqlite_uri: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    env = worker_env(sqlite_uri, redis_url, PLAN_REGEN_REDIS_URL=MEMORY)
    output = refused_boot(worker_procs, env, workers=2)
    assert "PLAN_REGEN_REDIS_URL is 'memory://'" in output
    assert "TESTING = True" in output and "PLAN_REGEN_ALLOW_IN_PROCESS" in output
    assert "Booting worker" in output and "Listening at" in output  # it was gunicorn that quit


@pytest.mark.slow
def test_eager_jobs_refuse_to_start_under_gunicorn_outside_testing(
    app: Flask, sqlite_uri: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    env = worker_env(sqlite_uri, redis_url, PLAN_REGEN_EAGER="true")
    output = refused_boot(worker_procs, env, workers=2)
    assert "PLAN_REGEN_EAGER runs each job inside the web request" in output
    assert "Retry-After is not waited for" in output


@pytest.mark.slow
def test_one_process_that_opts_in_serves_with_memory_redis_and_eager_jobs(
    app: Flask,
    make_plan: Callable[..., str],
    sqlite_uri: str,
    redis_url: str,
    worker_procs: WorkerProcs,
) -> None:
    plan_id = make_plan()
    env = worker_env(
        sqlite_uri,
        redis_url,
        PLAN_REGEN_REDIS_URL=MEMORY,
        PLAN_REGEN_EAGER="true",
        PLAN_REGEN_ALLOW_IN_PROCESS="true",
    )
    base_url = serve_with_gunicorn(worker_procs, env, "sync")
    answer = requests.post(
        f"{base_url}/api/v1/plans/{plan_id}/regenerate", json={}, headers=ALICE, timeout=60
    )
    assert answer.status_code == 202, answer.text
    status_url = f"{base_url}/api/v1/plans/{plan_id}/regenerations/{answer.json()['generationId']}"
    status = requests.get(status_url, headers=ALICE, timeout=30).json()["status"]
    print(f"eager regeneration in the one opted-in process: {status}")
    assert status == "succeeded"


def row_status(app: Flask, plan_id: str) -> str:
    with app.app_context():
        (status,) = db.session.scalars(
            select(Regeneration.status).where(Regeneration.plan_id == plan_id)
        ).all()
        db.session.rollback()
        return str(status)


@pytest.mark.slow
@pytest.mark.parametrize("recovered_by", ["the sweep command", "the next requests"])
def test_a_row_left_by_a_killed_eager_process_is_recovered(
    app: Flask,
    make_plan: Callable[..., str],
    sqlite_uri: str,
    redis_url: str,
    worker_procs: WorkerProcs,
    recovered_by: str,
) -> None:
    """gunicorn kills its one opted-in worker (WORKER TIMEOUT) mid-job: the row still ends."""
    plan_id = make_plan()
    eager = {
        "PLAN_REGEN_EAGER": "true",
        "PLAN_REGEN_ALLOW_IN_PROCESS": "true",
        "PLAN_REGEN_LEASE_TTL": "3",
        "PLAN_REGEN_SWEEP_INTERVAL": "1",
    }
    slow = worker_env(sqlite_uri, redis_url, **eager, PLAN_REGEN_BUILTIN_DELAY="60")
    base_url = serve_with_gunicorn(worker_procs, slow, "sync", "--timeout", "3")
    started = time.monotonic()
    url = f"{base_url}/api/v1/plans/{plan_id}/regenerate"
    answer = requests.post(url, json={}, headers=ALICE, timeout=60)
    assert answer.status_code == 202, answer.text
    killed = worker_procs.wait_for_log(worker_procs.procs[-1], "WORKER TIMEOUT", timeout=60)
    print(f"web worker killed {time.monotonic() - started:.1f} s into the eager job")
    assert "WORKER TIMEOUT" in killed
    left = row_status(app, plan_id)
    assert left in ("pending", "processing")
    worker_procs.stop(worker_procs.procs[-1])  # what restarts it has the usual config

    fast = worker_env(sqlite_uri, redis_url, **eager)
    attempts: list[str] = []
    if recovered_by == "the sweep command":

        def recovered() -> bool:
            result = run_cli("--app", APP_FACTORY, "plan-regen", "sweep", env=fast)
            assert result.returncode == 0, result.stderr
            attempts.append(result.stdout.strip())
            return "Ran 1 queued jobs" in result.stdout

    else:
        base_url = serve_with_gunicorn(worker_procs, fast, "sync")
        status_url = f"{base_url}/api/v1/plans/{answer.json()['planId']}/regenerations/"
        status_url += answer.json()["generationId"]

        def recovered() -> bool:
            status = requests.get(status_url, headers=ALICE, timeout=60).json()["status"]
            attempts.append(status)
            return bool(status == "succeeded")

    wait_until(recovered, timeout=90, what=f"{recovered_by} to finish the left-behind row")
    print(f"left {left}; recovered by {recovered_by} after {len(attempts)}: {attempts[-1]!r}")
    assert row_status(app, plan_id) == "succeeded"


def test_init_app_refuses_in_process_settings_outside_testing(sqlite_uri: str) -> None:
    base = {"SQLALCHEMY_DATABASE_URI": sqlite_uri}
    for settings, needle in (
        ({"PLAN_REGEN_REDIS_URL": "memory://"}, "PLAN_REGEN_REDIS_URL is 'memory://'"),
        ({"PLAN_REGEN_EAGER": True}, "PLAN_REGEN_EAGER runs each job"),
    ):
        with pytest.raises(ConfigurationError, match=needle):
            create_app({**base, "TESTING": False, **settings})
        create_app({**base, "TESTING": True, **settings})
        create_app({**base, "TESTING": False, "PLAN_REGEN_ALLOW_IN_PROCESS": True, **settings})
    create_app({**base, **TEST_CONFIG})  # TEST_CONFIG turns testing mode on itself
