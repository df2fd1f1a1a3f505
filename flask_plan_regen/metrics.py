"""Optional Prometheus metrics: ``pip install 'flask-plan-regen[metrics]'``, ``PLAN_REGEN_METRICS``.

Web side: responses by endpoint and status, enqueues by queue; scraped at
``GET <prefix>/metrics``. Worker side: job outcomes by class, provider latency,
queue wait; ``flask plan-regen worker --metrics-port N`` serves them.

Processes: several gunicorn workers, or RQ's forked work horses, each count in
their own memory, so set ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's
multiprocess mode) and every scrape adds up the files there. A work horse
writes under its worker's identity (see :func:`count_as_worker`), so the
directory holds a file per worker, not one per job.

The metric objects are created on first use, in the process that records:
a forked work horse therefore starts from the values on disk, not from a
stale copy in its parent's memory.
"""

from __future__ import annotations

import functools
import os
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, current_app, request
from sqlalchemy import select

from .models import GenerationAttempt, Regeneration
from .state import RegenState

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
WAIT_BUCKETS = (0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)


def enabled(app: Flask | None = None) -> bool:
    return bool((app or current_app).config["PLAN_REGEN_METRICS"])


@functools.cache
def _metrics() -> dict[str, Any]:
    from prometheus_client import Counter, Histogram

    return {
        "responses": Counter(
            "plan_regen_http_responses",
            "Answers of the plan regeneration routes.",
            ["endpoint", "status"],
        ),
        "enqueued": Counter("plan_regen_enqueued", "Jobs put on a queue.", ["queue"]),
        "outcomes": Counter(
            "plan_regen_job_outcomes",
            "Attempts run by workers, by outcome and failure class ('' when none).",
            ["outcome", "failure_class"],
        ),
        "latency": Histogram(
            "plan_regen_provider_latency_seconds",
            "Duration of provider calls, parsing included.",
            ["provider"],
            buckets=LATENCY_BUCKETS,
        ),
        "tokens": Counter(
            "plan_regen_tokens",
            "Tokens providers reported, by model and direction (input, output, cached).",
            ["model", "direction"],
        ),
        "cost": Counter(
            "plan_regen_cost_usd", "What provider calls cost (USD, when known).", ["model"]
        ),
        "provider_quota": Counter(
            "plan_regen_provider_quota_exhausted",
            "Calls answered 'out of credit' (insufficient_quota): an operator must act.",
        ),
        "budget_paused": Counter(
            "plan_regen_budget_paused",
            "Times the global monthly budget stopped a submit or a provider call.",
            ["where"],
        ),
        "wait": Histogram(
            "plan_regen_queue_wait_seconds",
            "Time from a regeneration's creation to its first attempt.",
            ["queue"],
            buckets=WAIT_BUCKETS,
        ),
    }


def count_response(response: Response) -> Response:
    """``after_request`` hook of the blueprint."""
    if enabled():
        endpoint = (request.endpoint or "unknown").removeprefix("plan_regen.")
        _metrics()["responses"].labels(endpoint, str(response.status_code)).inc()
    return response


def count_enqueue(queue: str) -> None:
    if enabled():
        _metrics()["enqueued"].labels(queue).inc()


def observe_attempt(state: RegenState, generation_id: str) -> None:
    """Record the attempt a job just made (read back from its rows)."""
    if not enabled():
        return
    session = state.db.session
    regeneration = session.get(Regeneration, generation_id)
    if regeneration is None or regeneration.attempts == 0:
        return
    attempt = session.scalar(
        select(GenerationAttempt).where(
            GenerationAttempt.regeneration_id == generation_id,
            GenerationAttempt.number == regeneration.attempts,
        )
    )
    metrics = _metrics()
    if attempt is not None:
        metrics["outcomes"].labels(attempt.outcome, attempt.failure_class or "").inc()
        metrics["latency"].labels(attempt.provider).observe(attempt.duration_ms / 1000)
        _count_spend(metrics, attempt)
    if regeneration.attempts == 1 and regeneration.started_at is not None:
        wait = _utc(regeneration.started_at) - _utc(regeneration.created_at)
        metrics["wait"].labels(regeneration.queue).observe(max(wait.total_seconds(), 0.0))


def _count_spend(metrics: dict[str, Any], attempt: GenerationAttempt) -> None:
    model = attempt.model or ""
    cached = attempt.cached_tokens or 0
    for direction, tokens in (
        ("input", (attempt.prompt_tokens or 0) - cached),
        ("cached", cached),
        ("output", attempt.completion_tokens or 0),
    ):
        if tokens > 0:
            metrics["tokens"].labels(model, direction).inc(tokens)
    if attempt.cost_usd is not None:
        metrics["cost"].labels(model).inc(float(attempt.cost_usd))


def count_provider_quota() -> None:
    if enabled():
        _metrics()["provider_quota"].inc()


def count_budget_paused(where: str) -> None:
    """``where``: "submit" (answered 503) or "worker" (a call put off)."""
    if enabled():
        _metrics()["budget_paused"].labels(where).inc()


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def registry() -> Any:
    """What a scrape reads: the multiprocess files if configured, else this process."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if not os.environ.get(MULTIPROC_ENV):
        return REGISTRY
    collected = CollectorRegistry()
    MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
    return collected


def exposition() -> Response:
    """The metrics in Prometheus' text format."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)


def count_as_worker() -> None:
    """Make this process and the work horses it forks write one file, under its pid.

    Safe because RQ runs one work horse at a time per worker, and horses
    create their metric objects afresh (see the module docstring).
    """
    if not os.environ.get(MULTIPROC_ENV):
        return
    from prometheus_client import values

    identity = f"worker{os.getpid()}"
    values.ValueClass = values.MultiProcessValue(  # type: ignore[no-untyped-call]
        process_identifier=lambda: identity
    )


def serve_for_worker(host: str, port: int) -> None:
    """Serve the metrics over HTTP from a thread of the worker process."""
    from prometheus_client import start_http_server

    count_as_worker()
    start_http_server(port, addr=host, registry=registry())


@functools.cache
def _fleet_metrics() -> dict[str, Any]:
    from prometheus_client import Counter

    return {
        "breaker": Counter(
            "plan_regen_breaker_transitions",
            "Circuit breaker state changes, by provider entry and the state entered.",
            ["provider", "state"],
        ),
        "fallbacks": Counter(
            "plan_regen_provider_fallbacks",
            "Calls sent to a later provider entry because an earlier one could not take them.",
            ["provider"],
        ),
        "waits": Counter(
            "plan_regen_capacity_waits",
            "Jobs put back to wait for provider capacity (no call, no attempt), by reason.",
            ["provider", "reason"],
        ),
    }


def count_breaker_transition(provider: str, state: str) -> None:
    if enabled():
        _fleet_metrics()["breaker"].labels(provider, state).inc()


def count_fallback(provider: str) -> None:
    if enabled():
        _fleet_metrics()["fallbacks"].labels(provider).inc()


def count_capacity_wait(provider: str, reason: str) -> None:
    if enabled():
        _fleet_metrics()["waits"].labels(provider, reason).inc()
