"""The code in README.md and the docs runs as shown.

* A Python block whose first line names a file (``# myapp.py``) is that file:
  docs/testing.md's three files are run with pytest, and the README's
  quickstart app is run as the README says (init-db, ``flask run``, a worker,
  the curl requests), against a real Redis.
* Every other Python block is a fragment of a host's module: it must run in a
  module that has what a host's module has at that point (its ``app``, ``db``
  and ``regen``, a logging ``handler``, the package's public names and the
  usual imports; see :func:`host_module`), in order, block after block.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import types
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis
from conftest import REPO_ROOT, code_blocks, post_json, wait_until
from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from servers import WorkerProcs

import flask_plan_regen
from flask_plan_regen import PlanRegen
from flask_plan_regen.testing import TEST_CONFIG

DOCS = [
    REPO_ROOT / "README.md",
    REPO_ROOT / "examples" / "README.md",
    *sorted((REPO_ROOT / "docs").glob("*.md")),
]
_FILE_NAME = re.compile(r"# (\w+\.py)\n")


def file_name(block: str) -> str | None:
    """``myapp.py`` for a block that starts with ``# myapp.py``."""
    named = _FILE_NAME.match(block)
    return named[1] if named else None


def write_files(markdown: Path, directory: Path) -> list[str]:
    """Write the file blocks of ``markdown`` into ``directory``; return their names."""
    names = []
    for block in code_blocks(markdown):
        name = file_name(block)
        if name:
            (directory / name).write_text(block)
            names.append(name)
    return names


@pytest.mark.parametrize("markdown", DOCS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_python_block_compiles(markdown: Path) -> None:
    for number, block in enumerate(code_blocks(markdown)):
        compile(block, f"{markdown.name}, Python block {number + 1}", "exec")


def host_module(tmp_path: Path) -> dict[str, Any]:
    """The globals of a host's module ``host``: its app set up, the names the docs take as
    given."""
    app = Flask("host")
    app.config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'host.db'}", **TEST_CONFIG)
    db = SQLAlchemy(app)
    regen = PlanRegen(app)
    public = {name: getattr(flask_plan_regen, name) for name in flask_plan_regen.__all__}
    return {
        **public,
        "app": app,
        "db": db,
        "regen": regen,
        "handler": logging.StreamHandler(),
        "os": os,
        "Any": Any,
        "Protocol": Protocol,
        "Sequence": Sequence,
        "dataclass": dataclass,
        "date": date,
        "Migrate": Migrate,
    }


@pytest.mark.parametrize("markdown", DOCS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_python_fragments_run_in_a_host_module(
    markdown: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for secret in ("OPENAI_API_KEY", "OPENROUTER_API_KEY", "STRIPE_SECRET_KEY"):
        monkeypatch.setenv(secret, "sk_test_from_the_environment")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_from_the_environment")
    module = types.ModuleType("host")
    module.__dict__.update(host_module(tmp_path))
    monkeypatch.setitem(sys.modules, "host", module)  # as a module is (dataclasses look there)
    fragments = [block for block in code_blocks(markdown) if file_name(block) is None]
    for number, block in enumerate(fragments):
        exec(compile(block, f"{markdown.name}, fragment {number + 1}", "exec"), module.__dict__)
    if markdown == REPO_ROOT / "README.md":  # the provider set-up took effect
        assert module.app.config["PLAN_REGEN_PROVIDER"] is flask_plan_regen.OpenAIProvider


def test_the_testing_guides_suite_passes(tmp_path: Path) -> None:
    names = write_files(REPO_ROOT / "docs" / "testing.md", tmp_path)
    assert names == ["myapp.py", "conftest.py", "test_myapp.py"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout, result.stdout


def get_json(url: str, headers: dict[str, str]) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as answer:
        return json.loads(answer.read())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
def test_the_readme_quickstart_runs_as_shown(
    tmp_path: Path, redis_url: str, redis_conn: redis.Redis, worker_procs: WorkerProcs
) -> None:
    write_files(REPO_ROOT / "README.md", tmp_path)
    env = {
        "FLASK_APP": "myapp:create_app",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)]),
        # The suite's Redis, set as the README says (myapp.py reads FLASK_ settings).
        "FLASK_PLAN_REGEN_REDIS_URL": redis_url,
    }
    flask = str(Path(sys.executable).parent / "flask")
    init = subprocess.run(
        [flask, "plan-regen", "init-db"],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    port = free_port()
    web = worker_procs.spawn([flask, "run", "--port", str(port)], env, cwd=tmp_path)
    worker_procs.spawn([flask, "plan-regen", "worker"], env, cwd=tmp_path)
    worker_procs.wait_for_log(web, "Running on")
    base = f"http://127.0.0.1:{port}/api/v1"
    alice = {"X-User-Id": "alice"}

    status, created = post_json(
        f"{base}/plans", {"topic": "Interview prep: data structures", "weeklyHours": 6}, alice
    )
    assert status == 202, created
    assert (created["priority"], created["queue"]) == (4, "plan_regen_low")  # as the README says
    plan_url = f"{base}/plans/{created['planId']}"
    plan = wait_until(
        lambda: (found := get_json(plan_url, alice))["status"] == "ready" and found,
        what="the first generation",
    )
    assert plan["modules"]

    status, queued = post_json(
        f"{plan_url}/regenerate",
        {"overrides": {"skillLevel": "intermediate", "weeklyHours": 8}},
        alice,
    )
    assert status == 202, queued
    done = wait_until(
        lambda: (
            (found := get_json(f"{plan_url}/regenerations/{queued['generationId']}", alice))[
                "status"
            ]
            == "succeeded"
            and found
        ),
        what="the regeneration",
    )
    assert done["overrides"] == {"skillLevel": "intermediate", "weeklyHours": 8}
    assert (tmp_path / "instance" / "app.db").exists()  # where the README says it lands
