"""Marshmallow schemas for request bodies (camelCase on the wire, snake_case inside)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from .pacing import deadline_problem
from .types import LEARNING_STYLES, SKILL_LEVELS


class TrimmedString(fields.String):
    """A storable string with surrounding whitespace removed before validation.

    NUL characters and lone surrogates are refused here: JSON can carry them,
    but PostgreSQL text and UTF-8 cannot, so they would fail much later.
    """

    default_error_messages = {  # noqa: RUF012 - marshmallow's own convention
        "unstorable": "Must not contain NUL characters or unpaired surrogates.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in text or (not text.isascii() and _has_lone_surrogate(text)):
            raise self.make_error("unstorable")
        return text.strip()


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class BlankAsNullString(TrimmedString):
    """A trimmed string where blank means "no value"."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = super()._deserialize(value, attr, data, **kwargs)
        return text or None

    def _validate(self, value: Any) -> None:
        if value is not None:  # blank input became None: nothing left to validate
            super()._validate(value)


class PlanDate(fields.Field[date]):
    """An ISO 8601 date or date-time, kept as the calendar date it names."""

    default_error_messages = {  # noqa: RUF012 - marshmallow's own convention
        "invalid": "Not a valid ISO 8601 date or date-time.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> date:
        if not isinstance(value, str) or len(value) > 64:
            raise self.make_error("invalid")
        try:
            if len(value) == 10:
                return date.fromisoformat(value)
            return datetime.fromisoformat(value).date()
        except ValueError as error:
            raise self.make_error("invalid") from error

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return value.isoformat() if isinstance(value, date) else None


class PlanFieldsSchema(Schema):
    """The plan inputs a user may set; every field optional."""

    class Meta:
        unknown = RAISE

    topic = TrimmedString(validate=validate.Length(min=3, max=200))
    skill_level = fields.String(data_key="skillLevel", validate=validate.OneOf(SKILL_LEVELS))
    weekly_hours = fields.Integer(
        data_key="weeklyHours", strict=True, validate=validate.Range(min=1, max=80)
    )
    learning_style = fields.String(
        data_key="learningStyle", validate=validate.OneOf(LEARNING_STYLES)
    )
    start_date = PlanDate(data_key="startDate", allow_none=True)
    deadline_date = PlanDate(data_key="deadlineDate", allow_none=True)
    notes = BlankAsNullString(allow_none=True, validate=validate.Length(max=2000))


class OverridesSchema(PlanFieldsSchema):
    """``overrides`` of a regenerate request."""


class CreatePlanSchema(PlanFieldsSchema):
    """Body of ``POST /plans``: the plan's fields, ``topic`` required."""

    topic = TrimmedString(required=True, validate=validate.Length(min=3, max=200))

    @validates_schema
    def _deadline_after_start(self, data: dict[str, Any], **kwargs: Any) -> None:
        problem = deadline_problem(data.get("start_date"), data.get("deadline_date"))
        if problem:
            raise ValidationError(problem, "deadlineDate")


class RegenerateRequestSchema(Schema):
    """Body of ``POST /plans/<plan_id>/regenerate``."""

    class Meta:
        unknown = RAISE

    overrides = fields.Nested(OverridesSchema, allow_none=True, load_default=None)

    @post_load
    def _default_overrides(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        data["overrides"] = data.get("overrides") or {}
        return data


# Built once per process: building a schema (fields, validators, nested schemas) costs more
# than loading a body with it, and loading or dumping never changes the instance.
overrides_schema = OverridesSchema()
regenerate_request_schema = RegenerateRequestSchema()


class PaginationSchema(Schema):
    """Query string of list endpoints."""

    class Meta:
        unknown = EXCLUDE

    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=100_000))
    per_page = fields.Integer(
        data_key="perPage", load_default=None, validate=validate.Range(min=1, max=100)
    )


def field_errors(error: ValidationError) -> dict[str, Any]:
    """Marshmallow's messages keyed by wire field name, ``overrides`` flattened."""
    messages = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
    flat: dict[str, Any] = {}
    for key, value in messages.items():
        if key == "overrides" and isinstance(value, dict):
            flat.update(value)
        else:
            flat[str(key)] = value
    return flat


# Response documents. They describe what serializers.py and the store answer, for
# the OpenAPI document (openapi.py); the schemathesis test checks that they agree.


class ResponseSchema(Schema):
    """A response document: every field is required unless declared ``optional``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.required = not field.metadata.get("optional", False)


class ErrorSchema(ResponseSchema):
    error = fields.String(metadata={"description": "A sentence for people."})
    code = fields.String(metadata={"description": "A stable machine-readable code."})
    details = fields.Dict(metadata={"optional": True})


class AcceptedSchema(ResponseSchema):
    generation_id = fields.String(data_key="generationId")
    plan_id = fields.String(data_key="planId")
    status = fields.String(validate=validate.OneOf(["pending"]))
    priority = fields.Integer()
    queue = fields.String()


class AttemptSchema(ResponseSchema):
    number = fields.Integer()
    outcome = fields.String(validate=validate.OneOf(["succeeded", "failed"]))
    failure_class = fields.String(data_key="failureClass", allow_none=True)
    error = fields.String(allow_none=True)
    duration_ms = fields.Integer(data_key="durationMs")
    modules = fields.Integer()
    tasks = fields.Integer()
    provider = fields.String()
    model = fields.String(allow_none=True)
    prompt_tokens = fields.Integer(data_key="promptTokens", allow_none=True)
    completion_tokens = fields.Integer(data_key="completionTokens", allow_none=True)
    prompt_hash = fields.String(data_key="promptHash")
    adjustments = fields.Dict()
    created_at = fields.DateTime(data_key="createdAt", allow_none=True)


class RegenerationSchema(ResponseSchema):
    generation_id = fields.String(data_key="generationId")
    plan_id = fields.String(data_key="planId")
    kind = fields.String()
    status = fields.String(
        validate=validate.OneOf(["pending", "processing", "succeeded", "failed", "canceled"])
    )
    tier = fields.String()
    priority = fields.Integer()
    queue = fields.String()
    overrides = fields.Dict()
    attempts = fields.Integer()
    failure_class = fields.String(data_key="failureClass", allow_none=True)
    error = fields.String(allow_none=True)
    error_history = fields.List(fields.Dict(), data_key="errorHistory")
    result = fields.Dict(allow_none=True)
    created_at = fields.DateTime(data_key="createdAt", allow_none=True)
    started_at = fields.DateTime(data_key="startedAt", allow_none=True)
    finished_at = fields.DateTime(data_key="finishedAt", allow_none=True)
    updated_at = fields.DateTime(data_key="updatedAt", allow_none=True)
    attempt_log = fields.List(
        fields.Nested(AttemptSchema), data_key="attemptLog", metadata={"optional": True}
    )


class RegenerationPageSchema(ResponseSchema):
    items = fields.List(fields.Nested(RegenerationSchema))
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
    created_at = fields.DateTime(data_key="createdAt", allow_none=True)
    updated_at = fields.DateTime(data_key="updatedAt", allow_none=True)
    modules = fields.List(fields.Nested(ModuleDocumentSchema))


class MonthlyUsageSchema(ResponseSchema):
    period = fields.String(metadata={"description": "The month, YYYY-MM (UTC)."})
    limit = fields.Integer(allow_none=True, metadata={"description": "null: unlimited."})
    used = fields.Integer()
    remaining = fields.Integer(allow_none=True)
    resets_at = fields.DateTime(data_key="resetsAt")


class RateLimitUsageSchema(ResponseSchema):
    limit = fields.Integer()
    window = fields.String()
    remaining = fields.Integer()
    resets_in = fields.Integer(data_key="resetsIn")


class UsageSchema(ResponseSchema):
    tier = fields.String()
    monthly = fields.Nested(MonthlyUsageSchema)
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
