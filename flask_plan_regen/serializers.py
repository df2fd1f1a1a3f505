"""JSON documents for regenerations and their attempts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .models import GenerationAttempt, Regeneration


def iso_utc(value: datetime | None) -> str | None:
    """ISO 8601 in UTC; SQLite hands back naive datetimes, which are UTC here."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def regeneration_document(
    regeneration: Regeneration, attempts: Sequence[GenerationAttempt] | None = None
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "generationId": regeneration.id,
        "planId": regeneration.plan_id,
        "kind": regeneration.kind,
        "status": regeneration.status,
        "tier": regeneration.tier,
        "priority": regeneration.priority,
        "queue": regeneration.queue,
        "overrides": regeneration.overrides,
        "attempts": regeneration.attempts,
        "failureClass": regeneration.failure_class,
        "error": regeneration.error,
        "errorHistory": regeneration.error_history,
        "result": regeneration.result,
        "createdAt": iso_utc(regeneration.created_at),
        "startedAt": iso_utc(regeneration.started_at),
        "finishedAt": iso_utc(regeneration.finished_at),
        "updatedAt": iso_utc(regeneration.updated_at),
    }
    if attempts is not None:
        document["attemptLog"] = [attempt_document(attempt) for attempt in attempts]
    return document


def attempt_document(attempt: GenerationAttempt) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "outcome": attempt.outcome,
        "failureClass": attempt.failure_class,
        "error": attempt.error,
        "durationMs": attempt.duration_ms,
        "modules": attempt.modules_count,
        "tasks": attempt.tasks_count,
        "provider": attempt.provider,
        "model": attempt.model,
        "promptTokens": attempt.prompt_tokens,
        "completionTokens": attempt.completion_tokens,
        "promptHash": attempt.prompt_hash,
        "adjustments": attempt.adjustments,
        "createdAt": iso_utc(attempt.created_at),
    }
