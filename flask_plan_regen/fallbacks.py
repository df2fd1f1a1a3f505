"""Provider entries in order of preference, and the routing of each call among them.

``PLAN_REGEN_PROVIDERS`` lists OpenAI-compatible entries (name, base URL, key,
model, limits, prices); without it the app's one provider is the only entry,
named as the provider is, limited by ``PLAN_REGEN_PROVIDER_LIMITS``. A call
goes to the first entry whose breaker is not open and that has capacity
(rate, tokens, concurrency, no cooldown); an entry that is rate-limited,
cooling down after a 429, out of credit or open-circuited passes the call to
the next (counted in ``plan_regen_provider_fallbacks``). What the model answered
(a refusal, a rule violation) never falls back: the next model would be asked
the same thing. When no entry can take the call, the job waits (:class:`Wait`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from flask import current_app
from redis.exceptions import RedisError

from . import breaker, provider_limits
from .config import job_timeout
from .errors import ConfigurationError, GenerationError, ProviderQuotaExhausted, ProviderRateLimited
from .metrics import count_fallback
from .models import FailureClass
from .provider_limits import Lease, Limits, NoCapacity
from .providers import GenerationProvider, GenerationRequest, GenerationResult
from .redis_client import as_text, synchronous
from .spend import parse_prices
from .state import RegenState

logger = logging.getLogger("flask_plan_regen.fallbacks")

# Waits that end at an unknown moment (a probe's answer, a concurrent call's end) are
# polled: the waiting jobs come back this many seconds apart, not all at once.
POLL_SPREAD = 0.1
_POLLED = frozenset({"breaker", "concurrency"})
# Seconds an entry out of credit is skipped while another entry can take its calls.
CREDIT_RECHECK = 300.0
# Failures that say the entry is down (the breaker counts them); others say it answered.
_OUTAGE_FAILURES = frozenset({FailureClass.PROVIDER_ERROR, FailureClass.TIMEOUT})
# The ``PLAN_REGEN_PROVIDER_*`` keys an entry's fields stand for.
ENTRY_SETTINGS = {
    "base_url": "PLAN_REGEN_PROVIDER_BASE_URL",
    "api_key": "PLAN_REGEN_PROVIDER_API_KEY",
    "model": "PLAN_REGEN_PROVIDER_MODEL",
    "tier_models": "PLAN_REGEN_PROVIDER_TIER_MODELS",
}


@dataclasses.dataclass(frozen=True)
class ProviderEntry:
    """One provider a call may go to."""

    name: str
    provider: GenerationProvider
    limits: Limits
    prices: Mapping[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class Grant:
    """A call may go to ``entry`` now, with the capacity ``lease`` took for it."""

    entry: ProviderEntry
    lease: Lease | None
    probe: bool = False
    """The breaker's half-open probe."""
    tokens: int = 0
    """The call's estimated tokens, and the job's priority (to route it again)."""
    priority: int = 0


@dataclasses.dataclass(frozen=True)
class Wait:
    """No entry can take the call now; the soonest may in ``seconds``."""

    seconds: float
    spacing: float
    """Seconds between calls at the soonest entry's limits (to spread the waiting jobs)."""
    blocked: list[NoCapacity]

    @property
    def outage(self) -> bool:
        """Every entry waits on its open breaker."""
        return all(each.reason == "breaker" for each in self.blocked)


def entries(state: RegenState) -> list[ProviderEntry]:
    """The provider entries of the current app, in order of preference."""
    config = current_app.config
    listed = config["PLAN_REGEN_PROVIDERS"]
    if not listed:
        limits = Limits.from_config(config["PLAN_REGEN_PROVIDER_LIMITS"])
        return [ProviderEntry(state.provider.name, state.provider, limits)]
    # Imported here: the OpenAI SDK is an extra, needed only by apps that list entries.
    from .openai_provider import OpenAIProvider

    return [
        ProviderEntry(
            name=spec["name"],
            # An entry's own settings only: another entry's tier models are not its models.
            provider=OpenAIProvider(
                {key: spec.get(field) for field, key in ENTRY_SETTINGS.items()}
                | {"PLAN_REGEN_PROVIDER_TIER_MODELS": spec.get("tier_models") or {}}
            ),
            limits=Limits.from_config(spec.get("limits")),
            prices=spec.get("prices"),
        )
        for spec in listed
    ]


def first_entry(state: RegenState) -> Grant:
    """The first entry, without taking capacity (eager apps, which call at once)."""
    return Grant(entries(state)[0], None)


def route(
    state: RegenState,
    generation_id: str,
    listed: list[ProviderEntry],
    *,
    tokens: int,
    priority: int,
    may_probe: bool,
) -> Grant | Wait:
    """The first of ``listed`` that takes the call of ``generation_id``, with its capacity
    taken (``tokens`` estimated); or how long to wait. Only a job that ``may_probe``
    makes a half-open probe."""
    config = current_app.config
    lease_seconds = job_timeout(config)
    blocked: list[NoCapacity] = []
    spacing = {}
    for index, entry in enumerate(listed):
        spacing[entry.name] = entry.limits.spacing(tokens, float(
            config["PLAN_REGEN_PROVIDER_LIMIT_WINDOW"]
        ))  # fmt: skip
        verdict = breaker.check(state, entry.name, may_probe=may_probe, probe_seconds=lease_seconds)
        if not verdict.allowed:
            blocked.append(NoCapacity(entry.name, "breaker", verdict.wait))
            continue
        taken = provider_limits.acquire(
            state,
            entry.name,
            entry.limits,
            generation_id=generation_id,
            priority=priority,
            tokens=tokens,
            lease_seconds=lease_seconds,
        )
        if isinstance(taken, Lease):
            if index:
                logger.info(
                    "regeneration %s goes to provider %s (%s)",
                    generation_id,
                    entry.name,
                    "; ".join(f"{each.entry}: {each.reason}" for each in blocked),
                )
                state.redis.hincrby(state.key("provider", "fallbacks"), entry.name)
                count_fallback(entry.name)
            return Grant(entry, taken, verdict.probe, tokens, priority)
        if verdict.probe:
            breaker.record(state, entry.name, "abandon")
        blocked.append(taken)
        if taken.reason == "queue":  # a parked job's turn: on whichever entry it takes
            break
    soonest = min(blocked, key=lambda each: each.wait)
    gap = spacing.get(soonest.entry, 0.0)
    if soonest.reason in _POLLED:
        gap = max(gap, POLL_SPREAD)
    return Wait(soonest.wait, gap, blocked)


def estimated_tokens(prompt: str) -> int:
    """A call's tokens before it is made: the prompt (4 characters a token) and the output cap."""
    return len(prompt) // 4 + int(current_app.config["PLAN_REGEN_PROVIDER_MAX_OUTPUT_TOKENS"])


def release(state: RegenState, grant: Grant) -> None:
    """The call will not be made after all (the job lost its row): give the capacity back."""
    with _unless_redis_is_down(grant.entry.name):
        if grant.lease is not None:
            provider_limits.cancel(state, grant.lease)
        if grant.probe:
            breaker.record(state, grant.entry.name, "abandon")


class Routing:
    """The provider entry of one attempt: the granted one, or the next one that can take
    the call at once when the granted one refuses it without answering.

    A 429 (rate limited) or an account out of credit (``provider_quota``) bills
    nothing, so the attempt's call goes to the next entry that has capacity now
    (the attempt records that entry); without one, the failure stands and the
    job's retry waits at the gate. Anything the entry answered stands too: a
    refusal or a rule violation would be the same elsewhere.
    """

    def __init__(self, grant: Grant) -> None:
        self.grant = grant

    def call(self, state: RegenState, request: GenerationRequest) -> GenerationResult:
        """The answer of the entry that took the call; it names that entry."""
        while True:
            try:
                return _call(state, self.grant, request)
            except (ProviderRateLimited, ProviderQuotaExhausted) as error:
                refused = self.grant
                if refused.lease is None:  # not routed (an eager app): nowhere else to go
                    raise
                other: Grant | Wait | None = None
                with _unless_redis_is_down(refused.entry.name):
                    if isinstance(error, ProviderQuotaExhausted) and len(entries(state)) > 1:
                        provider_limits.cool_down(state, refused.entry.name, CREDIT_RECHECK)
                    other = route(
                        state, request.generation_id, entries(state), tokens=refused.tokens,
                        priority=refused.priority, may_probe=False,
                    )  # fmt: skip
                if not isinstance(other, Grant):
                    raise
                if other.entry.name == refused.entry.name:
                    release(state, other)
                    raise
                logger.info(
                    "regeneration %s: provider %s refused the call (%s); it goes to %s",
                    request.generation_id,
                    refused.entry.name,
                    error.failure_class,
                    other.entry.name,
                )
                self.grant = other


def _call(state: RegenState, grant: Grant, request: GenerationRequest) -> GenerationResult:
    """Call the granted entry; count the outcome for its limits, cooldown and breaker.

    A 429 that said how long to wait cools the entry down for every worker; the
    job's own retry then only waits its backoff, and the gate holds it back (no
    attempt spent) or sends it to another entry.
    """
    entry = grant.entry
    reported: int | None = None
    try:
        result = entry.provider.generate(request)
        reported = _total_tokens(result.prompt_tokens, result.completion_tokens)
    except GenerationError as error:
        if error.usage is not None:
            reported = _total_tokens(error.usage.prompt_tokens, error.usage.completion_tokens)
        with _unless_redis_is_down(entry.name):
            _count_failure(state, grant, error)
        raise
    except Exception:
        with _unless_redis_is_down(entry.name):
            breaker.record(state, entry.name, "failure")  # jobs.py counts it a provider error
        raise
    finally:
        if grant.lease is not None:
            with _unless_redis_is_down(entry.name):
                provider_limits.finished(state, grant.lease, reported)
    with _unless_redis_is_down(entry.name):
        breaker.record(state, entry.name, "success")
    return dataclasses.replace(result, provider=entry.name)


@contextlib.contextmanager
def _unless_redis_is_down(entry: str) -> Iterator[None]:
    """Bookkeeping after a call must never lose its answer: without Redis it is skipped
    (the lease expires by itself), and the attempt goes on to record what it got."""
    try:
        yield
    except RedisError as error:
        logger.warning("provider %s: call not counted, Redis unavailable: %s", entry, error)


def _count_failure(state: RegenState, grant: Grant, error: GenerationError) -> None:
    name = grant.entry.name
    if error.failure_class in _OUTAGE_FAILURES:
        breaker.record(state, name, "failure")
        return
    if isinstance(error, ProviderRateLimited):
        if error.retry_after:
            # Up to the backoff cap, as a job's own retry: a server may ask for a day.
            pause = min(
                error.retry_after, float(current_app.config["PLAN_REGEN_RETRY_BACKOFF_CAP"])
            )
            logger.warning(
                "provider %s asked to wait %.1f s: every worker's calls to it pause for %.1f s",
                name,
                error.retry_after,
                pause,
            )
            provider_limits.cool_down(state, name, pause)
            error.retry_after = None
        if grant.probe:  # no verdict on the entry's health: the next job probes
            breaker.record(state, name, "abandon")
        return
    breaker.record(state, name, "success")  # it answered: the request was the problem


def _total_tokens(*counts: Any) -> int | None:
    """The sum of a server's token counts, or ``None`` unless each is a count."""
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        return None
    return int(sum(counts))


def describe(state: RegenState) -> list[dict[str, Any]]:
    """Each entry for ``flask plan-regen info``: limits, use now, cooldown, breaker."""
    taken = synchronous(state.redis).hgetall(state.key("provider", "fallbacks"))
    fallbacks = {as_text(name): int(count) for name, count in taken.items()}
    return [
        {
            "name": entry.name,
            "limits": dataclasses.asdict(entry.limits),
            "use": provider_limits.usage(state, entry.name),
            "breaker": breaker.describe(state, entry.name),
            "fallbacksTaken": fallbacks.get(entry.name, 0),
        }
        for entry in entries(state)
    ]


def check_prices(config: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigurationError` for an entry whose ``prices`` are not valid."""
    for spec in config["PLAN_REGEN_PROVIDERS"] or ():
        if spec.get("prices") is None:
            continue
        try:
            parse_prices(spec["prices"])
        except ValueError as error:
            raise ConfigurationError(
                f"PLAN_REGEN_PROVIDERS entry {spec['name']!r}: 'prices' must be {error}."
            ) from None
