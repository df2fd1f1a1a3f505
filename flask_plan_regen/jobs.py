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
from sqlalchemy import update

from .errors import GenerationError, OutputValidationError, ProviderError
from .extension import RegenState, get_state
from .models import GenerationAttempt, Regeneration, utcnow
from .output import parse_output
from .providers import GenerationRequest, GenerationResult
from .quota import refund_failed
from .schemas import OverridesSchema

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


def run_regeneration(generation_id: str) -> dict[str, Any] | None:
    """RQ entry point: run one regeneration inside the host app's context."""
    with worker_app().app_context():
        state = get_state()
        state.dispose_engines_after_fork()
        try:
            return execute(state, generation_id)
        finally:
            state.db.session.remove()


def claim(state: RegenState, generation_id: str) -> bool:
    """Move ``pending`` to ``processing``; ``False`` when someone else got there first."""
    session = state.db.session
    claimed = session.execute(
        update(Regeneration)
        .where(Regeneration.id == generation_id, Regeneration.status == "pending")
        .values(
            status="processing",
            attempts=Regeneration.attempts + 1,
            started_at=utcnow(),
            updated_at=utcnow(),
        )
    )
    session.commit()
    return bool(getattr(claimed, "rowcount", 0))


def execute(state: RegenState, generation_id: str) -> dict[str, Any] | None:
    """Run one claimed attempt of a regeneration; a no-op if it is not pending."""
    if not claim(state, generation_id):
        logger.info("regeneration %s is not pending; nothing to do", generation_id)
        return None
    session = state.db.session
    regeneration = session.get(Regeneration, generation_id)
    assert regeneration is not None  # claimed just now
    plan = state.load_plan(regeneration.plan_id)
    if plan is None:
        finish_failed(
            state,
            regeneration,
            OutputValidationError(
                "plan no longer exists", public_message="The plan no longer exists."
            ),
            None,
        )
        return None
    overrides = OverridesSchema().load(regeneration.overrides)
    request = GenerationRequest(
        plan=plan.with_overrides(overrides),
        tier=regeneration.tier,
        generation_id=regeneration.id,
        attempt=regeneration.attempts,
    )
    started = time.monotonic()
    result: GenerationResult | None = None
    try:
        result = state.provider.generate(request)
        modules, adjustments = parse_output(result.content)
    except GenerationError as error:
        record_attempt(state, regeneration, request, started, result, error=error)
        finish_failed(state, regeneration, error, result)
        return None
    except Exception as error:  # a provider bug must not leave the row processing
        logger.exception("provider %s raised", state.provider.name)
        wrapped = ProviderError(f"{type(error).__name__}: {error}")
        record_attempt(state, regeneration, request, started, result, error=wrapped)
        finish_failed(state, regeneration, wrapped, result)
        return None

    duration_ms = int((time.monotonic() - started) * 1000)
    summary = {
        "modules": len(modules),
        "tasks": sum(len(m.tasks) for m in modules),
        "durationMs": duration_ms,
        "provider": result.provider,
        "model": result.model,
    }
    try:
        state.store.replace_content(regeneration.plan_id, modules)
        record_attempt(
            state, regeneration, request, started, result, summary=summary, adjustments=adjustments
        )
        regeneration.status = "succeeded"
        regeneration.result = summary
        regeneration.finished_at = utcnow()
        session.commit()
    except Exception as error:
        # Nothing of the new content was committed: the plan keeps its modules.
        session.rollback()
        logger.exception("saving regeneration %s failed", generation_id)
        failure = ProviderError(
            f"saving failed: {type(error).__name__}",
            public_message="The generated plan could not be saved.",
        )
        record_attempt(state, regeneration, request, started, result, error=failure)
        finish_failed(state, regeneration, failure, result)
        return None
    logger.info("regeneration %s succeeded: %s", regeneration.id, summary)
    return summary


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
            number=regeneration.attempts,
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


def finish_failed(
    state: RegenState,
    regeneration: Regeneration,
    error: GenerationError,
    result: GenerationResult | None,
) -> None:
    """Mark the regeneration failed; the plan keeps its current modules."""
    logger.warning(
        "regeneration %s attempt %s failed (%s): %s",
        regeneration.id,
        regeneration.attempts,
        error.failure_class,
        error,
    )
    regeneration.status = "failed"
    regeneration.failure_class = error.failure_class
    regeneration.error = error.public_message
    regeneration.error_history = [
        *regeneration.error_history,
        {
            "attempt": regeneration.attempts,
            "class": error.failure_class,
            "error": error.public_message,
            "at": utcnow().isoformat(),
        },
    ]
    regeneration.finished_at = utcnow()
    refund_failed(state, regeneration, error.failure_class)
    state.db.session.commit()
