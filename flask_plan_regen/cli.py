"""``flask plan-regen ...`` commands for operators."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import sys
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import ScriptInfo
from werkzeug.utils import import_string

from . import admin, metrics, queue
from .cli_errors import OperatorGroup
from .config import rq_queue_names
from .cost_report import FORMATS, GROUPINGS, cost_report, render
from .errors import ApiError
from .jobs import set_worker_app
from .logs import install_json_logging
from .models import FailureClass
from .openapi import build_document
from .quota import current_period
from .recovery import sweep
from .redact import masked_url
from .redis_client import (
    PUBLIC_URL_OPTIONS,
    connect,
    is_in_process,
    is_sentinel,
    warn_unless_noeviction,
)
from .state import get_state
from .store import create_tables
from .threaded_worker import ThreadedWorker

DEFAULT_WORKER = "flask_plan_regen.recovery.RecoveringWorker"
THREADED_WORKER = "flask_plan_regen.threaded_worker.ThreadedWorker"

_MONTH = re.compile(r"\d{4}-\d{2}")

plan_regen_cli = OperatorGroup("plan-regen", help="Plan regeneration: tables, workers, queues.")


@plan_regen_cli.command("init-db")
def init_db() -> None:
    """Create the package's tables (those that do not exist yet).

    With a custom plan store, the built-in store's plan tables are left out.
    """
    state = get_state()
    names = create_tables(state.db.engine, state.store)
    click.echo(f"Created plan regeneration tables: {', '.join(names)}")


@plan_regen_cli.command("worker")
@click.argument("queues", nargs=-1)
@click.option(
    "--burst",
    is_flag=True,
    help="Exit once the queues are empty and the retries this worker scheduled have run.",
)
@click.option(
    "--with-scheduler/--without-scheduler",
    default=True,
    show_default=True,
    help="Run RQ's scheduler, needed for delayed retries.",
)
@click.option(
    "--worker-class",
    default=DEFAULT_WORKER,
    show_default=True,
    help="RQ worker class (import path). The default outlives Redis outages and recovers "
    "the attempts of killed workers (docs/operations.md).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run this many workers from one process, forked after the app is loaded "
    "(docs/operations.md). A worker that exits is replaced, except with --burst.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Run up to N jobs at once in threads of each worker process "
    f"({THREADED_WORKER}; docs/operations.md, 'Threads or processes').",
)
@click.option("--name", default=None, help="Worker name (default: RQ's); with --workers, a prefix.")
@click.option("--max-jobs", type=int, default=None, help="Exit after this many jobs.")
@click.option("--logging-level", default="INFO", show_default=True)
@click.option("--max-idle-time", type=int, default=None, help="Exit after idling this many s.")
@click.option(
    "--dequeue-strategy",
    type=click.Choice(["default", "round_robin", "random"]),
    default="default",
    show_default=True,
    help="'default' drains higher-priority queues first; the others share out work.",
)
@click.option(
    "--maintenance-interval",
    type=int,
    default=None,
    help="Seconds between RQ's maintenance passes (abandoned jobs are found in them).",
)
@click.option("--worker-ttl", type=int, default=None, help="Seconds before a silent worker dies.")
@click.option("--job-monitoring-interval", type=int, default=None, help="Work horse heartbeat (s).")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object a line, with generation_id on a job's lines.",
)
@click.option(
    "--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port."
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
def worker(
    queues: tuple[str, ...],
    burst: bool,
    with_scheduler: bool,
    worker_class: str,
    workers: int,
    threads: int | None,
    name: str | None,
    max_jobs: int | None,
    logging_level: str,
    max_idle_time: int | None,
    dequeue_strategy: str,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
    **rq_options: int | None,
) -> None:
    """Run an RQ worker on the regeneration queues, highest priority first.

    The app is loaded once here, before RQ forks a work horse per job (and,
    with ``--workers``, before the workers are forked), so neither a job nor a
    worker pays for importing and creating the app again.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    refuse_in_process_redis(app)
    set_worker_app(app)
    state = get_state(app)
    # The work horses are forked from this process: warm it up, hold no pooled connections.
    state.prepare_for_fork()
    # No socket timeout here: RQ blocks on Redis while it waits for jobs.
    connection = connect(app.config["PLAN_REGEN_REDIS_URL"])
    warn_unless_noeviction(connection)
    names = list(queues) or rq_queue_names(app.config)
    worker_cls = import_string(
        THREADED_WORKER if threads and worker_class == DEFAULT_WORKER else worker_class
    )
    if threads is not None:
        if not issubclass(worker_cls, ThreadedWorker):
            raise click.UsageError(f"--threads needs {THREADED_WORKER} (or a subclass).")
        rq_options["threads"] = threads
    if log_format == "json":
        install_json_logging(logging_level.upper())
    else:
        logging.basicConfig(level=logging_level.upper())
    if metrics_port is not None:
        serve_worker_metrics(app, worker_cls, metrics_host, metrics_port)
    click.echo(
        f"{_workers_label(workers, threads)} on queues {', '.join(names)} (in priority order)"
    )
    options: dict[str, Any] = {
        "name": name,
        # RQ's own defaults for the options not given.
        "rq_options": {key: value for key, value in rq_options.items() if value is not None},
        "work_options": {
            "burst": burst,
            "with_scheduler": with_scheduler,
            "max_jobs": max_jobs,
            "logging_level": logging_level.upper(),
            "max_idle_time": max_idle_time,
            "dequeue_strategy": dequeue_strategy,
        },
    }
    if workers == 1:
        queue.start_worker(worker_cls, connection, names, **options)
        return
    # Each worker writes its metrics under its own pid, as a worker process of its own would.
    in_each_worker = metrics.count_as_worker if metrics_port is not None else None
    queue.run_worker_pool(
        workers, worker_cls, connection, names, in_each_worker=in_each_worker, **options
    )


def refuse_in_process_redis(app: Flask) -> None:
    """A worker is another process: it cannot reach the web process's in-process Redis."""
    if is_in_process(app.config["PLAN_REGEN_REDIS_URL"]):
        raise click.UsageError(
            "PLAN_REGEN_REDIS_URL is 'memory://', a Redis inside each process: a worker "
            "would never see the web process's jobs. Use a Redis server, or run jobs where "
            "they are queued (PLAN_REGEN_EAGER, flask_plan_regen.testing.run_pending_jobs)."
        )


def _workers_label(workers: int, threads: int | None) -> str:
    label = "Worker" if workers == 1 else f"{workers} workers"
    return f"{label} ({threads} threads each)" if threads else label


def serve_worker_metrics(app: Flask, worker_cls: type, host: str, port: int) -> None:
    if not metrics.enabled(app):
        raise click.UsageError("--metrics-port needs PLAN_REGEN_METRICS = True.")
    # A forking worker records in its work horses, which die after each job.
    if queue.is_forking(worker_cls) and not os.environ.get(metrics.MULTIPROC_ENV):
        raise click.UsageError(
            f"--metrics-port with a forking worker needs {metrics.MULTIPROC_ENV} "
            "(an empty directory for prometheus_client's multiprocess mode)."
        )
    metrics.serve_for_worker(host, port)


@plan_regen_cli.command("sweep")
def sweep_command() -> None:
    """Recover regenerations stuck in processing or left pending without a job.

    With ``PLAN_REGEN_EAGER`` (no workers), then run the queued jobs here: those
    the sweep queued again, and any a web process queued but died before running.
    """
    state = get_state()
    # Without Redis no job looks lost or alive: say so, rather than "requeued 0".
    state.redis.ping()
    counts = sweep(state)
    click.echo(
        f"Released {counts['released']} lost attempts (queued again where attempts were left); "
        f"requeued {counts['requeued']} lost jobs."
    )
    if current_app.config["PLAN_REGEN_EAGER"]:
        ran = queue.run_queued(state.redis, rq_queue_names(current_app.config))
        click.echo(f"Ran {ran} queued jobs here (PLAN_REGEN_EAGER: no worker runs them).")


@plan_regen_cli.command("rq-command")
def rq_command() -> None:
    """Print the equivalent plain ``rq worker`` command line for this app.

    Credentials in the Redis URL (password, query values) are masked (``***``):
    put them back, or give the URL in ``RQ_REDIS_URL``. Paths and switches
    (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, timeouts) are printed as they are.
    """
    refuse_in_process_redis(current_app)
    url = current_app.config["PLAN_REGEN_REDIS_URL"]
    if is_sentinel(url):
        raise click.UsageError(
            "PLAN_REGEN_REDIS_URL names Redis Sentinels, which `rq worker --url` cannot "
            "follow: run `flask plan-regen worker` (docs/operations.md, 'Redis Sentinel')."
        )
    app_path = app_import_path()
    prefix = f"FLASK_APP={app_path} " if app_path else ""
    click.echo(
        f"{prefix}rq worker --with-scheduler -w flask_plan_regen.recovery.RecoveringWorker "
        "-S rq.serializers.JSONSerializer "
        f"--url {shlex.quote(masked_url(url, keep=PUBLIC_URL_OPTIONS))} "
        f"{' '.join(rq_queue_names(current_app.config))}"
    )


def app_import_path() -> str | None:
    """How this command found the app: ``flask --app X`` or ``FLASK_APP``, else ``None``."""
    info = click.get_current_context().find_object(ScriptInfo)
    given = info.app_import_path if info is not None else None
    return given or os.environ.get("FLASK_APP")


@plan_regen_cli.command("openapi")
@click.option("--indent", type=int, default=2, show_default=True)
def openapi(indent: int) -> None:
    """Print the OpenAPI 3 document of the HTTP API."""
    click.echo(json.dumps(build_document(current_app), indent=indent, sort_keys=True))


@plan_regen_cli.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def info(as_json: bool) -> None:
    """Queues, workers, regenerations by status and rows stuck in processing."""
    data = admin.collect_info(get_state())  # Redis or the database down: cli_errors.py
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"namespace: {data['namespace']}")
    click.echo(f"{'queue':<24}{'queued':>8}{'running':>9}{'failed':>8}{'scheduled':>11}")
    for q in data["queues"]:
        click.echo(
            f"{q['queue']:<24}{q['queued']:>8}{q['started']:>9}{q['failed']:>8}{q['scheduled']:>11}"
        )
    click.echo(f"workers: {len(data['workers'])}")
    for w in data["workers"]:
        click.echo(f"  {w['name']} ({w['state']})")
    counts = data["regenerations"]
    click.echo(
        "regenerations: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")
    )
    click.echo(f"stuck in processing past the job timeout: {len(data['stuck'])}")
    for row in data["stuck"]:
        click.echo(f"  {row['generationId']} (plan {row['planId']}, since {row['startedAt']})")
    for entry in data["providers"]:
        limits = ", ".join(f"{k} {v}" for k, v in entry["limits"].items() if v) or "no limits"
        use, breaker = entry["use"], entry["breaker"]
        click.echo(
            f"provider {entry['name']}: {limits}; in the window {use['requestsInWindow']} "
            f"requests, {use['tokensInWindow']} tokens; {use['callsInFlight']} in flight; "
            f"cooldown {use['cooldownSeconds']} s; breaker {breaker['state']}; "
            f"fallbacks taken {entry['fallbacksTaken']}"
        )


@plan_regen_cli.command("costs")
@click.option("--month", default=None, help="YYYY-MM (UTC); this month by default.")
@click.option("--by", type=click.Choice(GROUPINGS), default="user", show_default=True)
@click.option("--top", type=click.IntRange(min=1), default=None, help="Only the N costliest.")
@click.option("--format", "output", type=click.Choice(FORMATS), default="table", show_default=True)
def costs(month: str | None, by: str, top: int | None, output: str) -> None:
    """What provider calls cost in a month: attempts, tokens and USD (exact), by user
    (operator re-runs as '(operator)'), model, tier or day. Unknown costs are counted
    apart, never as 0."""
    period = month or current_period()
    # Year 9999's December ends in year 10000, which no datetime holds.
    if not _MONTH.fullmatch(period) or not 1 <= int(period[5:]) <= 12 or period >= "9999-12":
        raise click.BadParameter(f"{period!r} is not a month (YYYY-MM)", param_hint="--month")
    rows = cost_report(get_state(), period, by, top)
    if not rows and output == "table":
        click.echo(f"No provider calls in {period}.")
        return
    click.echo(render(rows, output, by))


@plan_regen_cli.command("requeue-failed")
@click.option(
    "--class",
    "failure_class",
    type=click.Choice([str(member) for member in FailureClass]),
    default=None,
    help="Only regenerations that failed with this class.",
)
@click.option("--dry-run", is_flag=True, help="List what would be requeued; change nothing.")
def requeue_failed(failure_class: str | None, dry_run: bool) -> None:
    """Queue again each plan whose latest regeneration failed (as a new regeneration)."""
    state = get_state()
    failed = admin.requeue_candidates(state, FailureClass(failure_class) if failure_class else None)
    if dry_run:
        for row in failed:
            click.echo(f"{row.id} plan {row.plan_id} ({row.failure_class})")
        click.echo(f"{len(failed)} would be requeued")
        return
    state.redis.ping()  # unreachable: one line naming it (cli_errors.py), nothing touched
    queued = skipped = 0
    try:
        with click.progressbar(
            admin.requeue(state, failed), length=len(failed), label="Requeueing", file=sys.stderr
        ) as outcomes:
            for outcome in outcomes:
                queued += outcome.new_id is not None
                skipped += outcome.skipped is not None
    except ApiError as error:  # Redis unreachable, or spending paused: the rest is untouched
        when = "once Redis is back" if error.code == "QUEUE_UNAVAILABLE" else "later"
        raise click.ClickException(
            f"{error.message} Requeued {queued}, skipped {skipped} before stopping; "
            f"run the command again {when}."
        ) from error
    click.echo(f"requeued {queued}, skipped {skipped} (plan already has an active regeneration)")
