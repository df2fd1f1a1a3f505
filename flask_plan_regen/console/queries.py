"""What the console's pages read: the database for regenerations, queue.py for RQ.

Every query here is served by an index (models.Regeneration, docs/operations.md
"The console"), so a page costs the same with a hundred rows or a million.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import statistics
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy import func, select, tuple_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import selectinload
from sqlalchemy.sql.functions import FunctionElement

from .. import leases, queue
from ..config import rq_queue_names
from ..identity import findable_id
from ..models import (
    ACTIVE_STATUSES,
    ID_LENGTH,
    PLAN_ID_LENGTH,
    TERMINAL_STATUSES,
    USER_ID_LENGTH,
    FailureClass,
    Regeneration,
    Status,
    as_utc,
    utcnow,
)
from ..state import RegenState
from ..switch import switched_off_by_operator

PAGE_SIZE = 50
IN_FLIGHT_SHOWN = 100
HOURS_CHARTED = 24


@dataclasses.dataclass
class Switch:
    enabled: bool
    config_enabled: bool
    switched_off_by: str | None


def switch_state(state: RegenState) -> Switch:
    config_enabled = bool(current_app.config["PLAN_REGEN_ENABLED"])
    by = switched_off_by_operator(state)
    return Switch(config_enabled and by is None, config_enabled, by)


def overview_data(state: RegenState) -> dict[str, Any]:
    """The Overview page: queues, work in flight, workers, the last hour and the last day."""
    now = utcnow()
    names = rq_queue_names(current_app.config)
    in_flight = _in_flight(state, now)
    # With Redis down the database's half is shown, and why the other half is missing.
    redis_error = None
    try:
        queues = queue.queue_details(state.redis, names)
        workers = queue.worker_details(state.redis, names)
    except RedisError as error:
        queues, workers, redis_error = [], [], f"Redis is unavailable: {error}"
    for entry in queues:
        entry["in_flight"] = [row for row in in_flight if row["queue"] == entry["queue"]]
    return {
        "generated_at": now,
        "redis_error": redis_error,
        "queues": queues,
        "workers": workers,
        "statuses": _active_counts(state),
        "last_hour": _last_hour(state, now),
        "hours": _hours(state, now),
        "switch": switch_state(state),
    }


def _active_counts(state: RegenState) -> dict[str, int]:
    """Pending and processing regenerations (an index range each, whatever the history)."""
    rows = state.db.session.execute(
        select(Regeneration.status, func.count())
        .where(Regeneration.status.in_(ACTIVE_STATUSES))
        .group_by(Regeneration.status)
    )
    counts = {str(status): 0 for status in ACTIVE_STATUSES}
    counts.update({str(status): int(count) for status, count in rows})
    return counts


def _in_flight(state: RegenState, now: datetime) -> list[dict[str, Any]]:
    rows = state.db.session.execute(
        select(
            Regeneration.id,
            Regeneration.plan_id,
            Regeneration.user_id,
            Regeneration.queue,
            Regeneration.attempts,
            Regeneration.started_at,
        )
        .where(Regeneration.status == Status.PROCESSING)
        .order_by(Regeneration.started_at)
        .limit(IN_FLIGHT_SHOWN)
    ).all()
    try:
        ages = leases.lease_ages(state, [row.id for row in rows])
    except RedisError:
        ages = {}
    return [
        {
            "generation_id": row.id,
            "plan_id": row.plan_id,
            "user_id": row.user_id,
            "queue": row.queue,
            "attempt": row.attempts,
            "started_at": row.started_at,
            "running_seconds": (now - as_utc(row.started_at)).total_seconds()
            if row.started_at
            else None,
            "lease_age_seconds": ages.get(row.id),
        }
        for row in rows
    ]


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(share * 100) - 1]


def _last_hour(state: RegenState, now: datetime) -> list[dict[str, Any]]:
    """Per priority, regenerations that ended in the last hour, and how long those whose
    first attempt ran waited from submit to start (later attempts wait out a backoff)."""
    rows = state.db.session.execute(
        select(
            Regeneration.priority,
            Regeneration.status,
            Regeneration.attempts,
            Regeneration.created_at,
            Regeneration.started_at,
        ).where(Regeneration.finished_at >= now - timedelta(hours=1))
    ).all()
    ended: Counter[int] = Counter()
    outcomes: dict[int, Counter[str]] = defaultdict(Counter)
    waits: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        ended[row.priority] += 1
        outcomes[row.priority][row.status] += 1
        if row.attempts == 1 and row.started_at is not None:
            waited = as_utc(row.started_at) - as_utc(row.created_at)
            waits[row.priority].append(max(waited.total_seconds(), 0.0))
    return [
        {
            "priority": priority,
            "ended": ended[priority],
            "succeeded": outcomes[priority][Status.SUCCEEDED],
            "failed": outcomes[priority][Status.FAILED],
            "canceled": outcomes[priority][Status.CANCELED],
            "wait_p50_seconds": _percentile(sorted(waits[priority]), 0.50),
            "wait_p95_seconds": _percentile(sorted(waits[priority]), 0.95),
        }
        for priority in sorted(ended, reverse=True)
    ]


class utc_hour(FunctionElement[Any]):
    """The UTC hour a timestamp falls in, computed by the database (one row per hour
    and series leaves it, not one per regeneration)."""

    inherit_cache = True
    name = "utc_hour"


@compiles(utc_hour)
def _utc_hour_sqlite(element: utc_hour, compiler: Any, **kw: Any) -> str:
    # SQLite keeps UTC timestamps as text: "2026-12-06 21:00".
    return f"strftime('%Y-%m-%d %H:00', {compiler.process(element.clauses, **kw)})"


@compiles(utc_hour, "postgresql")
def _utc_hour_postgresql(element: utc_hour, compiler: Any, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"to_char(date_trunc('hour', {column} AT TIME ZONE 'UTC'), 'YYYY-MM-DD HH24:00')"


def _hours(state: RegenState, now: datetime) -> list[dict[str, Any]]:
    """The last 24 hours (the current one last): succeeded, and failed by class."""
    first = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS_CHARTED - 1)
    bucket = utc_hour(Regeneration.finished_at)
    rows = state.db.session.execute(
        select(bucket, Regeneration.status, Regeneration.failure_class, func.count())
        .where(Regeneration.finished_at >= first)
        .group_by(bucket, Regeneration.status, Regeneration.failure_class)
    ).all()
    counts: list[Counter[str]] = [Counter() for _ in range(HOURS_CHARTED)]
    for stamp, status, failure_class, count in rows:
        started = datetime.strptime(stamp, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
        index = int((started - first).total_seconds() // 3600)
        if 0 <= index < HOURS_CHARTED and status in TERMINAL_STATUSES:
            series = failure_class or FailureClass.INTERNAL
            counts[index][series if status == Status.FAILED else status] += count
    return [
        {
            "hour": first + timedelta(hours=index),
            "succeeded": hour.pop(Status.SUCCEEDED, 0),
            "canceled": hour.pop(Status.CANCELED, 0),
            "failed": dict(sorted(hour.items())),
        }
        for index, hour in enumerate(counts)
    ]


@dataclasses.dataclass
class Filters:
    """The Regenerations page's filters, from its query string."""

    status: str | None = None
    failure_class: str | None = None
    user_id: str | None = None
    plan_id: str | None = None
    created_from: date | None = None
    created_to: date | None = None

    def as_args(self) -> dict[str, str]:
        return {
            key: str(value) for key, value in dataclasses.asdict(self).items() if value is not None
        }


class BadFilter(ValueError):
    """A filter or cursor of the query string that cannot be read."""


def read_filters(args: Any) -> Filters:
    def choice(name: str, allowed: list[str]) -> str | None:
        value = args.get(name) or None
        if value is not None and value not in allowed:
            raise BadFilter(f"{name} must be one of {', '.join(allowed)}")
        return value

    def day(name: str) -> date | None:
        value = args.get(name) or None
        if value is None:
            return None
        try:
            day = date.fromisoformat(value)
        except ValueError:
            raise BadFilter(f"{name} must be a date, YYYY-MM-DD") from None
        if day == date.max:  # the range ends the day after, which no date holds
            raise BadFilter(f"{name} must be before {date.max.isoformat()}")
        return day

    def identifier(name: str, length: int) -> str | None:
        value = args.get(name) or None
        if value is not None and not findable_id(value, length):
            raise BadFilter(f"{name} is longer than {length} characters or not storable text")
        return value

    return Filters(
        status=choice("status", [str(s) for s in Status]),
        failure_class=choice("failure_class", [str(c) for c in FailureClass]),
        user_id=identifier("user_id", USER_ID_LENGTH),
        plan_id=identifier("plan_id", PLAN_ID_LENGTH),
        created_from=day("created_from"),
        created_to=day("created_to"),
    )


def encode_cursor(created_at: datetime, generation_id: str) -> str:
    raw = f"{as_utc(created_at).isoformat()}|{generation_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, generation_id = raw.split("|", 1)
        return as_utc(datetime.fromisoformat(stamp)), generation_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadFilter("after is not a cursor this console made") from None


def regeneration_page(
    state: RegenState, filters: Filters, after: str | None
) -> tuple[list[Regeneration], str | None]:
    """One page of regenerations, newest first, and the cursor of the next (or ``None``).

    Keyset pagination on ``(created_at, id)``: each page is an index range scan
    starting where the last one ended, never an OFFSET that reads every row before.
    """
    query = select(Regeneration)
    if filters.status:
        query = query.where(Regeneration.status == filters.status)
    if filters.failure_class:
        # Only failed regenerations have a class: saying so lets the class index serve the
        # order too.
        query = query.where(
            Regeneration.failure_class == filters.failure_class,
            Regeneration.status == Status.FAILED,
        )
    if filters.user_id:
        query = query.where(Regeneration.user_id == filters.user_id)
    if filters.plan_id:
        query = query.where(Regeneration.plan_id == filters.plan_id)
    if filters.created_from:
        start = datetime.combine(filters.created_from, time(), UTC)
        query = query.where(Regeneration.created_at >= start)
    if filters.created_to:
        end = datetime.combine(filters.created_to + timedelta(days=1), time(), UTC)
        query = query.where(Regeneration.created_at < end)
    if after:
        query = query.where(
            tuple_(Regeneration.created_at, Regeneration.id) < tuple_(*decode_cursor(after))
        )
    rows = list(
        state.db.session.scalars(
            query.order_by(Regeneration.created_at.desc(), Regeneration.id.desc()).limit(
                PAGE_SIZE + 1
            )
        )
    )
    if len(rows) <= PAGE_SIZE:
        return rows, None
    last = rows[PAGE_SIZE - 1]
    return rows[:PAGE_SIZE], encode_cursor(last.created_at, last.id)


def regeneration_detail(state: RegenState, generation_id: str) -> Regeneration | None:
    if not findable_id(generation_id, ID_LENGTH):
        return None
    return state.db.session.scalar(
        select(Regeneration)
        .where(Regeneration.id == generation_id)
        .options(selectinload(Regeneration.attempt_rows))
    )


def failed_by_class(state: RegenState) -> dict[str, int]:
    """Failed regenerations per failure class (requeue candidates are among them)."""
    rows = state.db.session.execute(
        select(Regeneration.failure_class, func.count())
        .where(Regeneration.failure_class.is_not(None), Regeneration.status == Status.FAILED)
        .group_by(Regeneration.failure_class)
    )
    return {str(name): int(count) for name, count in rows if name is not None}


def timeline(regeneration: Regeneration, actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What happened to a regeneration, oldest first: its submission, each attempt's start
    and end, the retries and errors it recorded, its end, and operators' actions on it."""
    events: list[dict[str, Any]] = [
        {"at": as_utc(regeneration.created_at), "event": "submitted", "detail": regeneration.kind}
    ]
    for attempt in regeneration.attempt_rows:
        ended = as_utc(attempt.created_at)
        events.append(
            {
                "at": ended - timedelta(milliseconds=attempt.duration_ms),
                "event": f"attempt {attempt.number} started",
                "detail": attempt.provider,
            }
        )
        detail = attempt.failure_class or f"{attempt.modules_count} modules"
        events.append(
            {"at": ended, "event": f"attempt {attempt.number} {attempt.outcome}", "detail": detail}
        )
    recorded = {attempt.number for attempt in regeneration.attempt_rows}
    for entry in regeneration.error_history:
        if entry.get("attempt") not in recorded and entry.get("at"):
            events.append(
                {
                    "at": as_utc(datetime.fromisoformat(entry["at"])),
                    "event": f"attempt {entry.get('attempt')} failed",
                    "detail": f"{entry.get('class')}: {entry.get('error')}",
                }
            )
    events.sort(key=lambda event: event["at"])
    if regeneration.finished_at is not None:
        # Last of the row's own events: its attempt row is written in the same commit,
        # a few microseconds after finished_at was taken.
        events.append(
            {
                "at": as_utc(regeneration.finished_at),
                "event": regeneration.status,
                "detail": regeneration.failure_class or "",
                "after": events[-1]["at"],
            }
        )
    for action in actions:
        events.append(
            {
                "at": action["at"],
                "event": f"operator {action['operator']}: {action['action']}",
                "detail": action["detail"],
            }
        )
    return sorted(events, key=lambda event: max(event["at"], event.get("after", event["at"])))
