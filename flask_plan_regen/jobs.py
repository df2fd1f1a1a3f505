"""The job ``rq worker`` runs: claim an attempt, generate, check, pace, save.

The job gets its Flask app from :func:`set_worker_app` (``flask plan-regen
worker`` loads it once, before forking) or else loads it the way the ``flask``
command does, from ``FLASK_APP``. Status changes are lifecycle.py's; this
module only runs the attempt in between.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import ChainMap
from typing import Any, cast

from flask import Flask, current_app, has_app_context
from flask.cli import ScriptInfo
from redis.exceptions import RedisError

from . import breaker, fallbacks, lifecycle, provider_limits, queue, spend
from .checkpoints import Checkpoints, GenerationCanceled
from .database import UNAVAILABLE_ERRORS
from .errors import (
    GenerationError,
    InternalFailure,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)
from .identity import load_plan
from .leases import held_lease
from .logs import log_context
from .metrics import count_budget_paused, count_capacity_wait, observe_attempt
from .models import (
    TERMINAL_STATUSES,
    GenerationAttempt,
    Regeneration,
    Status,
    storable_text,
    utcnow,
)
from .output import parse_output
from .pacing import fit_to_schedule
from .previews import ModulePreviews
from .providers import GenerationRequest, GenerationResult
from .schemas import overrides_schema
from .state import RegenState, get_state

logger = logging.getLogger("flask_plan_regen.jobs")

_worker_app: Flask | None = None


def set_worker_app(app: Flask) -> None:
    """Use ``app`` for every job this process (and its forked children) runs."""
    global _worker_app
    _worker_app = app


def worker_app() -> Flask:
    global _worker_app
    if has_app_context():
        return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]
    if _worker_app is None:
        try:
            _worker_app = ScriptInfo(app_import_path=os.environ.get("FLASK_APP")).load_app()
        except Exception as error:
            raise RuntimeError(
                "flask_plan_regen jobs need the host app: set FLASK_APP (e.g. "
                "'myapp:create_app') in the worker's environment, or run "
                "'flask plan-regen worker'."
            ) from error
    return _worker_app


def run_regeneration(generation_id: str) -> Any:
    """RQ entry point: run one attempt of a regeneration inside the host app's context.

    Returns the success summary, an ``rq.Retry`` when a retryable failure has
    attempts left, or ``None``. Raises, so that RQ records the job as failed,
    when its attempt ended the regeneration ``failed``
    (:class:`~flask_plan_regen.queue.RegenerationFailed`) and when the
    generation id is unknown to this app's database.
    """
    with worker_app().app_context(), log_context(generation_id=generation_id):
        state = get_state()
        state.dispose_engines_after_fork()
        try:
            return execute(state, generation_id)
        except lifecycle.UnknownRegeneration:
            logger.error(
                "regeneration %s is not in this app's database: the job was probably queued "
                "by another app sharing this Redis (give each app its own "
                "PLAN_REGEN_NAMESPACE) or against another database",
                generation_id,
            )
            raise
        finally:
            observe_attempt(state, generation_id)
            state.db.session.remove()


def execute(state: RegenState, generation_id: str) -> Any:
    """Route, claim and run one attempt; ``None`` if there is nothing to run.

    Nothing is claimed before the job may call: while the app's monthly budget is
    spent, or until a provider entry has taken capacity for the call
    (:func:`_route`), the job goes back to RQ's schedule, its row ``pending`` and
    its attempts unspent. Eager apps call at once.
    """
    if spend.calls_paused(state):
        count_budget_paused("worker")
        return queue.put_off(int(current_app.config["PLAN_REGEN_BUDGET_RECHECK"]))
    grant: fallbacks.Grant | None = None
    if not current_app.config["PLAN_REGEN_EAGER"]:
        try:
            routed = _route(state, generation_id)
        except RedisError as error:
            # The job is already delivered and no worker dequeues while Redis is down:
            # calling the first entry unmetered beats stranding the row.
            logger.warning(
                "regeneration %s: provider limits not checked, Redis unavailable: %s",
                generation_id,
                error,
            )
            routed = None
        if not isinstance(routed, fallbacks.Grant | None):
            return routed
        grant = routed
    regeneration = lifecycle.claim(state, generation_id)
    if regeneration is None:
        if grant is not None:
            fallbacks.release(state, grant)
        logger.info("regeneration %s has no attempt to run here", generation_id)
        return None
    with held_lease(state, generation_id, regeneration.attempts):
        return attempt(state, regeneration, grant)


def _route(state: RegenState, generation_id: str) -> fallbacks.Grant | queue.Redelivery | None:
    """The entry and capacity for this job's call; else what the job returns to wait.

    ``None`` when the row has ended or its plan is gone (the claim and the
    attempt deal with those). While every entry is open-circuited the job waits
    up to ``PLAN_REGEN_PROVIDER_OUTAGE_WAIT`` (from its first such wait) and then
    fails ``provider_unavailable`` without a call.
    """
    config = current_app.config
    entries = fallbacks.entries(state)
    row = state.db.session.get(Regeneration, generation_id)
    ended = row is None or row.status in TERMINAL_STATUSES
    priority, attempts = (row.priority, row.attempts) if row is not None else (0, 0)
    prompt: str | None = ""
    if row is not None and not ended and any(entry.limits.tpm for entry in entries):
        prompt = _prompt(state, row)  # only a token limit needs it
    state.db.session.rollback()  # read before: the rollback expires the row
    if ended or prompt is None:
        return None
    outage_key = state.key("capacity", "outage-since", generation_id)
    outage_wait = float(config["PLAN_REGEN_PROVIDER_OUTAGE_WAIT"])
    # Only an open breaker starts an outage wait.
    since = cast(bytes | None, state.redis.get(outage_key)) if breaker.enabled() else None
    waited = time.time() - float(since) if since is not None else 0.0
    routed = fallbacks.route(
        state,
        generation_id,
        entries,
        tokens=fallbacks.estimated_tokens(prompt),
        priority=priority,
        # A failed probe must not be this regeneration's last attempt, unless it waited long.
        may_probe=attempts + 1 < int(config["PLAN_REGEN_MAX_ATTEMPTS"])
        or waited >= outage_wait / 2,
    )
    if isinstance(routed, fallbacks.Grant):
        if since is not None:
            state.redis.delete(outage_key)
        return routed
    wait = routed.seconds
    if routed.outage:
        state.redis.set(outage_key, time.time(), nx=True, ex=int(outage_wait) + 3600)
        if waited >= outage_wait:
            state.redis.delete(outage_key)
            error = ProviderUnavailable(f"every provider entry stayed down for {waited:.0f} s")
            if lifecycle.give_up(state, generation_id, error):
                raise queue.RegenerationFailed(error.failure_class, error.public_message)
            return None
        wait = min(wait, outage_wait - waited)  # back in time to give up
    seconds = provider_limits.park(state, generation_id, priority, wait, routed.spacing)
    first = routed.blocked[0]
    count_capacity_wait(first.entry, first.reason)
    logger.info(
        "regeneration %s waits %.1f s for provider capacity (%s); no attempt spent",
        generation_id,
        seconds,
        "; ".join(f"{each.entry}: {each.reason}" for each in routed.blocked),
    )
    return queue.put_off(max(math.ceil(seconds), 1))  # RQ schedules in whole seconds


def _prompt(state: RegenState, regeneration: Regeneration) -> str | None:
    """The prompt ``regeneration``'s call will send; ``None`` when its plan is gone."""
    plan = load_plan(state, regeneration.plan_id)
    if plan is None:
        return None
    overrides = overrides_schema.load(regeneration.overrides)
    request = GenerationRequest(plan.with_overrides(overrides), regeneration.tier, "", 0)
    return "".join(request.prompt())


def attempt(
    state: RegenState, regeneration: Regeneration, grant: fallbacks.Grant | None = None
) -> Any:
    """Generate, check and pace the plan, then save it (lifecycle.finish) or fail.

    ``grant``: the provider entry routed to (default: the first, no capacity taken).
    """
    routing = fallbacks.Routing(grant or fallbacks.first_entry(state))
    plan = load_plan(state, regeneration.plan_id)
    if plan is None:
        fallbacks.release(state, routing.grant)  # no call: its capacity goes back
        lifecycle.plan_deleted(state, regeneration, None)
        return None
    # No database connection is held while the model writes: a threaded worker runs
    # many attempts on one pool (docs/operations.md, "Threads or processes").
    state.db.session.close()
    overrides = overrides_schema.load(regeneration.overrides)
    checkpoints = Checkpoints.for_attempt(state, regeneration.id, current_app.config)
    request = GenerationRequest(
        plan=plan.with_overrides(overrides),
        tier=regeneration.tier,
        generation_id=regeneration.id,
        attempt=regeneration.attempts,
        checkpoints=checkpoints,
        module_ready=ModulePreviews(state, regeneration, checkpoints, current_app.config),
    )
    started = time.monotonic()
    result: GenerationResult | None = None
    logger.info(
        "regeneration %s attempt %s: calling provider %s",
        regeneration.id,
        request.attempt,
        routing.grant.entry.name,
    )
    try:
        result = routing.call(state, request)
        modules, adjustments = parse_output(result.content)
        modules, schedule = fit_to_schedule(request.plan, modules, utcnow().date())
    except GenerationCanceled:
        logger.info("regeneration %s: canceled during its provider call", regeneration.id)
        record = attempt_row(
            state,
            regeneration,
            request,
            started,
            result or _spent(state, request),
            grant=routing.grant,
        )
        lifecycle.canceled_attempt(state, regeneration, record)
        return None
    except GenerationError as error:
        return _failed(state, regeneration, request, started, result, error, routing.grant)
    except queue.JobTimeout:
        timeout = ProviderTimeout("RQ job timeout reached during the provider call")
        return _failed(state, regeneration, request, started, result, timeout, routing.grant)
    except Exception as error:
        if result is None:  # a provider bug must not leave the row processing
            logger.exception("provider %s raised", routing.grant.entry.name)
            wrapped: GenerationError = ProviderError(f"{type(error).__name__}: {error}")
        else:  # our code failed on the provider's answer: a bug, retrying would not help
            logger.exception("regeneration %s: checking the output raised", regeneration.id)
            wrapped = InternalFailure(f"{type(error).__name__}: {error}")
        return _failed(state, regeneration, request, started, result, wrapped, routing.grant)

    summary = {
        "modules": len(modules),
        "tasks": sum(len(m.tasks) for m in modules),
        "durationMs": int((time.monotonic() - started) * 1000),
        "provider": result.provider,
        "model": model_name(result.model),
    }
    record = attempt_row(
        state, regeneration, request, started, result, summary=summary, grant=routing.grant
    )
    record.adjustments = {**adjustments, **schedule}
    generation_id = regeneration.id
    try:
        saved = lifecycle.finish(
            state,
            regeneration,
            record,
            summary,
            lambda: state.store.replace_content(regeneration.plan_id, modules),
        )
    except UNAVAILABLE_ERRORS:
        raise  # the database, not our code: the job fails and recovery runs the attempt again
    except Exception as error:
        # Nothing of the new content was committed: the plan keeps its modules.
        state.db.session.rollback()
        if load_plan(state, regeneration.plan_id) is None:
            lifecycle.plan_deleted(state, regeneration, record)
            return None
        logger.exception("saving regeneration %s failed", generation_id)
        failure = InternalFailure(
            f"saving failed: {type(error).__name__}",
            public_message="The generated plan could not be saved.",
        )
        return _failed(state, regeneration, request, started, result, failure, routing.grant)
    if not saved:
        logger.info("regeneration %s attempt lost its claim", generation_id)
        return None
    logger.info("regeneration %s succeeded: %s", generation_id, summary)
    return summary


def _failed(
    state: RegenState,
    regeneration: Regeneration,
    request: GenerationRequest,
    started: float,
    result: GenerationResult | None,
    error: GenerationError,
    grant: fallbacks.Grant,
) -> Any:
    # The usage the failure carries (the server's own report) comes first.
    spent = result or (None if error.usage is not None else _spent(state, request))
    record = attempt_row(state, regeneration, request, started, spent, error=error, grant=grant)
    return _after_failure(lifecycle.fail(state, regeneration, record, error))


def _spent(state: RegenState, request: GenerationRequest) -> GenerationResult | None:
    """What a call that ended without a result used, as its provider reported it so far.

    A stream cut before its usage chunk counts one output token per chunk received.
    """
    spent = request.checkpoints.spent
    completion_tokens = spent.completion_tokens
    if completion_tokens is None and spent.chunks:
        completion_tokens = spent.chunks
    if spent.model is None and completion_tokens is None and spent.prompt_tokens is None:
        return None
    return GenerationResult(
        content="",
        provider=state.provider.name,
        model=spent.model,
        prompt_tokens=spent.prompt_tokens,
        completion_tokens=completion_tokens,
    )


def _after_failure(outcome: int | GenerationError | None) -> Any:
    """What the job hands RQ after a failed attempt: a retry, or the regeneration's end.

    A regeneration that ended ``failed`` fails its RQ job too, so RQ's failed
    registry, ``rq info`` and rq-dashboard count it. One whose attempt lost the
    row (canceled, taken over) ends the job quietly.
    """
    if isinstance(outcome, int):
        return queue.retry_in(outcome, current_app.config)
    if outcome is not None:
        # Without the provider's exception chain: RQ stores and logs the traceback, and
        # the SDK's messages may quote what the server said (an API key, the prompt).
        raise queue.RegenerationFailed(outcome.failure_class, outcome.public_message) from None
    return None


def model_name(name: Any) -> str | None:
    """The model the server says answered, as a storable string of at most 200 characters."""
    return storable_text(name)[:200] if isinstance(name, str) else None


def token_count(value: Any) -> int | None:
    """A provider's token count if it is one an integer column can keep, else ``None``.

    Servers answer what they like ("x", -5, 10**30); a count is only informative,
    so a wrong one is dropped rather than failing the attempt that is being saved.
    """
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
        return value
    return None


def attempt_row(
    state: RegenState,
    regeneration: Regeneration,
    request: GenerationRequest,
    started: float,
    result: GenerationResult | None,
    *,
    error: GenerationError | None = None,
    summary: dict[str, Any] | None = None,
    grant: fallbacks.Grant | None = None,
) -> GenerationAttempt:
    """The attempt's row (lifecycle commits it with the outcome), with what it cost:
    the usage of the answer, or the usage a failure carries from the server's answer.
    ``grant`` names the provider entry called; its own prices win over the table's."""
    usage = spend.usage_of(result, error)
    config = current_app.config
    entry = grant.entry if grant is not None else None
    # The model asked for is the entry's own (a fallback's model is not the tier's), and
    # names a billed call whose stream was cut before the server said which model answered.
    settings = getattr(entry.provider if entry else state.provider, "settings", None)
    asked = (
        spend.tier_model(ChainMap(settings, config), regeneration.tier)
        if settings is not None
        else None
    )
    prices = (
        spend.parse_prices(entry.prices)
        if entry is not None and entry.prices
        else spend.prices_for(config, usage.model, asked)
    )
    return GenerationAttempt(
        regeneration_id=regeneration.id,
        number=request.attempt,
        outcome=Status.FAILED if error else Status.SUCCEEDED,
        failure_class=error.failure_class if error else None,
        error=error.public_message if error else None,
        duration_ms=int((time.monotonic() - started) * 1000),
        modules_count=summary["modules"] if summary else 0,
        tasks_count=summary["tasks"] if summary else 0,
        provider=result.provider if result else (entry.name if entry else state.provider.name),
        model=model_name(usage.model or (asked if spend.was_billed(usage) else None)),
        prompt_tokens=token_count(usage.prompt_tokens),
        completion_tokens=token_count(usage.completion_tokens),
        cached_tokens=token_count(usage.cached_tokens),
        cost_usd=spend.call_cost(
            prices,
            prompt_tokens=token_count(usage.prompt_tokens),
            completion_tokens=token_count(usage.completion_tokens),
            cached_tokens=token_count(usage.cached_tokens),
            reported=usage.cost,
        ),
        billed=spend.was_billed(usage),
        charged_to=regeneration.charged_to,
        prompt_hash=request.prompt_hash(),
        adjustments={},
    )
