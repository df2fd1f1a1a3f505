"""What every benchmark shares: the servers, the databases, processes, PSS and statistics.

The redis-server and PostgreSQL launchers are the test suite's (``examples/embedded_redis.py``
and ``tests/servers.py``), so the benchmark runs against the same real servers as the tests.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
KEEP_FINISHED_JOBS = 3600
"""Seconds RQ keeps a finished job in the benchmarks (the package deletes it at once)."""
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT / "examples")]

import redis  # noqa: E402
from embedded_redis import EmbeddedRedis, free_port, stop_process  # noqa: E402
from flask import Flask  # noqa: E402
from servers import EmbeddedPostgres, find_postgres_bindir, spawn_worker  # noqa: E402
from sqlalchemy import delete, insert, text  # noqa: E402

from examples.host_app import create_app, db  # noqa: E402
from flask_plan_regen import metadata  # noqa: E402
from flask_plan_regen.models import Plan  # noqa: E402

__all__ = [
    "REPO_ROOT",
    "Database",
    "Servers",
    "free_port",
    "median_range",
    "pss_kib",
    "spawn",
    "stop_process",
    "wait_for_http",
]


@dataclass
class Database:
    """One benchmark database (``sqlite`` or ``postgres``) filled with plans of unique owners."""

    name: str
    uri: str
    redis_url: str
    plans: list[tuple[str, str]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """Environment for a web or worker process of the example host app on this database."""
        return {
            "FLASK_APP": "examples.host_app:create_app",
            "PYTHONPATH": str(REPO_ROOT),
            "SQLALCHEMY_DATABASE_URI": self.uri,
            "PLAN_REGEN_REDIS_URL": self.redis_url,
            # RQ keeps finished jobs: the drain is timed from its finished registry.
            "FLASK_PLAN_REGEN_RESULT_TTL": str(KEEP_FINISHED_JOBS),
        }

    def app(self) -> Flask:
        return create_app(
            {
                "SQLALCHEMY_DATABASE_URI": self.uri,
                "PLAN_REGEN_REDIS_URL": self.redis_url,
                "PLAN_REGEN_RESULT_TTL": KEEP_FINISHED_JOBS,
            }
        )

    def create_plans(self, count: int) -> None:
        """Create the tables and ``count`` plans, each with an owner of its own."""
        rows = [
            {"id": f"{index:08x}-0000-4000-8000-000000000000", "owner_id": f"user-{index}"}
            for index in range(count)
        ]
        with self.app().app_context():
            if self.name == "sqlite":
                # Persistent in the file: readers no longer block the writer. Any host
                # serving SQLite from several processes wants it (docs/performance.md).
                db.session.execute(text("PRAGMA journal_mode=WAL"))
            metadata.create_all(db.engine)
            db.session.execute(
                insert(Plan),
                [{**row, "topic": "Rust for web services", "status": "ready"} for row in rows],
            )
            db.session.commit()
            db.engine.dispose()
        self.plans = [(row["id"], row["owner_id"]) for row in rows]

    def reset(self) -> None:
        """Forget every regeneration, job, limit and quota: only the plans stay."""
        redis.Redis.from_url(self.redis_url).flushdb()
        with self.app().app_context():
            for table in reversed(metadata.sorted_tables):
                if table is not Plan.__table__:
                    db.session.execute(delete(table))
            db.session.commit()
            db.engine.dispose()


class Servers:
    """A redis-server, a PostgreSQL cluster and a SQLite file, for the whole run."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="plan-regen-bench-"))
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Servers:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _start(self) -> None:
        redis_server = self._stack.enter_context(EmbeddedRedis(self.dir / "redis"))
        bindir = find_postgres_bindir()
        if bindir is None:
            raise SystemExit("PostgreSQL binaries not found: run `make postgres` first")
        postgres = EmbeddedPostgres(bindir)
        self._stack.callback(postgres.stop)
        self.databases = {
            "sqlite": Database("sqlite", f"sqlite:///{self.dir / 'bench.sqlite'}", ""),
            "postgres": Database("postgres", postgres.start(), ""),
        }
        for index, database in enumerate(self.databases.values()):
            # One Redis database each, so a reset of one never touches the other.
            database.redis_url = f"redis://127.0.0.1:{redis_server.port}/{index}"

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


@contextlib.contextmanager
def spawn(args: Sequence[str], env: dict[str, str], log_name: str) -> Iterator[int]:
    """Run ``args`` (venv console scripts first on PATH) until the block ends; yield its pid."""
    log_dir = Path(tempfile.gettempdir()) / "plan-regen-bench-logs"
    log_dir.mkdir(exist_ok=True)
    proc = spawn_worker(args, env, log_path=log_dir / f"{log_name}.log")
    try:
        yield proc.pid
    finally:
        stop_process(proc, timeout=10)


def wait_for_http(url: str, timeout: float = 30.0) -> None:
    """Wait until something answers HTTP at ``url`` (any status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered at {url}")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (RQ's work horses)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                pids += process_tree(int(child))
    return pids


def pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` and its descendants, in KiB."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total


def median_range(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) of ``values``."""
    return statistics.median(values), min(values), max(values)
