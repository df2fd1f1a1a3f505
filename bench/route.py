"""Route benchmark: the package's regenerate route against the hand-written and bare apps.

Every app runs under gunicorn with 2 sync workers on the same database and Redis. wrk's Lua
script (``rotate.lua``) sends every request for a different plan whose owner is a user of
its own, so the one-active-regeneration rule, the per-user rate limit and the monthly quota
never reject the load, with the package's default config (no limit is switched off).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.common import REPO_ROOT, Database, free_port, spawn, wait_for_http

APPS = {
    "package": "examples.host_app:create_app()",
    "handwritten": "bench.handwritten:create_app()",
    "bare": "bench.baseline_app:create_app()",
}
LUA_SCRIPT = Path(__file__).with_name("rotate.lua")
WRK_THREADS = 1
WRK_CONNECTIONS = 4
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass
class RouteResult:
    requests_per_s: float
    p99_ms: float
    requests: int
    rejected: int


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk not found: `make bench` installs it (apt-get install wrk)")
    return found


def run_wrk(url: str, plans_file: Path, first: int, seconds: int) -> RouteResult:
    argv = [
        wrk_binary(),
        f"-t{WRK_THREADS}",
        f"-c{WRK_CONNECTIONS}",
        f"-d{seconds}s",
        "--latency",
        "-s", str(LUA_SCRIPT),
        url,
        "--", str(plans_file), str(first), str(WRK_THREADS),
    ]  # fmt: skip
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return parse_wrk(output)


def parse_wrk(output: str) -> RouteResult:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", output)
    total = re.search(r"(\d+) requests in", output)
    if not (rate and p99 and total):
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    rejected = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return RouteResult(
        requests_per_s=float(rate.group(1)),
        p99_ms=float(p99.group(1)) * _UNITS[p99.group(2)],
        requests=int(total.group(1)),
        rejected=int(rejected.group(1)) if rejected else 0,
    )


def measure_route(
    app: str, database: Database, plans_file: Path, seconds: int, warmup: int
) -> RouteResult:
    """Start ``app`` under gunicorn on ``database``, warm it up, then measure one wrk run."""
    database.reset()
    port = free_port()
    argv = [
        "gunicorn",
        "--workers", "2",
        "--worker-class", "sync",
        "--bind", f"127.0.0.1:{port}",
        "--log-level", "warning",
        "--chdir", str(REPO_ROOT),
        APPS[app],
    ]  # fmt: skip
    with spawn(argv, database.env(), f"gunicorn-{app}-{database.name}"):
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/")
        # The warm-up takes plans from the second half, the measured run from the first.
        run_wrk(base, plans_file, len(database.plans) // 2, warmup)
        result = run_wrk(base, plans_file, 0, seconds)
    if result.requests > len(database.plans) // 2:
        raise RuntimeError("more requests than plans: raise --plans")
    return result


def write_plans_file(database: Database, directory: Path) -> Path:
    path = directory / f"plans-{database.name}.txt"
    path.write_text("".join(f"{plan} {owner}\n" for plan, owner in database.plans))
    return path
