"""The console's JSON documents: each page's data, dumped by these schemas."""

from __future__ import annotations

from marshmallow import fields

from ..documents import (
    Money,
    RegenerationSchema,
    RegenerationSummarySchema,
    ResponseSchema,
    UtcDateTime,
)


class InFlightSchema(ResponseSchema):
    generation_id = fields.String(data_key="generationId")
    plan_id = fields.String(data_key="planId")
    user_id = fields.String(data_key="userId")
    attempt = fields.Integer()
    started_at = UtcDateTime(data_key="startedAt", allow_none=True)
    running_seconds = fields.Float(data_key="runningSeconds", allow_none=True)
    lease_age_seconds = fields.Float(
        data_key="leaseAgeSeconds",
        allow_none=True,
        metadata={"description": "Since the attempt last renewed its lease; null: none held."},
    )


class QueueSchema(ResponseSchema):
    queue = fields.String()
    waiting = fields.Integer()
    oldest_enqueued_at = UtcDateTime(data_key="oldestEnqueuedAt", allow_none=True)
    scheduled = fields.Integer(metadata={"description": "Retries waiting out a backoff."})
    next_scheduled_at = UtcDateTime(data_key="nextScheduledAt", allow_none=True)
    running = fields.Integer()
    in_flight = fields.List(fields.Nested(InFlightSchema), data_key="inFlight")


class WorkerSchema(ResponseSchema):
    name = fields.String()
    hostname = fields.String(allow_none=True)
    pid = fields.Integer(allow_none=True)
    state = fields.String()
    queues = fields.List(fields.String())
    current_job = fields.String(data_key="currentJob", allow_none=True)
    last_heartbeat = UtcDateTime(data_key="lastHeartbeat", allow_none=True)
    successful_jobs = fields.Integer(data_key="successfulJobs")
    failed_jobs = fields.Integer(data_key="failedJobs")


class PrioritySchema(ResponseSchema):
    priority = fields.Integer()
    ended = fields.Integer()
    succeeded = fields.Integer()
    failed = fields.Integer()
    canceled = fields.Integer()
    wait_p50_seconds = fields.Float(data_key="waitP50Seconds", allow_none=True)
    wait_p95_seconds = fields.Float(data_key="waitP95Seconds", allow_none=True)


class HourSchema(ResponseSchema):
    hour = UtcDateTime()
    succeeded = fields.Integer()
    failed = fields.Dict(keys=fields.String(), values=fields.Integer())
    canceled = fields.Integer()


class SwitchSchema(ResponseSchema):
    enabled = fields.Boolean()
    config_enabled = fields.Boolean(data_key="configEnabled")
    switched_off_by = fields.String(data_key="switchedOffBy", allow_none=True)


class OverviewSchema(ResponseSchema):
    generated_at = UtcDateTime(data_key="generatedAt")
    redis_error = fields.String(
        data_key="redisError",
        allow_none=True,
        metadata={"description": "Set while Redis is unavailable: queues and workers are empty."},
    )
    queues = fields.List(fields.Nested(QueueSchema))
    workers = fields.List(fields.Nested(WorkerSchema))
    statuses = fields.Dict(keys=fields.String(), values=fields.Integer())
    last_hour = fields.List(fields.Nested(PrioritySchema), data_key="lastHour")
    hours = fields.List(fields.Nested(HourSchema))
    spend_hours = fields.List(
        fields.Nested(lambda: HourSpendSchema()),
        data_key="spendHours",
        metadata={"description": "What each of the last 24 hours' attempts cost."},
    )
    switch = fields.Nested(SwitchSchema)


class RegenerationListSchema(ResponseSchema):
    items = fields.List(fields.Nested(RegenerationSummarySchema))
    next = fields.String(
        allow_none=True, metadata={"description": "Pass as ?after= for the next page."}
    )
    filters = fields.Dict(keys=fields.String(), values=fields.String())


class EventSchema(ResponseSchema):
    at = UtcDateTime()
    event = fields.String()
    detail = fields.String()


class RegenerationDetailSchema(ResponseSchema):
    regeneration = fields.Nested(RegenerationSchema)
    timeline = fields.List(fields.Nested(EventSchema))


class ActionEntrySchema(ResponseSchema):
    at = UtcDateTime()
    operator = fields.String()
    action = fields.String()
    detail = fields.String()
    touched = fields.List(fields.String())
    created = fields.List(fields.String())


class ActionsSchema(ResponseSchema):
    switch = fields.Nested(SwitchSchema)
    failed_by_class = fields.Dict(
        keys=fields.String(), values=fields.Integer(), data_key="failedByClass"
    )
    recent = fields.List(fields.Nested(ActionEntrySchema))
    csrf_token = fields.String(data_key="csrfToken", metadata={"description": "For POSTs."})


class ActionResultSchema(ResponseSchema):
    action = fields.String()
    message = fields.String()
    touched = fields.List(fields.String())
    created = fields.List(fields.String())
    skipped = fields.List(fields.String())


class RequeuePreviewSchema(ResponseSchema):
    failure_class = fields.String(data_key="failureClass")
    count = fields.Integer()
    csrf_token = fields.String(data_key="csrfToken")


overview_schema = OverviewSchema()
regeneration_list_schema = RegenerationListSchema()
regeneration_detail_schema = RegenerationDetailSchema()
actions_schema = ActionsSchema()
action_result_schema = ActionResultSchema()
requeue_preview_schema = RequeuePreviewSchema()


class CostRowSchema(ResponseSchema):
    key = fields.String(metadata={"description": "The model, tier or user."})
    attempts = fields.Integer()
    billed = fields.Integer()
    prompt_tokens = fields.Integer(data_key="promptTokens")
    completion_tokens = fields.Integer(data_key="completionTokens")
    cached_tokens = fields.Integer(data_key="cachedTokens")
    cost_usd = Money(data_key="costUsd")
    unknown_cost = fields.Integer(
        data_key="unknownCostAttempts", metadata={"description": "Billed, cost unknown."}
    )


class UserSpendSchema(ResponseSchema):
    user_id = fields.String(data_key="userId")
    tier = fields.String(allow_none=True)
    spent_usd = Money(data_key="spentUsd")
    reserved_usd = Money(data_key="reservedUsd")
    budget_usd = Money(data_key="budgetUsd", allow_none=True)
    used_share = fields.Float(
        data_key="usedShare", allow_none=True, metadata={"description": "(spent+reserved)/budget"}
    )


class SpendSchema(ResponseSchema):
    period = fields.String()
    resets_at = UtcDateTime(data_key="resetsAt")
    spent_usd = Money(
        data_key="spentUsd", metadata={"description": "The app's ledger (operator re-runs too)."}
    )
    budget_usd = Money(data_key="budgetUsd", allow_none=True)
    used_share = fields.Float(data_key="usedShare", allow_none=True)
    by_model = fields.List(fields.Nested(CostRowSchema), data_key="byModel")
    by_tier = fields.List(fields.Nested(CostRowSchema), data_key="byTier")
    top_users = fields.List(fields.Nested(UserSpendSchema), data_key="topUsers")
    tier_budgets = fields.Dict(
        keys=fields.String(), values=Money(allow_none=True), data_key="tierBudgets"
    )


class HourSpendSchema(ResponseSchema):
    hour = UtcDateTime()
    cost_usd = Money(data_key="costUsd")


spend_schema = SpendSchema()


class ProviderSchema(ResponseSchema):
    """One provider entry, as ``flask plan-regen info`` describes it (fallbacks.describe)."""

    name = fields.String()
    limits = fields.Dict(metadata={"description": "Requests, tokens and calls allowed."})
    use = fields.Dict(metadata={"description": "Use in the window now, calls in flight, cooldown."})
    breaker = fields.Dict(metadata={"description": "Its state, failures, seconds to a probe."})
    fallbacks_taken = fields.Integer(attribute="fallbacksTaken", data_key="fallbacksTaken")


class ProvidersSchema(ResponseSchema):
    providers = fields.List(fields.Nested(ProviderSchema))


providers_schema = ProvidersSchema()
