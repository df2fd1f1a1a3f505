"""The distributions as a package index would get them: built with ``build``, checked
with ``twine check --strict``, and the wheel installed in a fresh venv where
``flask plan-regen --help``, the example app and its own test suite run."""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import tarfile
import time
import venv
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

VERSION = "0.1.0"
NAME = f"flask_plan_regen-{VERSION}"


def run(
    argv: Sequence[str | Path], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(arg) for arg in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{argv}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, built as a release would be (isolated build, from PyPI)."""
    out = tmp_path_factory.mktemp("dist")
    started = time.monotonic()
    run([sys.executable, "-m", "build", "--outdir", out, REPO_ROOT])
    print(f"built the sdist and the wheel in {time.monotonic() - started:.1f} s")
    return out


def test_twine_check_strict_passes(dist: Path) -> None:
    result = run([sys.executable, "-m", "twine", "check", "--strict", *sorted(dist.iterdir())])
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_the_metadata_names_license_classifiers_and_version(dist: Path) -> None:
    with zipfile.ZipFile(dist / f"{NAME}-py3-none-any.whl") as wheel:
        names = set(wheel.namelist())
        metadata = email.message_from_bytes(wheel.read(f"{NAME}.dist-info/METADATA"))
    assert f"{NAME}.dist-info/licenses/LICENSE" in names
    assert "flask_plan_regen/py.typed" in names
    console = "flask_plan_regen/console/"
    assert {f"{console}templates/plan_regen_console/overview.html", f"{console}static/console.css",
            f"{console}static/console.js"} <= names  # fmt: skip
    assert not any(name.startswith(("tests/", "examples/")) for name in names)
    assert metadata["License-Expression"] == "MIT"
    classifiers = metadata.get_all("Classifier") or []
    for wanted in (
        "Framework :: Flask",
        "Typing :: Typed",
        "Programming Language :: Python :: 3.11",
    ):
        assert wanted in classifiers
    assert "testing" in (metadata.get_all("Provides-Extra") or [])
    assert metadata["Description-Content-Type"] == "text/markdown"
    # On a package index, a relative link in the README leads nowhere.
    assert "](docs/" not in (metadata.get_payload() or "")
    assert "](examples/" not in (metadata.get_payload() or "")


def test_the_sdist_ships_the_docs_and_the_example_suite_not_the_repository_suite(
    dist: Path,
) -> None:
    with tarfile.open(dist / f"{NAME}.tar.gz") as sdist:
        names = {name.removeprefix(f"{NAME}/") for name in sdist.getnames()}
    assert {"LICENSE", "README.md", "CHANGELOG.md", "docs/testing.md"} <= names
    assert {"examples/host_app.py", "examples/tests/test_host_app.py"} <= names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)


def test_the_wheel_installs_and_runs_in_a_fresh_venv(dist: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    venv.create(tmp_path / "venv", with_pip=True)
    bin_dir = tmp_path / "venv" / "bin"
    wheel = dist / f"{NAME}-py3-none-any.whl"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "FLASK_APP", "VIRTUAL_ENV"}
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    run(
        [bin_dir / "pip", "install", "--quiet", f"{wheel}[testing]", "pytest", "pytest-flask"],
        env=env,
    )
    print(f"fresh venv with the wheel and its dependencies in {time.monotonic() - started:.1f} s")

    # The example app and its suite, from the sdist, in a directory holding no package source.
    workdir = tmp_path / "host"
    with tarfile.open(dist / f"{NAME}.tar.gz") as sdist:
        sdist.extractall(tmp_path / "sdist", filter="data")
    shutil.copytree(tmp_path / "sdist" / NAME / "examples", workdir / "examples")
    env.update(
        PYTHONPATH=str(workdir),
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'host.sqlite'}",
        FLASK_PLAN_REGEN_REDIS_URL='"memory://"',
        FLASK_PLAN_REGEN_EAGER="true",
        FLASK_TESTING="true",  # both refuse to start outside testing mode
    )
    where_from = "import flask_plan_regen as p; print(p.__file__, p.__version__)"
    where = run([bin_dir / "python", "-c", where_from], cwd=workdir, env=env)
    location, version = where.stdout.split()
    assert Path(location).is_relative_to(tmp_path / "venv"), location
    assert version == VERSION

    help_text = run([bin_dir / "flask", "plan-regen", "--help"], cwd=workdir, env=env).stdout
    for command in ("init-db", "worker", "rq-command", "info", "sweep"):
        assert command in help_text

    flask_app = [bin_dir / "flask", "--app", "examples.host_app:create_app"]
    run([*flask_app, "plan-regen", "init-db"], cwd=workdir, env=env)
    created = run(
        [*flask_app, "create-plan", "--owner", "alice", "--topic", "Interview prep"],
        cwd=workdir,
        env=env,
    )
    plan_id = created.stdout.strip().splitlines()[-1]
    regenerate = (
        "from examples.host_app import create_app\n"
        "client, alice = create_app().test_client(), {'X-User-Id': 'alice'}\n"
        f"answer = client.post('/api/v1/plans/{plan_id}/regenerate', json={{}}, headers=alice)\n"
        f"plan = client.get('/api/v1/plans/{plan_id}', headers=alice).json\n"
        "print(answer.status_code, plan['status'], len(plan['modules']))\n"
    )
    status, plan_status, modules = run(
        [bin_dir / "python", "-c", regenerate], cwd=workdir, env=env
    ).stdout.split()
    assert (status, plan_status) == ("202", "ready")
    assert int(modules) > 0

    suite = run(
        [bin_dir / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "examples/tests"],
        cwd=workdir,
        env=env,
    )
    print(suite.stdout.strip().splitlines()[-1])
    assert " passed" in suite.stdout and "failed" not in suite.stdout
    print(f"whole install-and-run check took {time.monotonic() - started:.1f} s")
