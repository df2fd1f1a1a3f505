"""The monthly regeneration quota per tier, counted in the database.

A charge is one conditional upsert (``used = used + 1 WHERE used < limit``) on
the user's ``plan_regen_usage`` row for the month, in the same transaction
that records the regeneration, so concurrent requests (any number of web
processes) can never take more than the limit.
The quota is given back when a request ends without being queued, and when a
regeneration fails for a reason that is ours rather than the user's
(:data:`REFUNDED_FAILURES`); a regeneration is refunded at most once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flask import current_app
from flask_sqlalchemy.session import Session
from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import scoped_session

from .config import UNLIMITED
from .documents import iso_utc
from .errors import ApiError
from .models import FailureClass, Regeneration, Usage
from .state import RegenState

REFUNDED_FAILURES: frozenset[FailureClass] = frozenset(
    {
        FailureClass.PROVIDER_ERROR,
        FailureClass.RATE_LIMIT,
        FailureClass.TIMEOUT,
        FailureClass.PROVIDER_REJECTED,
        FailureClass.TRUNCATED,
        FailureClass.INTERNAL,
    }
)
"""Failure classes that give the quota back: the provider's (or its settings') fault, or
ours, not the user's. ``validation`` and ``refused`` are about what was asked, and are kept."""


@dataclasses.dataclass(frozen=True)
class Reservation:
    """One regeneration counted against ``user_id``'s quota for ``period``."""

    user_id: str
    period: str


def current_period(now: datetime | None = None) -> str:
    """The calendar month (UTC) as ``"YYYY-MM"``."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m")


def period_resets_at(period: str) -> datetime:
    """When the month after ``period`` starts (UTC)."""
    year, month = (int(part) for part in period.split("-"))
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def monthly_limit(tier: str, config: Mapping[str, Any]) -> int | None:
    """The tier's monthly quota; ``None`` for unlimited."""
    limit = config["PLAN_REGEN_MONTHLY_QUOTAS"][tier]
    return None if limit == UNLIMITED else int(limit)


def charge(state: RegenState, regeneration: Regeneration) -> None:
    """Count ``regeneration`` against its user's quota, or answer 429 ``QUOTA_EXCEEDED``.

    The month charged is the row's ``quota_period``. Runs inside the
    transaction that inserts the regeneration and is committed with it: a
    request that ends up not recorded (409 duplicate, 429) never spends quota,
    and no separate commit is needed.
    """
    period = regeneration.quota_period
    assert period is not None, "set quota_period = current_period() before charging"
    limit = monthly_limit(regeneration.tier, current_app.config)
    if not _take_one(state.db.session, regeneration.user_id, period, limit):
        raise ApiError(
            429,
            "QUOTA_EXCEEDED",
            f"The monthly regeneration quota of the {regeneration.tier} tier ({limit}) is used up.",
            details={
                "limit": limit,
                "remaining": 0,
                "resetsAt": iso_utc(period_resets_at(period)),
            },
        )


def give_back(state: RegenState, regeneration: Regeneration) -> None:
    """Return the quota of a regeneration that was recorded but never queued (not committed)."""
    if regeneration.quota_period is not None:
        _give_back(
            state.db.session,
            Reservation(user_id=regeneration.user_id, period=regeneration.quota_period),
        )


def refund_failed(state: RegenState, regeneration: Regeneration, failure_class: str) -> bool:
    """Give back the quota of a regeneration that failed for a reason of ours.

    Call it when the regeneration has failed for good (after its last retry),
    before committing that outcome: the refund commits with it. Clearing
    ``quota_period`` with a conditional UPDATE makes a second call a no-op.
    """
    return failure_class in REFUNDED_FAILURES and refund(state, regeneration)


def refund(state: RegenState, regeneration: Regeneration) -> bool:
    """Give back ``regeneration``'s quota, at most once (not committed); ``False`` if done."""
    period = regeneration.quota_period
    if period is None:
        return False
    session = state.db.session
    cleared = session.execute(
        update(Regeneration)
        .where(Regeneration.id == regeneration.id, Regeneration.quota_period.is_not(None))
        .values(quota_period=None)
        .execution_options(synchronize_session=False)
    )
    if not getattr(cleared, "rowcount", 0):
        return False
    _give_back(session, Reservation(user_id=regeneration.user_id, period=period))
    return True


@dataclasses.dataclass(frozen=True)
class MonthlyUsage:
    """Where a user stands in this month's quota (``GET /usage``)."""

    period: str
    limit: int | None
    used: int
    remaining: int | None
    resets_at: datetime


def monthly_usage(state: RegenState, user_id: str, tier: str) -> MonthlyUsage:
    """The user's quota this month; ``limit`` and ``remaining`` are ``None`` when unlimited."""
    period = current_period()
    row = state.db.session.get(Usage, (user_id, period))
    used = row.used if row is not None else 0
    limit = monthly_limit(tier, current_app.config)
    return MonthlyUsage(
        period=period,
        limit=limit,
        used=used,
        remaining=None if limit is None else max(limit - used, 0),
        resets_at=period_resets_at(period),
    )


def _take_one(
    session: scoped_session[Session], user_id: str, period: str, limit: int | None
) -> bool:
    """Count one regeneration unless the month's ``limit`` is reached (race-free)."""
    if limit is not None and limit <= 0:
        return False
    dialect = session.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        # One upsert: the first request of the month inserts used = 1, later ones add
        # one while under the limit (no row changes past it).
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = insert(Usage).values(user_id=user_id, period=period, used=1)
        upsert = statement.on_conflict_do_update(
            index_elements=[Usage.user_id, Usage.period],
            set_={"used": Usage.used + 1},
            where=Usage.used < limit if limit is not None else None,
        )
        # RETURNING, not rowcount: psycopg counts the row even when WHERE skips the update.
        return session.execute(upsert.returning(Usage.used)).first() is not None
    # Other databases: a savepoint absorbs the duplicate-key error of a concurrent insert.
    try:
        with session.begin_nested():
            session.add(Usage(user_id=user_id, period=period, used=0))
    except IntegrityError:
        pass
    increment = (
        update(Usage)
        .where(Usage.user_id == user_id, Usage.period == period)
        .values(used=Usage.used + 1)
        .execution_options(synchronize_session=False)
    )
    if limit is not None:
        increment = increment.where(Usage.used < limit)
    return bool(getattr(session.execute(increment), "rowcount", 0))


def _give_back(session: scoped_session[Session], reservation: Reservation) -> None:
    session.execute(
        update(Usage)
        .where(
            Usage.user_id == reservation.user_id,
            Usage.period == reservation.period,
            Usage.used > 0,
        )
        .values(used=Usage.used - 1)
        .execution_options(synchronize_session=False)
    )
