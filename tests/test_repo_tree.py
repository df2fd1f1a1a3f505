"""The repository's root holds the project's own files only: no generated output."""

from __future__ import annotations

import subprocess

import pytest
from conftest import REPO_ROOT

ROOT_FILES = {
    ".gitignore",
    "CHANGELOG.md",
    "LICENSE",
    "MANIFEST.in",
    "Makefile",
    "README.md",
    "pyproject.toml",
}


def test_the_root_tracks_only_the_projects_files() -> None:
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout (an unpacked sdist)")
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    files = {path for path in tracked if "/" not in path}
    print(f"files at the root: {sorted(files)}")
    assert files <= ROOT_FILES, files - ROOT_FILES  # e.g. "o", an OpenAPI dump, once was


def test_generated_output_at_the_root_is_ignored() -> None:
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout (an unpacked sdist)")
    names = ["openapi.json", "openapi-v1.json", "worker.log", "app.db", "app.sqlite"]
    ignored = subprocess.run(
        ["git", "check-ignore", *names], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.split()
    assert ignored == names
