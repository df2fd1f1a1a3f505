"""Configuration keys, their defaults and the checks made at ``init_app``.

Every key starts with ``PLAN_REGEN_``; docs/configuration.md lists them all.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Mapping, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from limits import parse

from .errors import ConfigurationError
from .redact import mask_urls

PREFIX = "PLAN_REGEN_"

DEFAULT_PRIORITY_PHRASES: tuple[str, ...] = (
    "interview prep",
    "ai engineering",
    "machine learning",
    "data structures",
)

DEFAULTS: dict[str, Any] = {
    "PLAN_REGEN_ENABLED": True,
    # "memory://": an in-process Redis per app (fakeredis), for tests (docs/testing.md).
    "PLAN_REGEN_REDIS_URL": "redis://127.0.0.1:6379/0",
    "PLAN_REGEN_REDIS_TIMEOUT": 1.5,
    # Prefixes every queue name ("plan_regen_high") and Redis key ("plan_regen:...") of
    # the package, so that several apps can share one Redis. Queue names hold no "_", so
    # "<namespace>_<name>" splits one way only: two namespaces never share a queue.
    "PLAN_REGEN_NAMESPACE": "plan_regen",
    # (queue name, lowest priority it takes), highest priority first; the RQ queue is
    # named "<namespace>_<name>".
    "PLAN_REGEN_QUEUES": [
        ["high", 10],
        ["default", 5],
        ["low", 0],
    ],
    "PLAN_REGEN_TIER_PRIORITY": {"free": 1, "starter": 5, "pro": 10},
    "PLAN_REGEN_PRIORITY_PHRASES": list(DEFAULT_PRIORITY_PHRASES),
    "PLAN_REGEN_PRIORITY_BOOST": 3,
    "PLAN_REGEN_DEFAULT_TIER": "free",
    "PLAN_REGEN_AUTH_HANDLER": None,
    "PLAN_REGEN_PLAN_LOADER": None,
    "PLAN_REGEN_TIER_RESOLVER": None,
    # The operator console (flask_plan_regen.console): () -> operator identity or None.
    "PLAN_REGEN_OPERATOR_HANDLER": None,
    "PLAN_REGEN_PROVIDER": None,
    "PLAN_REGEN_STORE": None,
    "PLAN_REGEN_MAX_BODY_BYTES": 64 * 1024,
    # None: derived from the provider timeout (see job_timeout()).
    "PLAN_REGEN_JOB_TIMEOUT": None,
    # Seconds RQ keeps a finished job (and its result), a failed one: the database is the
    # record, so Redis keeps next to nothing per regeneration (docs/operations.md).
    "PLAN_REGEN_RESULT_TTL": 0,
    "PLAN_REGEN_FAILURE_TTL": 3600,
    # PostgreSQL behind PgBouncer in transaction mode: psycopg 3 prepares no statements.
    "PLAN_REGEN_PGBOUNCER": False,
    # Recovery (docs/operations.md): a running attempt renews its lease in Redis every
    # third of the TTL; workers sweep for lapsed leases and lost jobs every interval.
    "PLAN_REGEN_LEASE_TTL": 15,
    "PLAN_REGEN_SWEEP_INTERVAL": 10,
    # Threaded workers (flask_plan_regen.threaded_worker): jobs run at once per process
    # (`rq worker -w`; `flask plan-regen worker --threads N` overrides it), and the
    # seconds a first SIGTERM gives running jobs before they go to other workers.
    "PLAN_REGEN_WORKER_THREADS": 10,
    "PLAN_REGEN_SHUTDOWN_GRACE": 25,
    "PLAN_REGEN_PAGE_SIZE": 20,
    "PLAN_REGEN_BUILTIN_DELAY": 0.0,
    "PLAN_REGEN_BUILTIN_FAILURE": None,
    # Rate limit and monthly quota (docs/billing.md).
    "PLAN_REGEN_RATE_LIMIT": "10/hour",
    "PLAN_REGEN_TIER_RATE_LIMITS": {},
    "PLAN_REGEN_MONTHLY_QUOTAS": {"free": 5, "starter": 10, "pro": 50},
    # Spend (docs/billing.md, "What a regeneration costs"): USD per million tokens per model,
    # and USD budgets per tier and for the whole app per calendar month (decimal strings).
    "PLAN_REGEN_PRICES": {},
    "PLAN_REGEN_MONTHLY_BUDGETS": {},
    "PLAN_REGEN_GLOBAL_MONTHLY_BUDGET": "unlimited",
    # Seconds a job waits before it checks again whether the global budget pause is over.
    "PLAN_REGEN_BUDGET_RECHECK": 30,
    # Tiers from Stripe (docs/billing.md); off while PLAN_REGEN_STRIPE_API_KEY is None.
    "PLAN_REGEN_STRIPE_API_KEY": None,
    "PLAN_REGEN_STRIPE_API_BASE": None,
    "PLAN_REGEN_STRIPE_CUSTOMER_LOADER": None,
    "PLAN_REGEN_STRIPE_MAX_NETWORK_RETRIES": 1,
    "PLAN_REGEN_STRIPE_TIMEOUT": 3.0,
    "PLAN_REGEN_STRIPE_PAST_DUE_KEEPS_TIER": True,
    "PLAN_REGEN_TIER_CACHE_TTL": 300,
    "PLAN_REGEN_STRIPE_WEBHOOK_SECRET": None,
    "PLAN_REGEN_STRIPE_WEBHOOK_PATH": "/api/v1/billing/stripe/webhook",
    # The OpenAI-compatible provider (flask_plan_regen.openai_provider).
    "PLAN_REGEN_PROVIDER_BASE_URL": None,
    "PLAN_REGEN_PROVIDER_API_KEY": None,
    "PLAN_REGEN_PROVIDER_MODEL": "gpt-4o-mini",
    "PLAN_REGEN_PROVIDER_TIER_MODELS": {},
    "PLAN_REGEN_PROVIDER_TIMEOUT": 120.0,
    # Streamed calls (docs/providers.md): the overall limit above is extended once by
    # this when the first module has arrived; a call also fails as "timeout" when its
    # first chunk takes longer than this, or when it is silent this long between chunks.
    "PLAN_REGEN_PROVIDER_TIMEOUT_EXTENSION": 60.0,
    "PLAN_REGEN_PROVIDER_FIRST_TOKEN_TIMEOUT": 60.0,
    "PLAN_REGEN_PROVIDER_IDLE_TIMEOUT": 30.0,
    # Ask servers to stream (falls back to the plain call, per server, when one cannot).
    "PLAN_REGEN_PROVIDER_STREAM": True,
    # "json_schema" (structured outputs) or "json_object" (JSON mode) for servers without it.
    "PLAN_REGEN_PROVIDER_RESPONSE_FORMAT": "json_schema",
    # The output cap of one call, and the request field that carries it.
    "PLAN_REGEN_PROVIDER_MAX_OUTPUT_TOKENS": 8192,
    "PLAN_REGEN_PROVIDER_MAX_OUTPUT_TOKENS_PARAM": "max_completion_tokens",
    # A fleet sharing the provider (docs/providers.md): limits shared by every worker
    # ({"rpm": ..., "tpm": ..., "concurrent": ...} per window), provider entries tried in
    # order, and a circuit breaker per entry (off while its threshold is 0).
    "PLAN_REGEN_PROVIDER_LIMITS": {},
    "PLAN_REGEN_PROVIDER_LIMIT_WINDOW": 60.0,
    "PLAN_REGEN_PROVIDERS": None,
    "PLAN_REGEN_BREAKER_THRESHOLD": 0,
    "PLAN_REGEN_BREAKER_WINDOW": 60.0,
    "PLAN_REGEN_BREAKER_COOLDOWN": 30.0,
    "PLAN_REGEN_PROVIDER_OUTAGE_WAIT": 900.0,
    # Retries: attempts per regeneration, backoff min(cap, base * 2^(n-1)) +-25 %.
    "PLAN_REGEN_MAX_ATTEMPTS": 3,
    "PLAN_REGEN_RETRY_BACKOFF_BASE": 2.0,
    "PLAN_REGEN_RETRY_BACKOFF_CAP": 300.0,
    "PLAN_REGEN_IDEMPOTENCY_TTL": 24 * 3600,
    "PLAN_REGEN_IDEMPOTENCY_WAIT": 5.0,
    "PLAN_REGEN_METRICS": False,
    # Event streams (GET .../events, docs/http-api.md): a comment line after this many idle
    # seconds, a re-read of the row after this many seconds without a pub/sub message, and
    # at most this many open streams per process (503 beyond; None: derived, see
    # stream_limits.py), per user (429 beyond) and seconds per stream (then the client
    # resumes with Last-Event-ID).
    "PLAN_REGEN_STREAM_KEEPALIVE": 15.0,
    "PLAN_REGEN_STREAM_RECHECK": 5.0,
    "PLAN_REGEN_STREAM_MAX_OPEN": None,
    "PLAN_REGEN_STREAM_MAX_PER_USER": 3,
    "PLAN_REGEN_STREAM_MAX_LIFE": 300.0,
    # Run each job in the process that queued it, right after the commit (tests).
    "PLAN_REGEN_EAGER": False,
    # "memory://" and PLAN_REGEN_EAGER outside TESTING: only for a host that runs exactly
    # one process and says so here (docs/testing.md).
    "PLAN_REGEN_ALLOW_IN_PROCESS": False,
}

# What RQ's job timeout adds to the provider timeout, so that RQ never kills
# a job whose provider call could still finish (and the job can still save).
JOB_TIMEOUT_MARGIN = 60

HOOK_KEYS = (
    "PLAN_REGEN_AUTH_HANDLER",
    "PLAN_REGEN_PLAN_LOADER",
    "PLAN_REGEN_TIER_RESOLVER",
    "PLAN_REGEN_STRIPE_CUSTOMER_LOADER",
    "PLAN_REGEN_OPERATOR_HANDLER",
)
# An object, a class, a factory or an import string to one (checked by init_app).
PLUGIN_KEYS = ("PLAN_REGEN_PROVIDER", "PLAN_REGEN_STORE")

MEMORY_REDIS_URL = "memory://"
"""``PLAN_REGEN_REDIS_URL`` of an in-process Redis (fakeredis with Lua), for tests."""

RESPONSE_FORMATS = ("json_schema", "json_object")
OUTPUT_CAP_PARAMS = ("max_completion_tokens", "max_tokens")
BUILTIN_FAILURES = ("validation", "provider_error", "rate_limit", "timeout", "invalid_json")

UNLIMITED = "unlimited"
RATE_FORMAT = "a rate such as '10/hour' or '10 per hour'"

# Matched whole (fullmatch): "$" alone would also match before a final newline.
_NAMESPACE = re.compile(r"[A-Za-z0-9_-]{1,60}")
# No "_": it separates the namespace from the name in the RQ queue's name.
_QUEUE_NAME = re.compile(r"[A-Za-z0-9-]{1,60}")


def apply_defaults(config: MutableMapping[str, Any]) -> None:
    for key, value in DEFAULTS.items():
        config.setdefault(key, value)


def validate(config: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigurationError` naming the first wrong key."""
    _check_bool(config, "PLAN_REGEN_ENABLED")
    _check_redis_url(config)
    _check_number(config, "PLAN_REGEN_REDIS_TIMEOUT", minimum=0.1)
    _check(
        isinstance(config["PLAN_REGEN_NAMESPACE"], str)
        and _NAMESPACE.fullmatch(config["PLAN_REGEN_NAMESPACE"]) is not None,
        "PLAN_REGEN_NAMESPACE",
        "1-60 letters, digits, '_' or '-'",
        config,
    )
    _check_queues(config)
    _check_int(config, "PLAN_REGEN_LEASE_TTL", minimum=3, maximum=3600)
    _check_int(config, "PLAN_REGEN_SWEEP_INTERVAL", minimum=1, maximum=3600)
    _check_int(config, "PLAN_REGEN_WORKER_THREADS", minimum=1, maximum=10_000)
    _check_number(config, "PLAN_REGEN_SHUTDOWN_GRACE", minimum=0)
    tiers = config["PLAN_REGEN_TIER_PRIORITY"]
    _check(
        isinstance(tiers, Mapping)
        and bool(tiers)
        and all(isinstance(k, str) and _is_int(v) and v >= 0 for k, v in tiers.items()),
        "PLAN_REGEN_TIER_PRIORITY",
        "a non-empty mapping of tier name to a non-negative integer priority",
        config,
    )
    phrases = config["PLAN_REGEN_PRIORITY_PHRASES"]
    _check(
        isinstance(phrases, list | tuple)
        and all(isinstance(p, str) and p.strip() for p in phrases),
        "PLAN_REGEN_PRIORITY_PHRASES",
        "a list of non-empty strings",
        config,
    )
    _check_int(config, "PLAN_REGEN_PRIORITY_BOOST", minimum=0)
    _check(
        config["PLAN_REGEN_DEFAULT_TIER"] in tiers,
        "PLAN_REGEN_DEFAULT_TIER",
        f"one of the tiers in PLAN_REGEN_TIER_PRIORITY ({', '.join(sorted(tiers))})",
        config,
    )
    for key in HOOK_KEYS:
        value = config[key]
        _check(
            value is None or callable(value) or (isinstance(value, str) and ":" in value),
            key,
            "None, a callable, or an import string 'package.module:name'",
            config,
        )
    for key in PLUGIN_KEYS:
        _check(
            not isinstance(config[key], str) or ":" in config[key],
            key,
            "None, an object, a class, a factory, or an import string 'package.module:name'",
            config,
        )
    _check_int(config, "PLAN_REGEN_MAX_BODY_BYTES", minimum=1)
    _check_number(config, "PLAN_REGEN_PROVIDER_TIMEOUT", minimum=0.1)
    for key in ("PLAN_REGEN_PROVIDER_FIRST_TOKEN_TIMEOUT", "PLAN_REGEN_PROVIDER_IDLE_TIMEOUT"):
        _check_number(config, key, minimum=0.1)
    _check_number(config, "PLAN_REGEN_PROVIDER_TIMEOUT_EXTENSION", minimum=0)
    _check(
        isinstance(config["PLAN_REGEN_PROVIDER_STREAM"], bool),
        "PLAN_REGEN_PROVIDER_STREAM",
        "True or False",
        config,
    )
    # The longest a provider call may run: RQ's job timeout must stay above it.
    provider_timeout = longest_call(config)
    _check(
        config["PLAN_REGEN_JOB_TIMEOUT"] is None
        or (
            _is_int(config["PLAN_REGEN_JOB_TIMEOUT"])
            and config["PLAN_REGEN_JOB_TIMEOUT"] > provider_timeout
        ),
        "PLAN_REGEN_JOB_TIMEOUT",
        "None (derived) or an integer above PLAN_REGEN_PROVIDER_TIMEOUT + "
        f"PLAN_REGEN_PROVIDER_TIMEOUT_EXTENSION ({provider_timeout})",
        config,
    )
    _check_int(config, "PLAN_REGEN_RESULT_TTL", minimum=0)
    _check_int(config, "PLAN_REGEN_FAILURE_TTL", minimum=1)
    _check_bool(config, "PLAN_REGEN_PGBOUNCER")
    _check_int(config, "PLAN_REGEN_PAGE_SIZE", minimum=1, maximum=100)
    _check_number(config, "PLAN_REGEN_BUILTIN_DELAY", minimum=0)
    _check(
        config["PLAN_REGEN_BUILTIN_FAILURE"] in (None, *BUILTIN_FAILURES),
        "PLAN_REGEN_BUILTIN_FAILURE",
        f"None or one of {', '.join(BUILTIN_FAILURES)}",
        config,
    )
    _check_limits(config, tiers)
    _check_stripe(config)
    _check_provider(config)
    _check_fleet(config)
    _check_int(config, "PLAN_REGEN_MAX_ATTEMPTS", minimum=1, maximum=10)
    _check_int(config, "PLAN_REGEN_BUDGET_RECHECK", minimum=1, maximum=3600)
    _check_number(config, "PLAN_REGEN_RETRY_BACKOFF_BASE", minimum=0)
    _check_number(config, "PLAN_REGEN_RETRY_BACKOFF_CAP", minimum=0)
    _check_int(config, "PLAN_REGEN_IDEMPOTENCY_TTL", minimum=1)
    _check_number(config, "PLAN_REGEN_IDEMPOTENCY_WAIT", minimum=0)
    _check_bool(config, "PLAN_REGEN_METRICS")
    _check_number(config, "PLAN_REGEN_STREAM_KEEPALIVE", minimum=0.1)
    _check_number(config, "PLAN_REGEN_STREAM_RECHECK", minimum=0.1)
    max_open = config["PLAN_REGEN_STREAM_MAX_OPEN"]
    _check(
        max_open is None or (_is_int(max_open) and max_open >= 1),
        "PLAN_REGEN_STREAM_MAX_OPEN",
        "None (derived from the server's threads) or an integer >= 1",
        config,
    )
    _check_int(config, "PLAN_REGEN_STREAM_MAX_PER_USER", minimum=1)
    _check_number(config, "PLAN_REGEN_STREAM_MAX_LIFE", minimum=1)
    _check(
        not config["PLAN_REGEN_METRICS"]
        or importlib.util.find_spec("prometheus_client") is not None,
        "PLAN_REGEN_METRICS",
        "False unless prometheus-client is installed (pip install 'flask-plan-regen[metrics]')",
        config,
    )
    _check_bool(config, "PLAN_REGEN_EAGER")
    _check_bool(config, "PLAN_REGEN_ALLOW_IN_PROCESS")
    _check_in_process(config)


def _check_in_process(config: Mapping[str, Any]) -> None:
    """``memory://`` and eager jobs only under ``TESTING`` or for one process, opted in.

    Neither can work across processes, and nothing else would say so: under a server
    with several processes each has its own in-process Redis (jobs never reach a
    worker, limits and idempotency keys hold per process), and an eager job runs in
    the web request (a provider's ``Retry-After`` is not waited for, a slow call dies
    with the web worker's timeout).
    """
    if config.get("TESTING") or config["PLAN_REGEN_ALLOW_IN_PROCESS"]:
        return
    opt_in = (
        "It is for tests: set TESTING = True, or PLAN_REGEN_ALLOW_IN_PROCESS = True in a host "
        "that runs exactly one process (docs/testing.md)."
    )
    if config["PLAN_REGEN_REDIS_URL"] == MEMORY_REDIS_URL:
        raise ConfigurationError(
            f"PLAN_REGEN_REDIS_URL is {MEMORY_REDIS_URL!r}, a Redis inside each process: with "
            "several server processes, jobs never reach a worker, and rate limits and "
            f"idempotency keys hold per process. {opt_in}"
        )
    if config["PLAN_REGEN_EAGER"]:
        raise ConfigurationError(
            "PLAN_REGEN_EAGER runs each job inside the web request that queued it: a "
            "provider's Retry-After is not waited for and a slow call dies with the web "
            f"worker's timeout. Run workers instead (flask plan-regen worker). {opt_in}"
        )


def _check_redis_url(config: Mapping[str, Any]) -> None:
    url = config["PLAN_REGEN_REDIS_URL"]
    _check(
        isinstance(url, str)
        and (
            url == MEMORY_REDIS_URL
            or url.startswith(
                ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")
            )
        ),
        "PLAN_REGEN_REDIS_URL",
        "a redis://, rediss://, unix:// or redis+sentinel:// URL (docs/operations.md), or "
        f"{MEMORY_REDIS_URL!r} (tests)",
        config,
    )
    _check(
        url != MEMORY_REDIS_URL
        or all(importlib.util.find_spec(name) is not None for name in ("fakeredis", "lupa")),
        "PLAN_REGEN_REDIS_URL",
        f"a Redis server's URL unless fakeredis and lupa are installed ({MEMORY_REDIS_URL!r} "
        "needs pip install 'flask-plan-regen[testing]')",
        config,
    )


def rq_queues(config: Mapping[str, Any]) -> list[tuple[str, int]]:
    """``(RQ queue name, lowest priority)`` pairs, highest priority first, namespaced."""
    namespace = config["PLAN_REGEN_NAMESPACE"]
    return [
        (f"{namespace}_{name}", int(threshold)) for name, threshold in config["PLAN_REGEN_QUEUES"]
    ]


def rq_queue_names(config: Mapping[str, Any]) -> list[str]:
    """The RQ queue names in priority order, highest first."""
    return [name for name, _ in rq_queues(config)]


def job_timeout(config: Mapping[str, Any]) -> int:
    """RQ's job timeout: ``PLAN_REGEN_JOB_TIMEOUT``, else the longest call + a margin."""
    configured = config["PLAN_REGEN_JOB_TIMEOUT"]
    if configured is not None:
        return int(configured)
    return math.ceil(longest_call(config)) + JOB_TIMEOUT_MARGIN


def longest_call(config: Mapping[str, Any]) -> float:
    """The longest a provider call may run: the overall limit and its one extension.

    The first-token and idle limits end a call sooner, never later, so they add nothing.
    """
    return float(config["PLAN_REGEN_PROVIDER_TIMEOUT"]) + float(
        config["PLAN_REGEN_PROVIDER_TIMEOUT_EXTENSION"]
    )


def _is_http_url(value: Any) -> bool:
    """An ``http(s)://host[:port]...`` URL whose port (if any) is a number."""
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _check_provider(config: Mapping[str, Any]) -> None:
    base = config["PLAN_REGEN_PROVIDER_BASE_URL"]
    _check(
        base is None or _is_http_url(base),
        "PLAN_REGEN_PROVIDER_BASE_URL",
        "None (OpenAI's own API) or an http(s):// URL",
        config,
    )
    key = config["PLAN_REGEN_PROVIDER_API_KEY"]
    _check(
        key is None or isinstance(key, str),
        "PLAN_REGEN_PROVIDER_API_KEY",
        "None or a string",
        config,
    )
    _check(
        isinstance(config["PLAN_REGEN_PROVIDER_MODEL"], str)
        and bool(config["PLAN_REGEN_PROVIDER_MODEL"].strip()),
        "PLAN_REGEN_PROVIDER_MODEL",
        "a model name",
        config,
    )
    models = config["PLAN_REGEN_PROVIDER_TIER_MODELS"]
    _check(
        isinstance(models, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in models.items()),
        "PLAN_REGEN_PROVIDER_TIER_MODELS",
        "a mapping of tier name to model name",
        config,
    )
    for key, choices in (
        ("PLAN_REGEN_PROVIDER_RESPONSE_FORMAT", RESPONSE_FORMATS),
        ("PLAN_REGEN_PROVIDER_MAX_OUTPUT_TOKENS_PARAM", OUTPUT_CAP_PARAMS),
    ):
        _check(config[key] in choices, key, f"one of {', '.join(map(repr, choices))}", config)
    _check_int(config, "PLAN_REGEN_PROVIDER_MAX_OUTPUT_TOKENS", minimum=256, maximum=1_000_000)


def _check_queues(config: Mapping[str, Any]) -> None:
    queues = config["PLAN_REGEN_QUEUES"]
    ok = (
        isinstance(queues, list | tuple)
        and bool(queues)
        and all(
            isinstance(entry, list | tuple)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and _QUEUE_NAME.fullmatch(entry[0]) is not None
            and _is_int(entry[1])
            for entry in queues
        )
    )
    if ok:
        thresholds = [entry[1] for entry in queues]
        names = [entry[0] for entry in queues]
        ok = (
            thresholds == sorted(thresholds, reverse=True)
            and len(set(thresholds)) == len(thresholds)
            and len(set(names)) == len(names)
            and thresholds[-1] <= 0
        )
    _check(
        ok,
        "PLAN_REGEN_QUEUES",
        "a list of [queue name, lowest priority] pairs, highest priority first, with "
        "distinct names (letters, digits and '-'; no '_', which joins the namespace to the "
        "name: 'regen_high' in namespace 'plan' would be 'plan_regen_high', a queue of "
        "namespace 'plan_regen') and the last threshold <= 0",
        config,
    )


def _check_limits(config: Mapping[str, Any], tiers: Mapping[str, Any]) -> None:
    _check(_is_rate(config["PLAN_REGEN_RATE_LIMIT"]), "PLAN_REGEN_RATE_LIMIT", RATE_FORMAT, config)
    per_tier = config["PLAN_REGEN_TIER_RATE_LIMITS"]
    _check(
        isinstance(per_tier, Mapping)
        and all(tier in tiers and _is_rate(rate) for tier, rate in per_tier.items()),
        "PLAN_REGEN_TIER_RATE_LIMITS",
        f"a mapping of tier (one of {', '.join(sorted(tiers))}) to {RATE_FORMAT}",
        config,
    )
    quotas = config["PLAN_REGEN_MONTHLY_QUOTAS"]
    _check(
        isinstance(quotas, Mapping)
        and set(quotas) == set(tiers)
        and all(q == UNLIMITED or (_is_int(q) and q >= 0) for q in quotas.values()),
        "PLAN_REGEN_MONTHLY_QUOTAS",
        f"a mapping of every tier ({', '.join(sorted(tiers))}) to a non-negative integer "
        f"or {UNLIMITED!r}",
        config,
    )


def _is_rate(value: Any) -> bool:
    """One ``limits`` rate string (several joined by ';' are not supported)."""
    if not isinstance(value, str) or ";" in value:
        return False
    try:
        parse(value)
    except ValueError:
        return False
    return True


def _check_stripe(config: Mapping[str, Any]) -> None:
    api_key = config["PLAN_REGEN_STRIPE_API_KEY"]
    _check(
        api_key is None or (isinstance(api_key, str) and api_key.startswith(("sk_", "rk_"))),
        "PLAN_REGEN_STRIPE_API_KEY",
        "None or a Stripe secret or restricted key ('sk_...' / 'rk_...')",
        config,
    )
    base = config["PLAN_REGEN_STRIPE_API_BASE"]
    _check(
        base is None or _is_http_url(base),
        "PLAN_REGEN_STRIPE_API_BASE",
        "None (Stripe's own API) or an http(s):// URL",
        config,
    )
    _check_int(config, "PLAN_REGEN_STRIPE_MAX_NETWORK_RETRIES", minimum=0, maximum=10)
    _check_number(config, "PLAN_REGEN_STRIPE_TIMEOUT", minimum=0.1)
    _check_bool(config, "PLAN_REGEN_STRIPE_PAST_DUE_KEEPS_TIER")
    _check_int(config, "PLAN_REGEN_TIER_CACHE_TTL", minimum=1)
    secret = config["PLAN_REGEN_STRIPE_WEBHOOK_SECRET"]
    _check(
        secret is None or (isinstance(secret, str) and secret.startswith("whsec_")),
        "PLAN_REGEN_STRIPE_WEBHOOK_SECRET",
        "None or the endpoint's signing secret ('whsec_...')",
        config,
    )
    _check(
        secret is None or api_key is not None,
        "PLAN_REGEN_STRIPE_WEBHOOK_SECRET",
        "None while PLAN_REGEN_STRIPE_API_KEY is None (the webhook reads tiers from Stripe)",
        config,
    )
    path = config["PLAN_REGEN_STRIPE_WEBHOOK_PATH"]
    _check(
        isinstance(path, str) and path.startswith("/") and "<" not in path,
        "PLAN_REGEN_STRIPE_WEBHOOK_PATH",
        "a URL path starting with '/'",
        config,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, key: str, expected: str, config: Mapping[str, Any]) -> None:
    if not ok:
        raise ConfigurationError(f"{key} must be {expected}; got {_shown(key, config[key])}.")


def _shown(key: str, value: Any) -> str:
    """The value for an error message: a key or secret hidden, credentials in URLs masked."""
    if value is not None and any(word in key for word in ("KEY", "SECRET")):
        return f"a {type(value).__name__} (value hidden)"
    return mask_urls(repr(value))


def _check_bool(config: Mapping[str, Any], key: str) -> None:
    _check(isinstance(config[key], bool), key, "True or False", config)


def _check_int(
    config: Mapping[str, Any], key: str, *, minimum: int, maximum: int | None = None
) -> None:
    value = config[key]
    ok = _is_int(value) and value >= minimum and (maximum is None or value <= maximum)
    bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
    _check(ok, key, f"an integer {bounds}", config)


def _check_number(config: Mapping[str, Any], key: str, *, minimum: float) -> None:
    value = config[key]
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= minimum
    _check(ok, key, f"a number >= {minimum}", config)


LIMIT_FIELDS = ("rpm", "tpm", "concurrent")
ENTRY_FIELDS = ("name", "base_url", "api_key", "model", "tier_models", "limits", "prices")


def _is_limits(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        field in LIMIT_FIELDS and (limit is None or (_is_int(limit) and limit >= 1))
        for field, limit in value.items()
    )


def _check_fleet(config: Mapping[str, Any]) -> None:
    _check(
        _is_limits(config["PLAN_REGEN_PROVIDER_LIMITS"]),
        "PLAN_REGEN_PROVIDER_LIMITS",
        f"a mapping of {', '.join(LIMIT_FIELDS)} to a positive integer or None",
        config,
    )
    _check_number(config, "PLAN_REGEN_PROVIDER_LIMIT_WINDOW", minimum=1)
    _check_int(config, "PLAN_REGEN_BREAKER_THRESHOLD", minimum=0, maximum=1000)
    _check_number(config, "PLAN_REGEN_BREAKER_WINDOW", minimum=1)
    _check_number(config, "PLAN_REGEN_BREAKER_COOLDOWN", minimum=1)
    _check_number(config, "PLAN_REGEN_PROVIDER_OUTAGE_WAIT", minimum=0)
    entries = config["PLAN_REGEN_PROVIDERS"]
    if entries is None:
        return
    expected = (
        "None or a non-empty list of entries, each a mapping with a unique 'name' (letters, "
        "digits, '_' and '-'), a 'model', and optionally 'base_url' (http(s)://), 'api_key', "
        f"'tier_models', 'limits' ({', '.join(LIMIT_FIELDS)}) and 'prices'"
    )
    ok = isinstance(entries, list | tuple) and bool(entries)
    names: set[str] = set()
    for entry in entries if ok else ():
        ok = ok and (
            isinstance(entry, Mapping)
            and set(entry) <= set(ENTRY_FIELDS)
            and isinstance(entry.get("name"), str)
            and _NAMESPACE.fullmatch(entry["name"]) is not None
            and entry["name"] not in names
            and isinstance(entry.get("model"), str)
            and bool(entry["model"].strip())
            and (entry.get("base_url") is None or _is_http_url(entry["base_url"]))
            and (entry.get("api_key") is None or isinstance(entry["api_key"], str))
            and isinstance(entry.get("tier_models", {}), Mapping)
            and _is_limits(entry.get("limits", {}))
            and isinstance(entry.get("prices", {}), Mapping)
        )
        names.add(str(entry.get("name")) if isinstance(entry, Mapping) else "")
    if not ok:  # entries may carry API keys: never shown
        raise ConfigurationError(f"PLAN_REGEN_PROVIDERS must be {expected}.")
    if importlib.util.find_spec("openai") is None:
        raise ConfigurationError(
            "PLAN_REGEN_PROVIDERS needs the openai SDK: pip install 'flask-plan-regen[openai]'."
        )
