"""In-process A/B timing and profiles of the route and the job: ``python -m bench.profile``.

Where ``make bench`` measures whole servers, this runs the package's code and the
hand-written equivalent in this one process, against the same real Redis and database,
in alternating blocks, and reports CPU time (``time.process_time``: this process only,
so less sensitive to other load on the machine than wall time) and wall time per request
or per job. ``--profile FILE`` writes a cProfile of the package's side (read it with
``python -m pstats FILE``). Used to find where the time goes; never part of the table.

    python -m bench.profile route --database postgres --count 400
    python -m bench.profile job --database sqlite --count 200 --profile job.prof
"""

from __future__ import annotations

import argparse
import cProfile
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import select

from bench import handwritten
from bench.common import Database, Servers
from bench.worker import fill_handwritten_queue, fill_package_queue
from examples.host_app import db
from flask_plan_regen import get_state, jobs
from flask_plan_regen.jobs import set_worker_app
from flask_plan_regen.models import Regeneration

BLOCK = 25


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("what", choices=("route", "job"))
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="postgres")
    parser.add_argument("--count", type=int, default=400, help="requests or jobs per side")
    parser.add_argument("--profile", default=None, help="write a cProfile of the package here")
    parser.add_argument(
        "--fork",
        action="store_true",
        help="job: run each job in a child forked from a prepared parent, as RQ's Worker "
        "does (CPU from the child's rusage; profiles per child, FILE.<pid>)",
    )
    args = parser.parse_args()
    if args.fork and args.what != "job":
        parser.error("--fork is for jobs")
    return args


def route_calls(database: Database, count: int) -> dict[str, Iterator[Callable[[], Any]]]:
    """One request per call, each for a plan (and owner) of its own."""
    apps = {
        "package": database.app(),
        "handwritten": handwritten.create_app(database.uri, database.redis_url),
    }
    plans = iter(database.plans)

    def calls(name: str) -> Iterator[Callable[[], Any]]:
        client = apps[name].test_client()
        for _ in range(count):
            plan_id, owner = next(plans)

            def call(plan_id: str = plan_id, owner: str = owner) -> None:
                response = client.post(
                    f"/api/v1/plans/{plan_id}/regenerate",
                    json={"overrides": {"weeklyHours": 6, "learningStyle": "practice"}},
                    headers={"X-User-Id": owner},
                )
                if response.status_code != 202:
                    raise RuntimeError(f"{name}: {response.status_code} {response.get_data()}")

            yield call

    return {name: calls(name) for name in apps}


def job_calls(database: Database, count: int) -> dict[str, Iterator[Callable[[], Any]]]:
    """One job per call, run in this process as RQ's SimpleWorker would."""
    database.reset()
    fill_package_queue(database, count)
    fill_handwritten_queue(database, count, offset=count)
    app = database.app()
    set_worker_app(app)
    os.environ.update(database.env())  # where bench.handwritten's worker app is read from
    with app.app_context():
        rows = db.session.execute(select(Regeneration.id, Regeneration.queue)).all()
        db.session.rollback()
    package_ids = [row.id for row in rows if row.queue != handwritten.QUEUE]
    handwritten_ids = [row.id for row in rows if row.queue == handwritten.QUEUE]

    def package() -> Iterator[Callable[[], Any]]:
        for generation_id in package_ids:
            yield lambda generation_id=generation_id: expect(jobs.run_regeneration(generation_id))

    def hand() -> Iterator[Callable[[], Any]]:
        for generation_id in handwritten_ids:
            yield lambda generation_id=generation_id: expect(
                handwritten.run_regeneration(generation_id)
            )

    return {"package": package(), "handwritten": hand()}


def expect(summary: Any) -> None:
    if not summary:
        raise RuntimeError("a job did not succeed")


def prepare_to_fork(database: Database) -> None:
    """What each worker's main process has done before it forks a work horse."""
    with database.app().app_context():
        get_state().prepare_for_fork()
    with handwritten.worker_app().app_context():
        handwritten.db.engine.dispose()


def run_forked(call: Callable[[], Any], profile: str | None) -> tuple[float, float]:
    """Run ``call`` in a forked child; its (CPU, wall) seconds."""
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the work horse
        code = 1
        try:
            if profile:
                profiler = cProfile.Profile(time.process_time)
                profiler.runcall(call)
                profiler.dump_stats(f"{profile}.{os.getpid()}")
            else:
                call()
            code = 0
        finally:
            os._exit(code)
    _, status, usage = os.wait4(pid, 0)
    if status != 0:
        raise RuntimeError(f"a forked job failed ({status})")
    return usage.ru_utime + usage.ru_stime, time.perf_counter() - started


def main() -> int:
    args = parse_args()
    with Servers() as servers:
        database = servers.databases[args.database]
        database.create_plans(max(4 * args.count, 2000))
        maker = route_calls if args.what == "route" else job_calls
        sides = maker(database, args.count)
        cpu: dict[str, list[float]] = {name: [] for name in sides}
        wall: dict[str, list[float]] = {name: [] for name in sides}
        # CPU time, not wall time: waits on the servers would drown what the code costs.
        profiler = cProfile.Profile(time.process_time) if args.profile else None
        # Warm-up: connections, compiled statements, lazily built objects. A forked job
        # starts from what a worker's main process has instead: no job ran there.
        warmup = 0 if args.fork else 5
        for calls in sides.values():
            for _ in range(warmup):
                next(calls)()
        if args.fork:
            prepare_to_fork(database)
        remaining = args.count - warmup
        block_number = 0
        while remaining > 0:
            size = min(BLOCK, remaining)
            order = list(sides) if block_number % 2 == 0 else list(reversed(list(sides)))
            for name in order:
                calls = sides[name]
                for _ in range(size):
                    call = next(calls)
                    use_profiler = profiler is not None and name == "package"
                    if args.fork:
                        used, took = run_forked(call, args.profile if use_profiler else None)
                        cpu[name].append(used)
                        wall[name].append(took)
                        continue
                    started_cpu, started_wall = time.process_time(), time.perf_counter()
                    if use_profiler:
                        profiler.runcall(call)  # type: ignore[union-attr]
                    else:
                        call()
                    cpu[name].append(time.process_time() - started_cpu)
                    wall[name].append(time.perf_counter() - started_wall)
            remaining -= size
            block_number += 1
        for name in sides:
            print(
                f"{args.what} {args.database} {name:12s} n={len(cpu[name])} "
                f"cpu mean {statistics.mean(cpu[name]) * 1000:.2f} ms, "
                f"wall median {statistics.median(wall[name]) * 1000:.2f} ms, "
                f"p99 {sorted(wall[name])[int(len(wall[name]) * 0.99) - 1] * 1000:.2f} ms"
            )
        ratio = statistics.mean(cpu["handwritten"]) / statistics.mean(cpu["package"])
        print(f"CPU speed, package vs hand-written: {ratio:.2f}x")
        if profiler is not None and not args.fork:
            profiler.dump_stats(args.profile)
            print(f"profile written to {args.profile}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
