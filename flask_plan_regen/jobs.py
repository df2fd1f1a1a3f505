"""The job ``rq worker`` runs: claim a regeneration, generate, replace the plan.

The job gets its Flask app from :func:`set_worker_app` (``flask plan-regen
worker`` loads it once, before forking) or else loads it the way the ``flask``
command does, from ``FLASK_APP``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from flask import Flask, current_app, has_app_context
from flask.cli import ScriptInfo
from rq import Retry
from rq.timeouts import JobTimeoutException
from sqlalchemy import update

from .errors import GenerationError, OutputValidationError, ProviderError, ProviderTimeout
from .extension import RegenState, get_state
from .logs import log_context
from .metrics import observe_attempt
from .models import GenerationAttempt, Regeneration, utcnow
from .output import parse_output
from .pacing import fit_to_schedule
from .providers import GenerationRequest, GenerationResult
from .quota import refund_failed
from .retries import rq_retry, should_retry
from .schemas import overrides_schema

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


def run_regeneration(generation_id: str) -> dict[str, Any] | Retry | None:
    """RQ entry point: run one regeneration inside the host app's context."""
    with worker_app().app_context(), log_context(generation_id=generation_id):
        state = get_state()
        state.dispose_engines_after_fork()
        try:
            return execute(state, generation_id)
        finally:
            observe_attempt(state, generation_id)
            state.db.session.remove()


def claim(state: RegenState, generation_id: str) -> Regeneration | None:
    """Move ``pending`` to ``processing`` and count the attempt; return the row.

    ``None`` when the row is not pending (finished, canceled, or another
    delivery got there first). A pending row that has used up its attempts
    is failed as ``capped`` instead of being run again.
    """
    session = state.db.session
    max_attempts = current_app.config["PLAN_REGEN_MAX_ATTEMPTS"]
    pending = (Regeneration.id == generation_id, Regeneration.status == "pending")
    # RETURNING the row: the claim and the read of what was claimed are one statement.
    regeneration = session.scalar(
        update(Regeneration)
        .where(*pending, Regeneration.attempts < max_attempts)
        .values(
            status="processing",
            attempts=Regeneration.attempts + 1,
            started_at=utcnow(),
            updated_at=utcnow(),
        )
        .returning(Regeneration)
        .execution_options(populate_existing=True)
    )
    if regeneration is None:
        session.execute(
            update(Regeneration)
            .where(*pending)
            .values(
                status="failed",
                failure_class="capped",
                error="The regeneration used up its attempts.",
                finished_at=utcnow(),
                updated_at=utcnow(),
            )
        )
    session.commit()
    return regeneration


def execute(state: RegenState, generation_id: str) -> dict[str, Any] | Retry | None:
    """Run one attempt of a regeneration; a no-op if it is not pending.

    Returns the success summary, an :class:`rq.Retry` when a retryable failure
    has attempts left (the row is ``pending`` again by then), or ``None``.
    """
    regeneration = claim(state, generation_id)
    if regeneration is None:
        logger.info("regeneration %s is not pending; nothing to do", generation_id)
        return None
    attempt = regeneration.attempts
    session = state.db.session
    plan = state.load_plan(regeneration.plan_id)
    if plan is None:
        gone = OutputValidationError(
            "plan no longer exists", public_message="The plan no longer exists."
        )
        conclude_failure(state, regeneration, attempt, gone)
        return None
    overrides = overrides_schema.load(regeneration.overrides)
    request = GenerationRequest(
        plan=plan.with_overrides(overrides),
        tier=regeneration.tier,
        generation_id=regeneration.id,
        attempt=attempt,
    )
    started = time.monotonic()
    result: GenerationResult | None = None
    try:
        result = state.provider.generate(request)
        modules, adjustments = parse_output(result.content)
        modules, schedule = fit_to_schedule(request.plan, modules, utcnow().date())
    except GenerationError as error:
        return fail_attempt(state, regeneration, request, started, result, error)
    except JobTimeoutException:
        timeout = ProviderTimeout("RQ job timeout reached during the provider call")
        return fail_attempt(state, regeneration, request, started, result, timeout)
    except Exception as error:  # a provider bug must not leave the row processing
        logger.exception("provider %s raised", state.provider.name)
        wrapped = ProviderError(f"{type(error).__name__}: {error}")
        return fail_attempt(state, regeneration, request, started, result, wrapped)

    duration_ms = int((time.monotonic() - started) * 1000)
    summary = {
        "modules": len(modules),
        "tasks": sum(len(m.tasks) for m in modules),
        "durationMs": duration_ms,
        "provider": result.provider,
        "model": result.model,
    }
    try:
        # The status change comes first and only applies to this very attempt:
        # a cancel (or a recovery sweep) that got there first wins, and the
        # row lock it takes makes a racing cancel wait for this transaction.
        if not finish_attempt(
            session,
            regeneration.id,
            attempt,
            status="succeeded",
            result=summary,
            finished_at=utcnow(),
        ):
            session.rollback()
            logger.info("regeneration %s attempt %s lost its claim", generation_id, attempt)
            return None
        state.store.replace_content(regeneration.plan_id, modules)
        record_attempt(
            state,
            regeneration,
            request,
            started,
            result,
            summary=summary,
            adjustments={**adjustments, **schedule},
        )
        session.commit()
    except Exception as error:
        # Nothing of the new content was committed: the plan keeps its modules.
        session.rollback()
        logger.exception("saving regeneration %s failed", generation_id)
        failure = ProviderError(
            f"saving failed: {type(error).__name__}",
            public_message="The generated plan could not be saved.",
        )
        return fail_attempt(state, regeneration, request, started, result, failure)
    # generation_id, not regeneration.id: the commit expired the row, reading it costs a SELECT.
    logger.info("regeneration %s succeeded: %s", generation_id, summary)
    return summary


def finish_attempt(session: Any, generation_id: str, attempt: int, **values: Any) -> bool:
    """Apply ``values`` if attempt ``attempt`` still holds the row; ``False`` otherwise."""
    changed = session.execute(
        update(Regeneration)
        .where(
            Regeneration.id == generation_id,
            Regeneration.status == "processing",
            Regeneration.attempts == attempt,
        )
        .values(updated_at=utcnow(), **values)
        # The loaded row takes the new values in memory: no reload of it (nor of the plan,
        # as expire_all would cost). Callers roll back when the claim was lost.
        .execution_options(synchronize_session="evaluate")
    )
    return bool(getattr(changed, "rowcount", 0))


def fail_attempt(
    state: RegenState,
    regeneration: Regeneration,
    request: GenerationRequest,
    started: float,
    result: GenerationResult | None,
    error: GenerationError,
) -> Retry | None:
    """Record a failed attempt; ask RQ for a retry when the policy allows one."""
    record_attempt(state, regeneration, request, started, result, error=error)
    return conclude_failure(state, regeneration, request.attempt, error)


def conclude_failure(
    state: RegenState, regeneration: Regeneration, attempt: int, error: GenerationError
) -> Retry | None:
    """Append ``error`` to the history; back to ``pending`` to retry, else ``failed``.

    Commits the session (with whatever the caller added to it) only if
    ``attempt`` still holds the row; the old modules stay either way.
    """
    config = current_app.config
    retry = should_retry(error, attempt, config)
    logger.warning(
        "regeneration %s attempt %s failed (%s, %s): %s",
        regeneration.id,
        attempt,
        error.failure_class,
        "will retry" if retry else "final",
        error,
    )
    history = [
        *regeneration.error_history,
        {
            "attempt": attempt,
            "class": error.failure_class,
            "error": error.public_message,
            "at": utcnow().isoformat(),
        },
    ]
    outcome: dict[str, Any] = (
        {"status": "pending"}
        if retry
        else {
            "status": "failed",
            "failure_class": error.failure_class,
            "error": error.public_message,
            "finished_at": utcnow(),
        }
    )
    if not finish_attempt(
        state.db.session, regeneration.id, attempt, error_history=history, **outcome
    ):
        state.db.session.rollback()
        return None
    if not retry:
        refund_failed(state, regeneration, error.failure_class)
    state.db.session.commit()
    return rq_retry(attempt, config) if retry else None


def record_attempt(
    state: RegenState,
    regeneration: Regeneration,
    request: GenerationRequest,
    started: float,
    result: GenerationResult | None,
    *,
    error: GenerationError | None = None,
    summary: dict[str, Any] | None = None,
    adjustments: dict[str, int] | None = None,
) -> None:
    """Add the attempt row to the session (committed with the outcome)."""
    state.db.session.add(
        GenerationAttempt(
            regeneration_id=regeneration.id,
            number=request.attempt,
            outcome="failed" if error else "succeeded",
            failure_class=error.failure_class if error else None,
            error=error.public_message if error else None,
            duration_ms=int((time.monotonic() - started) * 1000),
            modules_count=summary["modules"] if summary else 0,
            tasks_count=summary["tasks"] if summary else 0,
            provider=result.provider if result else state.provider.name,
            model=result.model if result else None,
            prompt_tokens=result.prompt_tokens if result else None,
            completion_tokens=result.completion_tokens if result else None,
            prompt_hash=request.prompt_hash(),
            adjustments=adjustments or {},
        )
    )
