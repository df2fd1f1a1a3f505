"""``flask plan-regen ...`` commands for operators."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from redis import Redis
from werkzeug.utils import import_string

from . import admin, metrics, queue
from .config import rq_queue_names
from .errors import ApiError
from .jobs import set_worker_app
from .logs import install_json_logging
from .models import FailureClass, metadata
from .openapi import build_document
from .recovery import sweep
from .state import get_state

plan_regen_cli = AppGroup("plan-regen", help="Plan regeneration: tables, workers, queues.")


@plan_regen_cli.command("init-db")
def init_db() -> None:
    """Create the package's tables (those that do not exist yet)."""
    metadata.create_all(get_state().db.engine)
    click.echo(f"Created plan regeneration tables: {', '.join(sorted(metadata.tables))}")


@plan_regen_cli.command("worker")
@click.argument("queues", nargs=-1)
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
@click.option(
    "--with-scheduler/--without-scheduler",
    default=True,
    show_default=True,
    help="Run RQ's scheduler, needed for delayed retries.",
)
@click.option(
    "--worker-class",
    default="flask_plan_regen.recovery.RecoveringWorker",
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
    set_worker_app(app)
    state = get_state(app)
    # The work horses are forked from this process: warm it up, hold no pooled connections.
    state.prepare_for_fork()
    # No socket timeout here: RQ blocks on Redis while it waits for jobs.
    connection = Redis.from_url(app.config["PLAN_REGEN_REDIS_URL"])
    names = list(queues) or rq_queue_names(app.config)
    worker_cls = import_string(worker_class)
    if log_format == "json":
        install_json_logging(logging_level.upper())
    else:
        logging.basicConfig(level=logging_level.upper())
    if metrics_port is not None:
        serve_worker_metrics(app, worker_cls, metrics_host, metrics_port)
    click.echo(f"{_workers_label(workers)} on queues {', '.join(names)} (in priority order)")
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


def _workers_label(workers: int) -> str:
    return "Worker" if workers == 1 else f"{workers} workers"


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
    """Recover regenerations stuck in processing or left pending without a job."""
    counts = sweep(get_state())
    click.echo(f"Released {counts['released']} lost attempts; requeued {counts['requeued']} jobs.")


@plan_regen_cli.command("rq-command")
def rq_command() -> None:
    """Print the equivalent plain ``rq worker`` command line for this app.

    The Redis password is masked (``***``): put it back, or give the URL in ``RQ_REDIS_URL``.
    """
    app_path = os.environ.get("FLASK_APP")
    prefix = f"FLASK_APP={app_path} " if app_path else ""
    click.echo(
        f"{prefix}rq worker --with-scheduler -w flask_plan_regen.recovery.RecoveringWorker "
        "-S rq.serializers.JSONSerializer "
        f"--url {masked_url(current_app.config['PLAN_REGEN_REDIS_URL'])} "
        f"{' '.join(rq_queue_names(current_app.config))}"
    )


def masked_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, safe to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


@plan_regen_cli.command("openapi")
@click.option("--indent", type=int, default=2, show_default=True)
def openapi(indent: int) -> None:
    """Print the OpenAPI 3 document of the HTTP API."""
    click.echo(json.dumps(build_document(current_app), indent=indent, sort_keys=True))


@plan_regen_cli.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def info(as_json: bool) -> None:
    """Queues, workers, regenerations by status and rows stuck in processing."""
    data = admin.collect_info(get_state())
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
    queued = skipped = 0
    try:
        with click.progressbar(
            admin.requeue(state, failed), length=len(failed), label="Requeueing", file=sys.stderr
        ) as outcomes:
            for outcome in outcomes:
                queued += outcome.new_id is not None
                skipped += outcome.skipped is not None
    except ApiError as error:  # Redis unreachable: the rest is untouched, run it again later
        raise click.ClickException(
            f"{error.message} Requeued {queued}, skipped {skipped} before stopping; "
            "run the command again once Redis is back."
        ) from error
    click.echo(f"requeued {queued}, skipped {skipped} (plan already has an active regeneration)")
