"""Marshmallow schemas for request bodies (camelCase on the wire, snake_case inside)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from marshmallow import (
    EXCLUDE,
    INCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from .models import storable
from .pacing import schedule_problems
from .types import LEARNING_STYLES, SKILL_LEVELS


class TrimmedString(fields.String):
    """A storable string with surrounding whitespace removed before validation.

    NUL characters and lone surrogates are refused here (models.storable):
    they would otherwise fail much later, in the database.
    """

    default_error_messages = {  # noqa: RUF012 - marshmallow's own convention
        "unstorable": "Must not contain NUL characters or unpaired surrogates.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not storable(text):
            raise self.make_error("unstorable")
        return text.strip()


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


# What str.splitlines() breaks on. A single-line field (the topic) is one line of the
# prompt: a line break in it could forge another (docs/providers.md#the-prompt).
SINGLE_LINE = validate.Regexp(
    r"^[^\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]*\Z",  # \Z: "$" passes a final "\n"
    error="Must be a single line: no line breaks.",
)
TOPIC_RULES = [validate.Length(min=3, max=200), SINGLE_LINE]


class PlanFieldsSchema(Schema):
    """The plan inputs a user may set; every field optional."""

    class Meta:
        unknown = RAISE

    topic = TrimmedString(validate=TOPIC_RULES)
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

    topic = TrimmedString(required=True, validate=TOPIC_RULES)

    @validates_schema
    def _dates_can_be_scheduled(self, data: dict[str, Any], **kwargs: Any) -> None:
        problems = schedule_problems(data.get("start_date"), data.get("deadline_date"))
        if problems:
            raise ValidationError(problems)


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


class _StripeEventDataSchema(Schema):
    class Meta:
        unknown = INCLUDE

    object = fields.Dict(required=True)


class StripeEventSchema(Schema):
    """What the webhook needs of a signed Stripe event; the rest is kept as sent."""

    class Meta:
        unknown = INCLUDE

    id = TrimmedString(required=True, validate=validate.Length(min=1, max=255))
    type = TrimmedString(required=True, validate=validate.Length(min=1, max=255))
    data = fields.Nested(_StripeEventDataSchema, required=True)


stripe_event_schema = StripeEventSchema()


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
