"""The response documents: marshmallow schemas that both dump every answer and
describe it in the OpenAPI document (openapi.py), so the two cannot drift.

Each schema dumps the object the answer is made from (an ORM row, a status
dataclass) under the wire's camelCase names.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from marshmallow import Schema, fields, post_dump, validate

from .models import ChargedTo, FailureClass, Status, as_utc


def iso_utc(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z``; SQLite hands back naive datetimes, which are UTC here."""
    if value is None:
        return None
    return as_utc(value).astimezone(UTC).isoformat().replace("+00:00", "Z")


class UtcDateTime(fields.DateTime):
    """A timestamp dumped as ISO 8601 in UTC (``...Z``)."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return iso_utc(value)


def usd(value: Decimal | None) -> str | None:
    """An exact USD amount as a decimal string without trailing zeros (``"0.000456"``)."""
    return None if value is None else f"{Decimal(value).normalize():f}"


class Money(fields.String):
    """An exact USD amount, dumped as a decimal string (never a float); null when unknown."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return usd(value)


class ResponseSchema(Schema):
    """A response document: every field is required unless declared ``optional``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.required = not field.metadata.get("optional", False)


class ErrorSchema(ResponseSchema):
    """Every error answer: ``{"error", "code", "details"?}``."""

    error = fields.String(attribute="message", metadata={"description": "A sentence for people."})
    code = fields.String(metadata={"description": "A stable machine-readable code."})
    details = fields.Dict(metadata={"optional": True})

    @post_dump
    def _drop_empty_details(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if data.get("details") is None:
            data.pop("details", None)
        return data


class AcceptedSchema(ResponseSchema):
    generation_id = fields.String(attribute="id", data_key="generationId")
    plan_id = fields.String(data_key="planId")
    status = fields.String(validate=validate.OneOf([Status.PENDING]))
    priority = fields.Integer()
    queue = fields.String()


_FAILURE_CLASSES = [str(member) for member in FailureClass]


class AttemptSchema(ResponseSchema):
    number = fields.Integer()
    outcome = fields.String(
        validate=validate.OneOf([Status.SUCCEEDED, Status.FAILED, Status.CANCELED]),
        metadata={
            "description": "canceled: the plan was deleted, or the regeneration canceled, "
            "during the attempt (a billed call is recorded all the same)."
        },
    )
    failure_class = fields.String(
        data_key="failureClass", allow_none=True, validate=validate.OneOf(_FAILURE_CLASSES)
    )
    error = fields.String(allow_none=True)
    duration_ms = fields.Integer(data_key="durationMs")
    modules = fields.Integer(attribute="modules_count")
    tasks = fields.Integer(attribute="tasks_count")
    provider = fields.String()
    model = fields.String(allow_none=True)
    prompt_tokens = fields.Integer(data_key="promptTokens", allow_none=True)
    completion_tokens = fields.Integer(data_key="completionTokens", allow_none=True)
    cached_tokens = fields.Integer(data_key="cachedTokens", allow_none=True)
    cost_usd = Money(
        data_key="costUsd",
        allow_none=True,
        metadata={
            "description": "What the call cost in USD, as a decimal string: the server's own "
            "figure, else the price table's; null when unknown (never 0 for unknown)."
        },
    )
    billed = fields.Boolean(
        metadata={"description": "The provider billed the call (its answer had output tokens)."}
    )
    charged_to = fields.String(
        data_key="chargedTo",
        validate=validate.OneOf([str(member) for member in ChargedTo]),
        metadata={"description": "user, or operator for an operator's re-run."},
    )
    prompt_hash = fields.String(data_key="promptHash")
    adjustments = fields.Dict()
    created_at = UtcDateTime(data_key="createdAt", allow_none=True)


class RegenerationSummarySchema(ResponseSchema):
    """A regeneration, as the history lists it and cancel answers it."""

    generation_id = fields.String(attribute="id", data_key="generationId")
    plan_id = fields.String(data_key="planId")
    user_id = fields.String(
        data_key="userId", metadata={"description": "Who asked for it (the plan's owner)."}
    )
    kind = fields.String()
    status = fields.String(validate=validate.OneOf([str(member) for member in Status]))
    tier = fields.String()
    priority = fields.Integer()
    queue = fields.String()
    overrides = fields.Dict()
    attempts = fields.Integer()
    failure_class = fields.String(
        data_key="failureClass", allow_none=True, validate=validate.OneOf(_FAILURE_CLASSES)
    )
    error = fields.String(allow_none=True)
    error_history = fields.List(fields.Dict(), data_key="errorHistory")
    result = fields.Dict(allow_none=True)
    created_at = UtcDateTime(data_key="createdAt", allow_none=True)
    started_at = UtcDateTime(data_key="startedAt", allow_none=True)
    finished_at = UtcDateTime(data_key="finishedAt", allow_none=True)
    updated_at = UtcDateTime(data_key="updatedAt", allow_none=True)


class RegenerationSchema(RegenerationSummarySchema):
    """A regeneration with its attempts, as the status route answers it."""

    attempt_log = fields.List(
        fields.Nested(AttemptSchema), attribute="attempt_rows", data_key="attemptLog"
    )
    modules_ready = fields.Integer(
        data_key="modulesReady",
        allow_none=True,
        metadata={
            "description": "While processing: how many modules the running attempt has "
            "completed so far (each also sent as a `module` event); null otherwise."
        },
    )


class RegenerationEventSchema(ResponseSchema):
    """The ``data`` of one event of the event stream (progress.ProgressEvent)."""

    generation_id = fields.String(data_key="generationId")
    plan_id = fields.String(data_key="planId")
    status = fields.String(validate=validate.OneOf([str(member) for member in Status]))
    attempts = fields.Integer(metadata={"description": "Attempts started so far."})
    failure_class = fields.String(
        data_key="failureClass",
        allow_none=True,
        validate=validate.OneOf(_FAILURE_CLASSES),
        metadata={
            "description": "Why it failed; while pending after an attempt, why that attempt "
            "failed (it will be retried)."
        },
    )
    error = fields.String(allow_none=True, metadata={"description": "A sentence for people."})
    result = fields.Dict(
        allow_none=True, metadata={"description": "Once succeeded: modules, tasks, provider..."}
    )


class ModuleTaskPreviewSchema(ResponseSchema):
    title = fields.String()
    minutes = fields.Integer(metadata={"description": "Estimated minutes, within the rules."})


class ModuleEventSchema(ResponseSchema):
    """The ``data`` of a ``module`` event: a module of the running attempt, complete and
    checked against the output rules, before pacing (previews.ModuleEvent)."""

    generation_id = fields.String(data_key="generationId")
    plan_id = fields.String(data_key="planId")
    attempt = fields.Integer(metadata={"description": "The attempt that wrote it."})
    index = fields.Integer(metadata={"description": "Its position in the plan, from 0."})
    title = fields.String()
    minutes = fields.Integer(metadata={"description": "The module's estimated minutes."})
    tasks = fields.List(fields.Nested(ModuleTaskPreviewSchema))


class RegenerationPageSchema(ResponseSchema):
    items = fields.List(fields.Nested(RegenerationSummarySchema))
    page = fields.Integer()
    per_page = fields.Integer(data_key="perPage")
    total = fields.Integer()
    has_more = fields.Boolean(data_key="hasMore")


class TaskDocumentSchema(ResponseSchema):
    position = fields.Integer()
    title = fields.String()
    description = fields.String(allow_none=True)
    estimated_minutes = fields.Integer(data_key="estimatedMinutes")
    week = fields.Integer(allow_none=True)
    due_date = fields.Date(data_key="dueDate", allow_none=True)


class ModuleDocumentSchema(ResponseSchema):
    position = fields.Integer()
    title = fields.String()
    description = fields.String(allow_none=True)
    estimated_minutes = fields.Integer(data_key="estimatedMinutes")
    tasks = fields.List(fields.Nested(TaskDocumentSchema))


class PlanDocumentSchema(ResponseSchema):
    """The built-in store's plan (a custom store answers its own document)."""

    id = fields.String()
    owner_id = fields.String(data_key="ownerId")
    topic = fields.String()
    skill_level = fields.String(data_key="skillLevel")
    weekly_hours = fields.Integer(data_key="weeklyHours")
    learning_style = fields.String(data_key="learningStyle")
    start_date = fields.Date(data_key="startDate", allow_none=True)
    deadline_date = fields.Date(data_key="deadlineDate", allow_none=True)
    notes = fields.String(allow_none=True)
    status = fields.String()
    created_at = UtcDateTime(data_key="createdAt", allow_none=True)
    updated_at = UtcDateTime(data_key="updatedAt", allow_none=True)
    modules = fields.List(fields.Nested(ModuleDocumentSchema))


class MonthlyUsageSchema(ResponseSchema):
    period = fields.String(metadata={"description": "The month, YYYY-MM (UTC)."})
    limit = fields.Integer(allow_none=True, metadata={"description": "null: unlimited."})
    used = fields.Integer()
    remaining = fields.Integer(allow_none=True)
    resets_at = UtcDateTime(data_key="resetsAt")


class RateLimitUsageSchema(ResponseSchema):
    limit = fields.Integer()
    window = fields.String()
    remaining = fields.Integer()
    resets_in = fields.Integer(attribute="reset_after", data_key="resetsIn")


class MonthlySpendSchema(ResponseSchema):
    period = fields.String(metadata={"description": "The month, YYYY-MM (UTC)."})
    prompt_tokens = fields.Integer(data_key="promptTokens")
    completion_tokens = fields.Integer(data_key="completionTokens")
    cached_tokens = fields.Integer(data_key="cachedTokens")
    cost_usd = Money(
        data_key="costUsd",
        metadata={"description": "What the user's provider calls cost this month (known costs)."},
    )
    unknown_cost_attempts = fields.Integer(
        data_key="unknownCostAttempts",
        metadata={"description": "Billed calls whose cost is unknown (not in costUsd)."},
    )
    budget_usd = Money(
        data_key="budgetUsd", allow_none=True, metadata={"description": "null: unlimited."}
    )
    reserved_usd = Money(
        data_key="reservedUsd",
        metadata={"description": "Held for regenerations still running (their worst case)."},
    )
    budget_left_usd = Money(
        data_key="budgetLeftUsd",
        allow_none=True,
        metadata={"description": "Budget minus spent and reserved; null: unlimited."},
    )
    resets_at = UtcDateTime(data_key="resetsAt")


class UsageSchema(ResponseSchema):
    tier = fields.String()
    monthly = fields.Nested(MonthlyUsageSchema)
    spend = fields.Nested(
        MonthlySpendSchema,
        metadata={"description": "Tokens, cost (USD, decimal strings) and budget this month."},
    )
    rate_limit = fields.Nested(
        RateLimitUsageSchema,
        data_key="rateLimit",
        allow_none=True,
        metadata={"description": "null while Redis is unreachable."},
    )


class WebhookReceiptSchema(ResponseSchema):
    received = fields.Boolean()
    duplicate = fields.Boolean()
    refreshed = fields.Boolean(metadata={"optional": True})


# Built once: a schema costs more to build than to dump with, and dumping never changes it.
error_schema = ErrorSchema()
accepted_schema = AcceptedSchema()
regeneration_schema = RegenerationSchema()
regeneration_summary_schema = RegenerationSummarySchema()
regeneration_page_schema = RegenerationPageSchema()
regeneration_event_schema = RegenerationEventSchema()
module_event_schema = ModuleEventSchema()
plan_document_schema = PlanDocumentSchema()
usage_schema = UsageSchema()
webhook_receipt_schema = WebhookReceiptSchema()


def dump(schema: Schema, obj: Any) -> dict[str, Any]:
    """``schema.dump(obj)`` typed as the JSON object it is."""
    document: Mapping[str, Any] = schema.dump(obj)
    return dict(document)
