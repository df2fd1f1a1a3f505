"""Configuration keys, their defaults and the checks made at ``init_app``.

Every key starts with ``PLAN_REGEN_``; docs/configuration.md lists them all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

from .errors import ConfigurationError

PREFIX = "PLAN_REGEN_"

DEFAULT_PRIORITY_PHRASES: tuple[str, ...] = (
    "interview prep",
    "ai engineering",
    "machine learning",
    "data structures",
)

DEFAULTS: dict[str, Any] = {
    "PLAN_REGEN_ENABLED": True,
    "PLAN_REGEN_REDIS_URL": "redis://127.0.0.1:6379/0",
    "PLAN_REGEN_REDIS_TIMEOUT": 2.0,
    # (queue name, lowest priority it takes), highest priority first.
    "PLAN_REGEN_QUEUES": [
        ["plan_regen_high", 10],
        ["plan_regen_default", 5],
        ["plan_regen_low", 0],
    ],
    "PLAN_REGEN_TIER_PRIORITY": {"free": 1, "starter": 5, "pro": 10},
    "PLAN_REGEN_PRIORITY_PHRASES": list(DEFAULT_PRIORITY_PHRASES),
    "PLAN_REGEN_PRIORITY_BOOST": 3,
    "PLAN_REGEN_DEFAULT_TIER": "free",
    "PLAN_REGEN_AUTH_HANDLER": None,
    "PLAN_REGEN_PLAN_LOADER": None,
    "PLAN_REGEN_TIER_RESOLVER": None,
    "PLAN_REGEN_PROVIDER": None,
    "PLAN_REGEN_STORE": None,
    "PLAN_REGEN_MAX_BODY_BYTES": 64 * 1024,
    "PLAN_REGEN_JOB_TIMEOUT": 180,
    "PLAN_REGEN_RESULT_TTL": 24 * 3600,
    "PLAN_REGEN_PAGE_SIZE": 20,
    "PLAN_REGEN_BUILTIN_DELAY": 0.0,
    "PLAN_REGEN_BUILTIN_FAILURE": None,
}

HOOK_KEYS = (
    "PLAN_REGEN_AUTH_HANDLER",
    "PLAN_REGEN_PLAN_LOADER",
    "PLAN_REGEN_TIER_RESOLVER",
    "PLAN_REGEN_PROVIDER",
    "PLAN_REGEN_STORE",
)

BUILTIN_FAILURES = ("validation", "provider_error", "rate_limit", "timeout", "invalid_json")

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def apply_defaults(config: MutableMapping[str, Any]) -> None:
    for key, value in DEFAULTS.items():
        config.setdefault(key, value)


def validate(config: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigurationError` naming the first wrong key."""
    _check_bool(config, "PLAN_REGEN_ENABLED")
    _check(
        isinstance(config["PLAN_REGEN_REDIS_URL"], str)
        and config["PLAN_REGEN_REDIS_URL"].startswith(("redis://", "rediss://", "unix://")),
        "PLAN_REGEN_REDIS_URL",
        "a redis://, rediss:// or unix:// URL",
        config,
    )
    _check_number(config, "PLAN_REGEN_REDIS_TIMEOUT", minimum=0.1)
    _check_queues(config)
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
    _check_int(config, "PLAN_REGEN_MAX_BODY_BYTES", minimum=1)
    _check_int(config, "PLAN_REGEN_JOB_TIMEOUT", minimum=1)
    _check_int(config, "PLAN_REGEN_RESULT_TTL", minimum=0)
    _check_int(config, "PLAN_REGEN_PAGE_SIZE", minimum=1, maximum=100)
    _check_number(config, "PLAN_REGEN_BUILTIN_DELAY", minimum=0)
    _check(
        config["PLAN_REGEN_BUILTIN_FAILURE"] in (None, *BUILTIN_FAILURES),
        "PLAN_REGEN_BUILTIN_FAILURE",
        f"None or one of {', '.join(BUILTIN_FAILURES)}",
        config,
    )


def _check_queues(config: Mapping[str, Any]) -> None:
    queues = config["PLAN_REGEN_QUEUES"]
    ok = (
        isinstance(queues, list | tuple)
        and bool(queues)
        and all(
            isinstance(entry, list | tuple)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and _QUEUE_NAME.match(entry[0]) is not None
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
        "distinct names (letters, digits, '_' and '-') and the last threshold <= 0",
        config,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, key: str, expected: str, config: Mapping[str, Any]) -> None:
    if not ok:
        raise ConfigurationError(f"{key} must be {expected}; got {config[key]!r}.")


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
