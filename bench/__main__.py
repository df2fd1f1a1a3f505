"""``python -m bench`` (``make bench``): route, worker, capacity, threads and memory, in one run.

Every measure is taken in each of ``--rounds`` rounds, the package and what it is compared
with one after the other, in an order that rotates from round to round, and reported as
median (min-max) with the ratio of each round's pair, into the marked section of
docs/performance.md.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Sequence

from bench.capacity import LAYOUTS, drain_layout, idle_layout_pss
from bench.common import Database, Servers
from bench.report import Row, table, write_results
from bench.route import APPS, measure_route, write_plans_file
from bench.threads import (
    DB_POOL,
    DELAY,
    PROCESSES,
    THREADS,
    drain_threads_layout,
    in_flight_per_gib,
)
from bench.threads import LAYOUTS as THREAD_LAYOUTS
from bench.worker import SIDES, WORKER_CLASSES, drain, idle_pss

COMMAND = "make bench"
PARTS = ("route", "worker", "capacity", "threads")
DATABASES = ("sqlite", "postgres")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="measured wrk run")
    parser.add_argument("--warmup", type=int, default=1, help="wrk warm-up per server")
    parser.add_argument("--plans", type=int, default=20_000, help="plans (and users) per DB")
    parser.add_argument("--forking-jobs", type=int, default=150)
    parser.add_argument("--simple-jobs", type=int, default=300)
    parser.add_argument(
        "--capacity-jobs", type=int, default=8, help="jobs per worker in the capacity runs"
    )
    parser.add_argument(
        "--thread-jobs",
        type=int,
        default=1200,
        help=f"jobs of the --threads {THREADS} run (each takes {DELAY} s)",
    )
    parser.add_argument(
        "--only",
        type=lambda text: text.split(","),
        default=list(PARTS),
        help=f"comma-separated parts to run ({','.join(PARTS)}); implies --no-write",
    )
    parser.add_argument(
        "--databases",
        type=lambda text: text.split(","),
        default=list(DATABASES),
        help="comma-separated databases of the route part",
    )
    parser.add_argument(
        "--classes",
        type=lambda text: text.split(","),
        default=list(WORKER_CLASSES),
        help="comma-separated worker classes of the worker part",
    )
    parser.add_argument(
        "--processes",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 2],
        help="comma-separated worker counts of the worker part",
    )
    parser.add_argument("--no-write", action="store_true", help="print, leave the docs alone")
    args = parser.parse_args()
    if (
        set(args.only) - set(PARTS)
        or set(args.databases) - set(DATABASES)
        or set(args.classes) - set(WORKER_CLASSES)
        or set(args.processes) - {1, 2}
    ):
        parser.error(
            f"--only takes {PARTS}, --databases {DATABASES}, --classes "
            f"{tuple(WORKER_CLASSES)}, --processes 1,2"
        )
    complete = (
        set(args.only) == set(PARTS)
        and set(args.databases) == set(DATABASES)
        and set(args.classes) == set(WORKER_CLASSES)
        and set(args.processes) == {1, 2}
    )
    if not complete:
        args.no_write = True  # the docs only take a complete table
    return args


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def rotated(names: Sequence[str], round_number: int) -> list[str]:
    """``names`` starting at a different one each round, so no side always goes first."""
    shift = round_number % len(names)
    return [*names[shift:], *names[:shift]]


def main() -> int:
    args = parse_args()
    # A plain SIGTERM would skip the cleanup that stops Redis, PostgreSQL and the workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    values: dict[str, list[float]] = defaultdict(list)
    started = time.monotonic()
    complete_worker = set(args.classes) == set(WORKER_CLASSES) and set(args.processes) == {1, 2}
    with Servers() as servers:
        plans_files = {}
        for name, database in servers.databases.items():
            database.create_plans(args.plans)
            plans_files[name] = write_plans_file(database, servers.dir)
        workers_db = servers.databases["postgres"]
        jobs = {"forking": args.forking_jobs, "simple": args.simple_jobs}
        for round_number in range(args.rounds):
            if "route" in args.only:
                for name in args.databases:
                    database = servers.databases[name]
                    for app in rotated(list(APPS), round_number):
                        result = measure_route(
                            app, database, plans_files[name], args.seconds, args.warmup
                        )
                        if result.rejected:
                            raise SystemExit(f"{app} on {name}: {result.rejected} non-2xx answers")
                        log(f"route {app} {name}: {result}")
                        values[f"route-rps-{app}-{name}"].append(result.requests_per_s)
                        values[f"route-p99-{app}-{name}"].append(result.p99_ms)
            if "worker" in args.only:
                for worker_class in args.classes:
                    for processes in args.processes:
                        for side in rotated(SIDES, round_number):
                            drained = drain(
                                side, worker_class, processes, workers_db, jobs[worker_class]
                            )
                            log(f"worker {side} {worker_class} x{processes}: {drained}")
                            key = f"{side}-{worker_class}-{processes}"
                            values[f"jobs-{key}"].append(drained.jobs_per_s)
                            values[f"pss-busy-{key}"].append(drained.peak_pss_kib / 1024)
                for side in rotated(("package", "bare"), round_number) if complete_worker else ():
                    values[f"pss-idle-{side}"].append(idle_pss(side, workers_db) / 1024)
                    log(f"idle PSS {side}: {values[f'pss-idle-{side}'][-1]:.1f} MiB")
            if "capacity" in args.only:
                for layout in rotated(LAYOUTS, round_number):
                    drained = drain_layout(layout, workers_db, args.capacity_jobs)
                    log(f"capacity {layout}: {drained}")
                    values[f"capacity-jobs-{layout}"].append(drained.jobs_per_s)
                    values[f"capacity-pss-busy-{layout}"].append(drained.peak_pss_kib / 1024)
                for layout in rotated(("pool", "separate"), round_number):
                    pss = idle_layout_pss(layout, workers_db) / 1024
                    values[f"capacity-pss-idle-{layout}"].append(pss)
                    log(f"capacity idle PSS {layout}: {pss:.1f} MiB")
            if "threads" in args.only:
                measure_threads(values, workers_db, args.thread_jobs, round_number)
    rows = build_rows(values)
    text = table(rows, args.rounds, COMMAND)
    print(text)
    if not args.no_write:
        write_results(text)
        log("results written to docs/performance.md")
    log(f"done in {time.monotonic() - started:.0f} s")
    return 0


def measure_threads(
    values: dict[str, list[float]], database: Database, thread_jobs: int, round_number: int
) -> None:
    """One round of the threads part: ``--threads 100`` and ``--workers 8``, 5 s provider."""
    # Two jobs per pool worker: its drain takes as long as one of the threaded worker's waves.
    jobs = {"threads": thread_jobs, "pool": 2 * PROCESSES["pool"]}
    for layout in rotated(THREAD_LAYOUTS, round_number):
        drained = drain_threads_layout(layout, database, jobs[layout])
        log(f"threads {layout}: {drained}")
        values[f"threads-jobs-{layout}"].append(drained.jobs_per_s)
        if layout == "threads":
            values["threads-sustained"].append(drained.sustained_jobs_per_s)
        values[f"threads-per-process-{layout}"].append(drained.jobs_per_s / PROCESSES[layout])
        values[f"threads-pss-{layout}"].append(drained.peak_pss_kib / 1024)
        values[f"threads-per-gib-{layout}"].append(in_flight_per_gib(layout, drained.peak_pss_kib))
        values[f"threads-db-in-use-{layout}"].append(drained.peak_connections_in_use)
    values["threads-ideal"].append(THREADS / DELAY)
    values["threads-pss-budget"].append(150.0)
    values["threads-db-pool"].append(DB_POOL)


def build_rows(values: dict[str, list[float]]) -> list[Row]:
    """The table's rows, for the measures that were taken."""
    rows = [
        *route_rows(values),
        *worker_rows(values),
        *capacity_rows(values),
        *threads_rows(values),
    ]
    return [row for row in rows if row.package and row.baseline]


def route_rows(values: dict[str, list[float]]) -> list[Row]:
    rows = []
    for name in DATABASES:
        rps, p99 = f"route-rps-package-{name}", f"route-p99-package-{name}"
        rows += [
            Row(
                f"Route throughput, {name}, vs hand-written",
                "req/s",
                values[rps],
                values[f"route-rps-handwritten-{name}"],
                ">= 1.0x",
                limit=1.0,
            ),
            Row(
                f"Route p99 latency, {name}, vs hand-written",
                "ms",
                values[p99],
                values[f"route-p99-handwritten-{name}"],
                "<= 1.2x",
                higher_is_better=False,
                limit=1.2,
            ),
            Row(
                f"Route throughput, {name}, vs bare (read + enqueue)",
                "req/s",
                values[rps],
                values[f"route-rps-bare-{name}"],
            ),
            Row(
                f"Route p99 latency, {name}, vs bare (read + enqueue)",
                "ms",
                values[p99],
                values[f"route-p99-bare-{name}"],
                higher_is_better=False,
            ),
        ]
    return rows


def worker_rows(values: dict[str, list[float]]) -> list[Row]:
    rows = []
    for worker_class, cls in WORKER_CLASSES.items():
        for processes in (1, 2):
            key = f"{worker_class}-{processes}"
            rows.append(
                Row(
                    f"Worker {worker_class} ({cls}) x{processes} vs hand-written job",
                    "jobs/s",
                    values[f"jobs-package-{key}"],
                    values[f"jobs-handwritten-{key}"],
                    ">= 0.9x",
                    limit=0.9,
                )
            )
    for worker_class, cls in WORKER_CLASSES.items():
        for processes in (1, 2):
            key = f"{worker_class}-{processes}"
            rows.append(
                Row(
                    f"Worker {worker_class} ({cls}) x{processes} vs bare RQ no-op jobs",
                    "jobs/s",
                    values[f"jobs-package-{key}"],
                    values[f"jobs-bare-{key}"],
                )
            )
    for worker_class in WORKER_CLASSES:
        for side, label in (("package", "regenerations"), ("handwritten", "hand-written jobs")):
            rows.append(
                Row(
                    f"Scaling, {worker_class}, {label}: 2 processes (left) vs 1 (right)",
                    "jobs/s",
                    values[f"jobs-{side}-{worker_class}-2"],
                    values[f"jobs-{side}-{worker_class}-1"],
                )
            )
    rows.append(
        Row(
            "Idle worker PSS vs `rq worker` with the app loaded",
            "MiB",
            values["pss-idle-package"],
            values["pss-idle-bare"],
            "<= 1.3x",
            higher_is_better=False,
            limit=1.3,
        )
    )
    for worker_class in WORKER_CLASSES:
        rows.append(
            Row(
                f"Busy worker PSS, {worker_class} x1 (peak, with work horse) vs hand-written",
                "MiB",
                values[f"pss-busy-package-{worker_class}-1"],
                values[f"pss-busy-handwritten-{worker_class}-1"],
                higher_is_better=False,
            )
        )
    return rows


def capacity_rows(values: dict[str, list[float]]) -> list[Row]:
    return [
        Row(
            "Capacity, 1 s provider delay: `--workers 8` (left) vs one worker (right)",
            "jobs/s",
            values["capacity-jobs-pool"],
            values["capacity-jobs-one"],
            ">= 7x",
            limit=7.0,
        ),
        Row(
            "Capacity, 1 s provider delay: `--workers 8` vs 8 separate workers",
            "jobs/s",
            values["capacity-jobs-pool"],
            values["capacity-jobs-separate"],
        ),
        Row(
            "PSS while draining: `--workers 8` vs 8 separate workers (peak)",
            "MiB",
            values["capacity-pss-busy-pool"],
            values["capacity-pss-busy-separate"],
            "<= 0.6x",
            higher_is_better=False,
            limit=0.6,
        ),
        Row(
            "PSS idle: `--workers 8` vs 8 separate workers",
            "MiB",
            values["capacity-pss-idle-pool"],
            values["capacity-pss-idle-separate"],
            "<= 0.6x",
            higher_is_better=False,
            limit=0.6,
        ),
    ]


def threads_rows(values: dict[str, list[float]]) -> list[Row]:
    pool = f"`--workers {PROCESSES['pool']}`"
    threads = f"`--threads {THREADS}`"
    return [
        Row(
            f"Threads, {DELAY} s provider: {threads} sustained vs the ideal {THREADS}/{DELAY} s",
            "jobs/s",
            values["threads-sustained"],
            values["threads-ideal"],
            ">= 0.95x",
            limit=0.95,
        ),
        Row(
            f"Threads, {DELAY} s provider: {threads} whole drain (ramp and tail) vs the ideal",
            "jobs/s",
            values["threads-jobs-threads"],
            values["threads-ideal"],
        ),
        Row(
            f"Threads: peak PSS of {threads} while draining vs 150 MiB",
            "MiB",
            values["threads-pss-threads"],
            values["threads-pss-budget"],
            "<= 1.0x",
            higher_is_better=False,
            limit=1.0,
        ),
        Row(
            f"Threads: DB connections in use by {threads} (peak) vs the pool (5 + 10)",
            "connections",
            values["threads-db-in-use-threads"],
            values["threads-db-pool"],
            "<= 1.0x",
            higher_is_better=False,
            limit=1.0,
        ),
        Row(
            f"Regenerations in flight per GiB (peak PSS): {threads} vs {pool}",
            "per GiB",
            values["threads-per-gib-threads"],
            values["threads-per-gib-pool"],
            ">= 600",
            goal=600,
        ),
        Row(
            f"Throughput per worker process, {DELAY} s provider: {threads} vs {pool}",
            "jobs/s",
            values["threads-per-process-threads"],
            values["threads-per-process-pool"],
        ),
        Row(
            f"Throughput, {DELAY} s provider: {threads} (1 process) vs {pool} (8)",
            "jobs/s",
            values["threads-jobs-threads"],
            values["threads-jobs-pool"],
        ),
    ]


if __name__ == "__main__":
    sys.exit(main())
