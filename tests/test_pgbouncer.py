"""PostgreSQL behind a real PgBouncer in transaction mode (``PLAN_REGEN_PGBOUNCER = True``).

PgBouncer comes from ``.ci/ensure-pgbouncer`` (``make pgbouncer``); it refuses to run
as root, so as root it runs as the PostgreSQL server's user. Prints what it measured.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NO_LIMITS, build_app, plan_factory, wait_for_status, worker_env
from flask import Flask
from servers import IN_CI, REPO_ROOT, EmbeddedPostgres, WorkerProcs, free_port, stop_process
from sqlalchemy import text

from examples.host_app import db
from flask_plan_regen import metadata

pytestmark = pytest.mark.slow

REGENERATIONS = 500


def pgbouncer_binary() -> str | None:
    """PgBouncer's path; installed with ``.ci/ensure-pgbouncer`` (as root) when missing."""
    for _ in range(2):
        found = os.environ.get("PLAN_REGEN_PGBOUNCER_BIN") or shutil.which(
            "pgbouncer", path=f"{os.environ.get('PATH', '')}:/usr/sbin"
        )
        if found is not None or os.geteuid() != 0:
            return found
        subprocess.run(["bash", str(REPO_ROOT / ".ci" / "ensure-pgbouncer")], check=False)
    return None


@pytest.fixture
def pgbouncer_url(postgres_server: EmbeddedPostgres) -> Iterator[str]:
    """A PgBouncer in transaction mode in front of the session's PostgreSQL; its URL."""
    binary = pgbouncer_binary()
    if binary is None:
        if IN_CI:
            pytest.fail("pgbouncer not found and could not be installed (.ci/ensure-pgbouncer)")
        pytest.skip("pgbouncer not found; run `make pgbouncer`")
    base = Path(tempfile.mkdtemp(prefix="plan-regen-pgbouncer-", dir="/tmp"))
    port = free_port()
    (base / "userlist.txt").write_text('"postgres" ""\n')
    (base / "pgbouncer.ini").write_text(
        f"[databases]\n"
        f"plan_regen_test = host=127.0.0.1 port={postgres_server.port} "
        f"dbname=plan_regen_test user=postgres\n"
        f"[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {base / 'userlist.txt'}\n"
        f"pool_mode = transaction\nmax_client_conn = 500\ndefault_pool_size = 8\n"
        f"ignore_startup_parameters = extra_float_digits,options\n"
    )
    if postgres_server.uid is not None:
        for path in (base, base / "userlist.txt", base / "pgbouncer.ini"):
            os.chown(path, postgres_server.uid, postgres_server.gid or 0)
    with open(base / "pgbouncer.log", "ab") as log:
        process = subprocess.Popen(
            [binary, str(base / "pgbouncer.ini")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            user=postgres_server.uid,
            group=postgres_server.gid,
            extra_groups=[] if postgres_server.uid is not None else None,
            start_new_session=True,
        )
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/plan_regen_test"
    try:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/plan_regen_test").close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError(
                        f"pgbouncer did not start:\n{(base / 'pgbouncer.log').read_text()}"
                    ) from None
                time.sleep(0.1)
        yield url
    finally:
        stop_process(process, timeout=5)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def bounced_app(
    postgres_url: str, pgbouncer_url: str, redis_url: str, redis_conn: object
) -> Iterator[Flask]:
    """The example app through PgBouncer, on empty tables and an empty Redis."""
    direct = build_app(postgres_url, redis_url)
    with direct.app_context(), db.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(metadata.tables)} RESTART IDENTITY CASCADE"))
        db.engine.dispose()
    app = build_app(pgbouncer_url, redis_url, PLAN_REGEN_PGBOUNCER=True, **NO_LIMITS)
    yield app
    with app.app_context():
        db.engine.dispose()


# 500 forked jobs take a minute on a quiet 2-core machine, more under the suite's load.
@pytest.mark.timeout(300)
def test_500_regenerations_through_pgbouncer_in_transaction_mode(
    bounced_app: Flask, pgbouncer_url: str, redis_url: str, worker_procs: WorkerProcs
) -> None:
    with bounced_app.app_context():
        dbapi_connection = db.session.connection().connection.dbapi_connection
        assert getattr(dbapi_connection, "prepare_threshold", "unset") is None
        db.session.rollback()
    env = worker_env(pgbouncer_url, redis_url, PLAN_REGEN_PGBOUNCER="true")
    pools = [
        worker_procs.spawn(["flask", "plan-regen", "worker", "--workers", "2"], env)
        for _ in range(2)
    ]
    make_plan = plan_factory(bounced_app)
    web = bounced_app.test_client()
    started = time.monotonic()
    answers = [
        web.post(f"/api/v1/plans/{make_plan()}/regenerate", json={}, headers={"X-User-Id": "alice"})
        for _ in range(REGENERATIONS)
    ]
    codes = [answer.status_code for answer in answers]
    ids = [answer.get_json()["generationId"] for answer in answers if answer.status_code == 202]
    final = wait_for_status(bounced_app, ids, timeout=240)
    failed = [generation_id for generation_id, status in final.items() if status != "succeeded"]
    print(
        f"\nthrough PgBouncer (transaction mode): {codes.count(202)} of {REGENERATIONS} POSTs "
        f"answered 202, {len(final) - len(failed)} succeeded, {len(failed)} failed, in "
        f"{time.monotonic() - started:.0f} s with 2 pools of 2 workers"
    )
    assert codes == [202] * REGENERATIONS
    assert failed == []
    assert all(pool.poll() is None for pool in pools)
