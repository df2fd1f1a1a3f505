"""``flask plan-regen ...`` commands for operators."""

from __future__ import annotations

import json
import logging

import click
from flask import current_app
from flask.cli import AppGroup
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer
from werkzeug.utils import import_string

from .extension import get_state
from .jobs import set_worker_app
from .models import metadata
from .openapi import build_document
from .recovery import sweep

plan_regen_cli = AppGroup("plan-regen", help="Plan regeneration: tables, workers, queues.")


def queue_names() -> list[str]:
    """Queue names in priority order, highest first."""
    return [str(name) for name, _ in current_app.config["PLAN_REGEN_QUEUES"]]


@plan_regen_cli.command("init-db")
def init_db() -> None:
    """Create the package's tables (those that do not exist yet)."""
    get_state().extension.create_all()
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
    help="RQ worker class (import path). The default recovers attempts of killed work "
    "horses and sweeps stuck rows at every maintenance pass.",
)
@click.option("--name", default=None, help="Worker name (default: RQ's).")
@click.option("--max-jobs", type=int, default=None, help="Exit after this many jobs.")
@click.option("--logging-level", default="INFO", show_default=True)
def worker(
    queues: tuple[str, ...],
    burst: bool,
    with_scheduler: bool,
    worker_class: str,
    name: str | None,
    max_jobs: int | None,
    logging_level: str,
) -> None:
    """Run an RQ worker on the regeneration queues, highest priority first.

    The app is loaded once here, before RQ forks a work horse per job, so a
    job does not pay for importing and creating the app again.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    set_worker_app(app)
    state = get_state(app)
    # The work horses are forked from this process: hold no pooled connections.
    for engine in state.db.engines.values():
        engine.dispose()
    # No socket timeout here: RQ blocks on Redis while it waits for jobs.
    connection = Redis.from_url(app.config["PLAN_REGEN_REDIS_URL"])
    names = list(queues) or queue_names()
    worker_cls = import_string(worker_class)
    rq_worker = worker_cls(
        [Queue(n, connection=connection, serializer=JSONSerializer) for n in names],
        connection=connection,
        serializer=JSONSerializer,
        name=name,
    )
    logging.basicConfig(level=logging_level.upper())
    click.echo(f"Worker {rq_worker.name} on queues {', '.join(names)} (in priority order)")
    rq_worker.work(
        burst=burst,
        with_scheduler=with_scheduler,
        max_jobs=max_jobs,
        logging_level=logging_level.upper(),
    )


@plan_regen_cli.command("sweep")
def sweep_command() -> None:
    """Recover regenerations stuck in processing or left pending without a job."""
    counts = sweep(get_state())
    click.echo(f"Released {counts['released']} lost attempts; requeued {counts['requeued']} jobs.")


@plan_regen_cli.command("rq-command")
def rq_command() -> None:
    """Print the equivalent plain ``rq worker`` command line for this app."""
    click.echo(
        "rq worker --with-scheduler -w flask_plan_regen.recovery.RecoveringWorker "
        "-S rq.serializers.JSONSerializer "
        f"--url {current_app.config['PLAN_REGEN_REDIS_URL']} {' '.join(queue_names())}"
    )


@plan_regen_cli.command("openapi")
@click.option("--indent", type=int, default=2, show_default=True)
def openapi(indent: int) -> None:
    """Print the OpenAPI 3 document of the HTTP API."""
    click.echo(json.dumps(build_document(current_app), indent=indent, sort_keys=True))
