"""The monthly regeneration quota per tier, counted in the database.

A charge is one conditional upsert (``used = used + 1 WHERE used < limit``) on
the user's ``plan_regen_usage`` row for the month, in the same transaction
that records the regeneration, so concurrent requests (any number of web
processes) can never take more than the limit. On PostgreSQL the
regeneration's INSERT and the charge are one statement (the INSERT in a CTE).
The quota is given back when a request ends without being queued, and follows
the money as a regeneration ends (:func:`settle`): a regeneration none of whose
attempts the provider billed gets its quota back (unless it failed for what was
asked, :data:`KEPT_FAILURES`), and a retry after a billed answer takes one more
unit (:func:`charge_retry`). A regeneration is refunded at most once.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from flask import current_app
from flask_sqlalchemy.session import Session
from sqlalchemy import Integer, Select, Table, bindparam, case, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import scoped_session
from sqlalchemy.sql.dml import Insert, ReturningInsert

from .config import UNLIMITED
from .documents import iso_utc
from .errors import ApiError
from .models import FailureClass, GenerationAttempt, Regeneration, Usage
from .state import RegenState

KEPT_FAILURES: frozenset[FailureClass] = frozenset({FailureClass.VALIDATION, FailureClass.REFUSED})
"""Failure classes that keep the charge even when no attempt was billed: they are about
what was asked (a prompt a content filter stopped), not the provider's or our fault.
Every other regeneration whose attempts were none of them billed gets its quota back."""

QUOTA_USED_UP = (
    "The monthly regeneration quota is used up: the model's answer could not be used and "
    "another attempt would need one more regeneration of the quota."
)


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


def record_charged(state: RegenState, row: Insert, values: Mapping[str, Any]) -> None:
    """Execute ``row`` (a regeneration's INSERT) with ``values`` and charge its user's quota.

    Raises 429 ``QUOTA_EXCEEDED`` when the month (``values["quota_period"]``) of
    the tier (``values["tier"]``) is used up; the caller then rolls back, which
    also undoes the INSERT. Nothing is committed here: the caller commits the
    row and its charge together, so a request that ends up not recorded (409
    duplicate, 429) never spends quota. An INSERT that breaks a constraint
    raises ``IntegrityError`` before anything is charged.

    On PostgreSQL this is one statement, the INSERT in a CTE that the charge
    reads (one round trip, not two); elsewhere the INSERT, then the charge.
    """
    period = values["quota_period"]
    assert period is not None, "set quota_period = current_period() before charging"
    limit = monthly_limit(values["tier"], current_app.config)
    session = state.db.session
    if session.get_bind().dialect.name == "postgresql" and (limit is None or limit > 0):
        statement = _insert_and_charge(row, limited=limit is not None)
        charged = session.execute(statement, {**values, "quota_limit": limit}).first() is not None
    else:
        session.execute(row, values)
        charged = _take_one(session, values["user_id"], period, limit)
    if not charged:
        raise ApiError(
            429,
            "QUOTA_EXCEEDED",
            f"The monthly regeneration quota of the {values['tier']} tier ({limit}) is used up.",
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


def billed_attempts(state: RegenState, regeneration_id: str) -> int:
    """How many attempts of a regeneration the provider billed (recorded ones, this
    transaction's included)."""
    return (
        state.db.session.scalar(
            select(func.count())
            .select_from(GenerationAttempt)
            .where(GenerationAttempt.regeneration_id == regeneration_id, GenerationAttempt.billed)
        )
        or 0
    )


def settle(state: RegenState, regeneration: Regeneration, failure_class: str | None) -> None:
    """Make the quota a regeneration keeps follow the money, as it ends (not committed).

    It keeps one unit per billed attempt (at least one when it succeeded or failed for a
    class of :data:`KEPT_FAILURES`); the rest goes back. ``failure_class`` is ``None``
    for a success, ``""`` when the plan was deleted. Refunding everything clears
    ``quota_period`` with a conditional UPDATE, so it happens at most once.
    """
    if regeneration.quota_period is None:
        return
    billed = billed_attempts(state, regeneration.id)
    kept_unbilled = failure_class is None or failure_class in KEPT_FAILURES
    keep = max(billed, 1 if kept_unbilled else 0)
    if keep == 0:
        refund(state, regeneration)
        return
    session = state.db.session
    held = session.execute(
        update(Regeneration)
        .where(
            Regeneration.id == regeneration.id,
            Regeneration.quota_period.is_not(None),
            Regeneration.quota_units > keep,
        )
        .values(quota_units=keep)
        .returning(literal(1))
        .execution_options(synchronize_session=False)
    ).first()
    if held is not None:
        # The units above `keep` were taken before retries that were not billed.
        extra = regeneration.quota_units - keep
        if extra > 0:
            _give_back(session, _reservation(regeneration), extra)


def charge_retry(state: RegenState, regeneration: Regeneration) -> bool:
    """Before a retry after a billed attempt (not yet recorded): one more unit of quota
    when every unit held paid for a billed answer, so a user's billed attempts never
    exceed the quota (not committed). ``False`` when none is left: no retry."""
    if regeneration.quota_period is None:
        return True  # refunded already, or an operator's re-run: no user quota involved
    if billed_attempts(state, regeneration.id) + 1 < regeneration.quota_units:
        return True
    session = state.db.session
    limit = monthly_limit(regeneration.tier, current_app.config)
    if not _take_one(session, regeneration.user_id, regeneration.quota_period, limit):
        return False
    session.execute(
        update(Regeneration)
        .where(Regeneration.id == regeneration.id)
        .values(quota_units=Regeneration.quota_units + 1)
        .execution_options(synchronize_session=False)
    )
    regeneration.quota_units += 1
    return True


def refund(state: RegenState, regeneration: Regeneration) -> bool:
    """Give back all of ``regeneration``'s quota, at most once (not committed); ``False`` if
    done already."""
    if regeneration.quota_period is None:
        return False
    session = state.db.session
    cleared = session.execute(
        update(Regeneration)
        .where(Regeneration.id == regeneration.id, Regeneration.quota_period.is_not(None))
        .values(quota_period=None)
        .returning(Regeneration.quota_units)
        .execution_options(synchronize_session=False)
    ).first()
    if cleared is None:
        return False
    _give_back(session, _reservation(regeneration), cleared[0])
    return True


def _reservation(regeneration: Regeneration) -> Reservation:
    assert regeneration.quota_period is not None
    return Reservation(user_id=regeneration.user_id, period=regeneration.quota_period)


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
        params = {"user_id": user_id, "period": period, "quota_limit": limit}
        upsert = _upsert(dialect, limited=limit is not None)
        return session.execute(upsert, params).first() is not None
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


_USAGE = cast(Table, Usage.__table__)
_QUOTA_LIMIT = bindparam("quota_limit", type_=Integer)


@functools.cache
def _upsert(dialect: str, *, limited: bool) -> ReturningInsert[tuple[int]]:
    """One upsert: the month's first charge inserts ``used = 1``, later ones add one while
    under ``:quota_limit`` (no row changes past it). Built once per shape, so the engine's
    compiled cache finds it without building a cache key from a new statement each time."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(_USAGE).values(
        user_id=bindparam("user_id"), period=bindparam("period"), used=1
    )
    # RETURNING, not rowcount: psycopg counts the row even when WHERE skips the update.
    return statement.on_conflict_do_update(
        index_elements=[_USAGE.c.user_id, _USAGE.c.period],
        set_={"used": _USAGE.c.used + 1},
        where=_USAGE.c.used < _QUOTA_LIMIT if limited else None,
    ).returning(_USAGE.c.used)


@functools.cache
def _insert_and_charge(row: Insert, *, limited: bool) -> Select[tuple[int]]:
    """PostgreSQL: ``row`` in a CTE, and the upsert of :func:`_upsert` fed by what it inserted.

    ``WITH regeneration AS (INSERT ... RETURNING user_id, quota_period), charge AS
    (INSERT INTO plan_regen_usage SELECT ... FROM regeneration ON CONFLICT ... DO
    UPDATE ... WHERE used < :quota_limit RETURNING used) SELECT used FROM charge``:
    no row when the quota is used up (the INSERT still ran: the caller rolls back).
    """
    inserted = row.returning(row.table.c.user_id, row.table.c.quota_period).cte("regeneration")
    charge = (
        postgresql.insert(_USAGE)
        .from_select(
            ["user_id", "period", "used"],
            select(inserted.c.user_id, inserted.c.quota_period, literal(1)),
        )
        .on_conflict_do_update(
            index_elements=[_USAGE.c.user_id, _USAGE.c.period],
            set_={"used": _USAGE.c.used + 1},
            where=_USAGE.c.used < _QUOTA_LIMIT if limited else None,
        )
        .returning(_USAGE.c.used)
        .cte("charge")
    )
    return select(charge.c.used)


def _give_back(session: scoped_session[Session], reservation: Reservation, units: int = 1) -> None:
    session.execute(
        update(Usage)
        .where(Usage.user_id == reservation.user_id, Usage.period == reservation.period)
        .values(used=case((Usage.used > units, Usage.used - units), else_=0))
        .execution_options(synchronize_session=False)
    )
