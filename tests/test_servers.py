"""Smoke tests of the real-server fixtures in ``servers.py`` (registered by conftest)."""

from __future__ import annotations

import os
import sys

import pytest
import redis
import sqlalchemy as sa
from conftest import wait_until
from servers import WorkerProcs, free_port, stop_process


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_redis_url_answers_ping(redis_url: str) -> None:
    assert redis_url.startswith("redis://127.0.0.1:")
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
        client.set("servers-smoke", "1")
        assert client.get("servers-smoke") == b"1"
        client.delete("servers-smoke")
    finally:
        client.close()


@pytest.mark.postgres
def test_postgres_url_runs_select_1(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg://")
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
            max_connections = conn.execute(sa.text("SHOW max_connections")).scalar_one()
            assert int(max_connections) >= 100
    finally:
        engine.dispose()


def _alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (an orphan's reaper may be slow)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_worker_procs_kill_the_whole_group(worker_procs: WorkerProcs) -> None:
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = worker_procs.spawn([sys.executable, "-c", script], env={"SMOKE": "1"})
    output = worker_procs.wait_for_log(proc, "child ")
    child_pid = int(output.split("child ", 1)[1].split()[0])
    assert _alive(child_pid)

    stop_process(proc, timeout=5)
    assert proc.returncode is not None
    wait_until(lambda: not _alive(child_pid), 5, f"the child {child_pid} ending")
    assert not _alive(child_pid)


def test_rq_worker_starts_and_shuts_down_warm(redis_url: str, worker_procs: WorkerProcs) -> None:
    args = ["rq", "worker", "-S", "rq.serializers.JSONSerializer", "--url", redis_url]
    proc = worker_procs.spawn([*args, "plan_regen_high", "plan_regen_default", "plan_regen_low"])
    worker_procs.wait_for_log(proc, "plan_regen_high", timeout=30)
    assert proc.poll() is None
    assert worker_procs.stop(proc, timeout=15) == 0, worker_procs.log_tail(proc)
