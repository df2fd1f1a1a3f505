"""The console's JSON documents: each page's data, dumped by these schemas."""

from __future__ import annotations

from marshmallow import fields

from ..documents import RegenerationSchema, RegenerationSummarySchema, ResponseSchema, UtcDateTime


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
