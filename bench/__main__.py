"""``python -m bench`` (``make bench``): route, worker and memory, side by side, in one run.

Every measure is taken in each of ``--rounds`` rounds, the package and its baseline one
after the other in alternating order, and reported as median (min-max) with the ratio of
each round's pair, into the marked section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections import defaultdict

from bench.common import Servers
from bench.report import Row, table, write_results
from bench.route import APPS, measure_route, write_plans_file
from bench.worker import WORKER_CLASSES, drain, idle_pss

COMMAND = "make bench"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="measured wrk run")
    parser.add_argument("--warmup", type=int, default=1, help="wrk warm-up per server")
    parser.add_argument("--plans", type=int, default=20_000, help="plans (and users) per DB")
    parser.add_argument("--forking-jobs", type=int, default=150)
    parser.add_argument("--simple-jobs", type=int, default=300)
    parser.add_argument("--no-write", action="store_true", help="print, leave the docs alone")
    return parser.parse_args()


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def main() -> int:
    args = parse_args()
    # A plain SIGTERM would skip the cleanup that stops Redis, PostgreSQL and the workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    values: dict[str, list[float]] = defaultdict(list)
    started = time.monotonic()
    with Servers() as servers:
        plans_files = {}
        for name, database in servers.databases.items():
            database.create_plans(args.plans)
            plans_files[name] = write_plans_file(database, servers.dir)
        workers_db = servers.databases["postgres"]
        jobs = {"forking": args.forking_jobs, "simple": args.simple_jobs}
        for round_number in range(args.rounds):
            flip = round_number % 2 == 1
            for name, database in servers.databases.items():
                for app in sorted(APPS, reverse=flip):
                    result = measure_route(
                        app, database, plans_files[name], args.seconds, args.warmup
                    )
                    if result.rejected:
                        raise SystemExit(f"{app} on {name}: {result.rejected} non-2xx answers")
                    log(f"route {app} {name}: {result}")
                    values[f"route-rps-{app}-{name}"].append(result.requests_per_s)
                    values[f"route-p99-{app}-{name}"].append(result.p99_ms)
            for worker_class in WORKER_CLASSES:
                for processes in (1, 2):
                    for side in sorted(("package", "bare"), reverse=flip):
                        drained = drain(
                            side, worker_class, processes, workers_db, jobs[worker_class]
                        )
                        log(f"worker {side} {worker_class} x{processes}: {drained}")
                        key = f"{side}-{worker_class}-{processes}"
                        values[f"jobs-{key}"].append(drained.jobs_per_s)
                        values[f"pss-busy-{key}"].append(drained.peak_pss_kib / 1024)
            for side in sorted(("package", "bare"), reverse=flip):
                values[f"pss-idle-{side}"].append(idle_pss(side, workers_db) / 1024)
                log(f"idle PSS {side}: {values[f'pss-idle-{side}'][-1]:.1f} MiB")
    rows = build_rows(values)
    text = table(rows, args.rounds, COMMAND)
    print(text)
    if not args.no_write:
        write_results(text)
        log("results written to docs/performance.md")
    log(f"done in {time.monotonic() - started:.0f} s")
    return 0


def build_rows(values: dict[str, list[float]]) -> list[Row]:
    rows = []
    for name in ("sqlite", "postgres"):
        rows.append(
            Row(
                f"Route throughput, {name}",
                "req/s",
                values[f"route-rps-package-{name}"],
                values[f"route-rps-baseline-{name}"],
                ">= 0.7x",
                limit=0.7,
            )
        )
        rows.append(
            Row(
                f"Route p99 latency, {name}",
                "ms",
                values[f"route-p99-package-{name}"],
                values[f"route-p99-baseline-{name}"],
                "<= 1.5x",
                higher_is_better=False,
                limit=1.5,
            )
        )
    for worker_class in WORKER_CLASSES:
        for processes in (1, 2):
            rows.append(
                Row(
                    f"Worker {worker_class} ({WORKER_CLASSES[worker_class]}) x{processes}"
                    " vs no-op jobs",
                    "jobs/s",
                    values[f"jobs-package-{worker_class}-{processes}"],
                    values[f"jobs-bare-{worker_class}-{processes}"],
                    ">= 0.5x",
                    limit=0.5,
                )
            )
    for worker_class in WORKER_CLASSES:
        for side, label in (("package", "regenerations"), ("bare", "bare RQ no-op jobs")):
            rows.append(
                Row(
                    f"Scaling, {worker_class}, {label}: 2 processes (left) vs 1 (right)",
                    "jobs/s",
                    values[f"jobs-{side}-{worker_class}-2"],
                    values[f"jobs-{side}-{worker_class}-1"],
                    ">= 1.8x" if side == "package" else "",
                    limit=1.8 if side == "package" else None,
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
                f"Busy worker PSS, {worker_class} x1 (peak, with work horse)",
                "MiB",
                values[f"pss-busy-package-{worker_class}-1"],
                values[f"pss-busy-bare-{worker_class}-1"],
            )
        )
    return rows


if __name__ == "__main__":
    sys.exit(main())
