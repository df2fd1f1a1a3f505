"""Every status change of a regeneration goes through this module.

::

    submit   -> pending
    claim    pending -> processing (an attempt starts)   | pending -> failed (capped)
    finish   processing -> succeeded (with the new content, in one commit)
    fail     processing -> pending (retry after a backoff) | processing -> failed
    release  processing -> pending | failed              (the attempt's worker is gone)
    cancel   pending | processing -> canceled
    plan_deleted  processing -> canceled                 (the plan is gone; quota given back)
    requeue  pending -> pending                          (a fresh job for a lost one)
    give_up  pending -> failed                           (no provider came back; no call made)

Each change is one conditional UPDATE on the row's status (and, for an
attempt, its number), so of two actors racing for a row exactly one wins: a
cancel and a finishing attempt, two deliveries of one job, two sweeps. The
plan's content is only replaced in the commit that marks an attempt
``succeeded``, so no failure leaves a plan half-replaced.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy import Table, Update, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from . import checkpoints, leases, progress, queue, signals, spend
from .errors import ApiError, GenerationError, ProviderError, queue_unavailable
from .logs import context_of
from .metrics import count_enqueue
from .models import (
    ACTIVE_STATUSES,
    ChargedTo,
    FailureClass,
    GenerationAttempt,
    Regeneration,
    Status,
    as_utc,
    new_id,
    utcnow,
)
from .quota import QUOTA_USED_UP, charge_retry, current_period, give_back, record_charged, settle
from .retries import retry_delay, should_retry
from .state import RegenState
from .types import PlanInput

logger = logging.getLogger("flask_plan_regen.lifecycle")

# A pending row younger than this may still be on its way to its queue (or to RQ's
# scheduler, for a retry): the sweep leaves it alone.
PENDING_GRACE = timedelta(seconds=15)

_REGENERATIONS = cast(Table, Regeneration.__table__)
_ATTEMPTS = cast(Table, GenerationAttempt.__table__)
_INSERT_ROW = insert(_REGENERATIONS).values(
    {column: bindparam(column.key, type_=column.type) for column in _REGENERATIONS.columns}
)
# The columns a new row does not set itself.
_NEW_ROW: dict[str, Any] = {
    "status": Status.PENDING,
    "attempts": 0,
    "failure_class": None,
    "error": None,
    "error_history": [],
    "result": None,
    "started_at": None,
    "finished_at": None,
    "quota_units": 1,
    "reserved_usd": None,
}


class UnknownRegeneration(RuntimeError):
    """A job names a regeneration this app's database does not have."""


class WorkerLost(ProviderError):
    """The worker running an attempt died or hung before the attempt ended."""

    public_message = "The worker running this attempt stopped before it finished."


def submit(
    state: RegenState,
    *,
    plan_id: str,
    user_id: str,
    overrides: dict[str, Any],
    tier: str,
    priority: int,
    queue_name: str,
    kind: str = "regeneration",
    charge_quota: bool = True,
    plan: PlanInput | None = None,
) -> Regeneration:
    """Insert a pending regeneration and enqueue its job, or raise an :class:`ApiError`.

    One transaction inserts the row (the unique index answers 409 when the
    plan is busy), charges the monthly quota (429 when used up) and, when the
    tier has a spend budget, reserves the worst case of ``plan``'s regeneration
    (429 ``BUDGET_EXCEEDED``), so a refused request spends nothing. Once the
    app's monthly budget is spent, it answers 503 ``BUDGET_PAUSED``. It is
    committed before the job is enqueued so that a worker always finds the row;
    if Redis refuses the job, the row is deleted and the quota and reservation
    given back, so nothing is left pending
    without a job. With ``PLAN_REGEN_EAGER`` the job then runs here, to its end.
    Returns the row as a transient object (not in the session).
    """
    session = state.db.session
    spend.ensure_not_paused(state)
    now = utcnow()
    config = current_app.config
    values = {
        **_NEW_ROW,
        "id": new_id(),
        "plan_id": plan_id,
        "user_id": user_id,
        "kind": kind,
        "overrides": overrides,
        "tier": tier,
        "priority": priority,
        "queue": queue_name,
        "quota_period": current_period(now) if charge_quota else None,
        # Without the user's quota it is an operator's re-run: spend charged to the operator.
        "charged_to": ChargedTo.USER if charge_quota else ChargedTo.OPERATOR,
        "created_at": now,
        "updated_at": now,
        "reserved_usd": spend.reservation(config, tier, plan) if charge_quota else None,
    }
    # A Core INSERT of all the values, not the ORM unit of work: the row's values are
    # all known here, and the shorter the write transaction, the less SQLite's single
    # writer lock is held (docs/performance.md).
    try:
        if charge_quota:
            record_charged(state, _INSERT_ROW, values)
            spend.reserve(state, values)
        else:
            session.execute(_INSERT_ROW, values)
        session.commit()
    except IntegrityError:
        session.rollback()
        raise already_queued(state, plan_id) from None
    except ApiError:
        session.rollback()
        raise
    regeneration = Regeneration(**values)
    try:
        _enqueue(state, regeneration)
    except RedisError as error:
        give_back(state, regeneration)
        spend.release(state, regeneration)
        session.execute(delete(Regeneration).where(Regeneration.id == regeneration.id))
        session.commit()
        raise queue_unavailable() from error
    signals.send(signals.regeneration_queued, session, regeneration.id)
    if config["PLAN_REGEN_EAGER"]:
        queue.run_now(state.redis, regeneration.id)
    return regeneration


def _enqueue(state: RegenState, regeneration: Regeneration) -> None:
    queue.enqueue(state.redis, regeneration, current_app.config)
    logger.info("queued %s %s", regeneration.kind, regeneration.id, extra=context_of(regeneration))
    count_enqueue(regeneration.queue)


def already_queued(state: RegenState, plan_id: str) -> ApiError:
    active = state.db.session.scalar(
        select(Regeneration.id).where(
            Regeneration.plan_id == plan_id, Regeneration.status.in_(ACTIVE_STATUSES)
        )
    )
    return ApiError(
        409,
        "REGENERATION_ALREADY_QUEUED",
        "This plan already has a regeneration pending or in progress.",
        details={"generationId": active},
    )


def claim(state: RegenState, generation_id: str) -> Regeneration | None:
    """Start an attempt: ``pending`` -> ``processing``, counted; return the row.

    ``None`` when there is nothing to run: the regeneration has ended, another
    delivery's attempt is running (it holds its lease), or it used up its
    attempts (then it is failed as ``capped``). A row left ``processing`` by an
    attempt that can no longer be running (no lease) is released and claimed.
    Raises :class:`UnknownRegeneration` when the row does not exist.
    """
    regeneration = _claim_pending(state, generation_id)
    if regeneration is not None:
        return regeneration
    row = state.db.session.get(Regeneration, generation_id)
    if row is None:
        state.db.session.rollback()
        raise UnknownRegeneration(generation_id)
    status, started_at = row.status, row.started_at
    state.db.session.rollback()
    if status == Status.PENDING:
        _fail_capped(state, generation_id)
    elif status == Status.PROCESSING and _attempt_is_gone(state, generation_id, started_at):
        why = "its attempt's worker is gone (no lease); taken over by a new delivery"
        if release(state, generation_id, why, requeue=False) == Status.PENDING:
            return _claim_pending(state, generation_id)
    return None


def _claim_pending(state: RegenState, generation_id: str) -> Regeneration | None:
    session = state.db.session
    now = utcnow()
    # RETURNING the row: the claim and the read of what was claimed are one statement.
    row = session.execute(
        _CLAIM,
        {
            "generation_id": generation_id,
            "max_attempts": current_app.config["PLAN_REGEN_MAX_ATTEMPTS"],
            "now": now,
        },
    ).first()
    session.commit()
    if row is None:
        return None
    progress.publish(state, generation_id, Status.PROCESSING)
    signals.send(signals.regeneration_started, session, generation_id)
    # Transient, with the values RETURNING read: no later read of the row costs a SELECT.
    return Regeneration(**row._mapping)


_CLAIM = (
    update(_REGENERATIONS)
    .where(
        _REGENERATIONS.c.id == bindparam("generation_id"),
        _REGENERATIONS.c.status == Status.PENDING,
        _REGENERATIONS.c.attempts < bindparam("max_attempts"),
    )
    .values(
        status=Status.PROCESSING,
        attempts=_REGENERATIONS.c.attempts + 1,
        started_at=bindparam("now"),
        updated_at=bindparam("now"),
    )
    .returning(*_REGENERATIONS.c)
)


def _fail_capped(state: RegenState, generation_id: str) -> None:
    session = state.db.session
    capped = session.execute(
        update(Regeneration)
        .where(Regeneration.id == generation_id, Regeneration.status == Status.PENDING)
        .values(
            status=Status.FAILED,
            failure_class=FailureClass.CAPPED,
            error="The regeneration used up its attempts.",
            finished_at=utcnow(),
            updated_at=utcnow(),
        )
    )
    if getattr(capped, "rowcount", 0):
        row = session.get(Regeneration, generation_id)
        if row is not None:
            spend.release(state, row)
    session.commit()
    if getattr(capped, "rowcount", 0):
        progress.publish(state, generation_id, Status.FAILED)
        signals.send(signals.regeneration_failed, session, generation_id)


def _attempt_is_gone(state: RegenState, generation_id: str, started_at: datetime | None) -> bool:
    """No lease, and started longer ago than a lease lives (so it was set, then lapsed)."""
    ttl = timedelta(seconds=leases.lease_ttl())
    return (started_at is None or as_utc(started_at) < utcnow() - ttl) and not leases.is_held(
        state, generation_id
    )


def finish(
    state: RegenState,
    regeneration: Regeneration,
    attempt: GenerationAttempt,
    summary: dict[str, Any],
    save_content: Callable[[], None],
) -> bool:
    """``processing`` -> ``succeeded``, with ``save_content()`` and the attempt row, in one commit.

    ``False`` (nothing saved) when this attempt no longer holds the row: a
    cancel or a sweep got there first. The status change comes first, so the
    row lock it takes makes a racing cancel wait for this transaction.
    """
    session = state.db.session
    generation_id = regeneration.id
    if not _change_attempt(
        state, generation_id, attempt.number, status=Status.SUCCEEDED, result=summary,
        finished_at=utcnow(),
    ):  # fmt: skip
        session.rollback()
        _record_lost_attempt(state, regeneration, attempt)
        return False
    save_content()
    _record(state, regeneration, attempt)
    if regeneration.quota_units > 1:  # a retry took more: keep one per billed attempt
        settle(state, regeneration, None)
    spend.release(state, regeneration)
    session.commit()
    progress.publish(state, generation_id, Status.SUCCEEDED)
    signals.send(signals.regeneration_succeeded, session, generation_id)
    return True


def fail(
    state: RegenState,
    regeneration: Regeneration,
    attempt: GenerationAttempt | None,
    error: GenerationError,
) -> int | GenerationError | None:
    """Record a failed attempt: back to ``pending`` to retry, else ``failed``.

    Returns the seconds to wait before the retry; ``error`` when the
    regeneration failed for good with it; ``None`` when this attempt no longer
    held the row.
    Quota follows the money: a retry after a billed answer takes one more unit
    of quota, or is not made when none is left (the regeneration fails with the
    quota's message); one that fails for good keeps a unit per billed attempt
    (quota.settle). The old content stays either way.
    """
    config = current_app.config
    generation_id, number = regeneration.id, regeneration.attempts
    retry = should_retry(error, number, config)
    if retry and attempt is not None and attempt.billed and not charge_retry(state, regeneration):
        # The provider billed this answer and the user has no quota for another billed one.
        retry = False
        error = copy.copy(error)  # a host's subclass may take other arguments
        error.public_message = QUOTA_USED_UP
    logger.warning(
        "regeneration %s attempt %s failed (%s, %s): %s",
        generation_id,
        number,
        error.failure_class,
        "will retry" if retry else "final",
        error,
    )
    history = [
        *regeneration.error_history,
        {
            "attempt": number,
            "class": str(error.failure_class),
            "error": error.public_message,
            "at": utcnow().isoformat(),
        },
    ]
    outcome: dict[str, Any] = (
        {"status": Status.PENDING}
        if retry
        else {
            "status": Status.FAILED,
            "failure_class": error.failure_class,
            "error": error.public_message,
            "finished_at": utcnow(),
        }
    )
    session = state.db.session
    if not _change_attempt(state, generation_id, number, error_history=history, **outcome):
        session.rollback()
        if attempt is not None:
            _record_lost_attempt(state, regeneration, attempt)
        return None
    if attempt is not None:
        _record(state, regeneration, attempt)
    if not retry:
        settle(state, regeneration, error.failure_class)
        spend.release(state, regeneration)
    session.commit()
    progress.publish(state, generation_id, outcome["status"])
    if retry:
        return retry_delay(error, number, config)
    signals.send(signals.regeneration_failed, session, generation_id)
    return error


def give_up(state: RegenState, generation_id: str, error: GenerationError) -> bool:
    """``pending`` -> ``failed`` without an attempt: the job waited for a provider that
    did not come back (no call made now: the quota follows the attempts billed before,
    and the budget reservation is released). ``False`` when the row was no longer
    pending."""
    session = state.db.session
    regeneration = session.get(Regeneration, generation_id)
    if regeneration is None or regeneration.status != Status.PENDING:
        session.rollback()
        return False
    now = utcnow()
    history = [
        *regeneration.error_history,
        {"attempt": None, "class": str(error.failure_class), "error": error.public_message,
         "at": now.isoformat()},
    ]  # fmt: skip
    failed = session.execute(
        update(Regeneration)
        .where(Regeneration.id == generation_id, Regeneration.status == Status.PENDING)
        .values(
            status=Status.FAILED,
            failure_class=error.failure_class,
            error=error.public_message,
            error_history=history,
            finished_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if not getattr(failed, "rowcount", 0):
        session.rollback()
        return False
    settle(state, regeneration, error.failure_class)
    spend.release(state, regeneration)
    session.commit()
    logger.warning("regeneration %s failed without a call (%s): %s", generation_id,
                   error.failure_class, error)  # fmt: skip
    progress.publish(state, generation_id, Status.FAILED)
    signals.send(signals.regeneration_failed, session, generation_id)
    return True


def _change_attempt(state: RegenState, generation_id: str, number: int, **values: Any) -> bool:
    """Apply ``values`` if attempt ``number`` still holds the row (it is ``processing``).

    A Core UPDATE: a row the session has loaded keeps its old values until the
    commit expires it; callers roll back when the claim was lost.
    """
    changed = state.db.session.execute(
        _attempt_update(tuple(sorted(values))),
        {
            "generation_id": generation_id,
            "number": number,
            "updated_at": utcnow(),
            **{f"new_{key}": value for key, value in values.items()},
        },
    )
    return bool(getattr(changed, "rowcount", 0))


@functools.cache
def _attempt_update(keys: tuple[str, ...]) -> Update:
    """The conditional UPDATE of :func:`_change_attempt` setting ``keys``, built once."""
    columns = _REGENERATIONS.c
    return (
        update(_REGENERATIONS)
        .where(
            columns.id == bindparam("generation_id"),
            columns.status == Status.PROCESSING,
            columns.attempts == bindparam("number"),
        )
        .values(
            {"updated_at": bindparam("updated_at")}
            | {key: bindparam(f"new_{key}", type_=columns[key].type) for key in keys}
        )
    )


def _record(state: RegenState, regeneration: Regeneration, attempt: GenerationAttempt) -> None:
    """Insert the attempt's row: one Core INSERT of the values it was given (the columns'
    defaults fill the rest), not the ORM unit of work for a single row; and charge what
    it cost to the month's spend."""
    values = {
        key: value for key, value in vars(attempt).items() if key in _ATTEMPTS.c and key != "id"
    }
    state.db.session.execute(insert(_ATTEMPTS), values)
    spend.charge(state, regeneration, attempt)


def _record_lost_attempt(
    state: RegenState, regeneration: Regeneration, attempt: GenerationAttempt
) -> None:
    """Record a billed attempt whose row was taken from it meanwhile (canceled), so that a
    paid call is never unrecorded; unless a takeover already recorded that attempt."""
    if not attempt.billed:
        return
    session = state.db.session
    recorded = session.scalar(
        select(GenerationAttempt.id).where(
            GenerationAttempt.regeneration_id == regeneration.id,
            GenerationAttempt.number == attempt.number,
        )
    )
    if recorded is not None:
        session.rollback()
        return
    attempt.outcome = Status.CANCELED
    try:
        _record(state, regeneration, attempt)
        session.commit()
    except IntegrityError:  # recorded by a takeover in the meantime
        session.rollback()


def release(state: RegenState, generation_id: str, why: str, *, requeue: bool) -> Status | None:
    """Count a lost ``processing`` attempt as failed; return the row's new status.

    The attempt gets its attempt row like any failed one. Back to ``pending``
    (attempts left) it is queued again when ``requeue`` (a delivery that takes
    the row over passes ``False``: it runs the next attempt itself). ``None``
    when the row was not ``processing``.
    """
    session = state.db.session
    regeneration = session.get(Regeneration, generation_id)
    if regeneration is None or regeneration.status != Status.PROCESSING:
        session.rollback()
        return None
    started = as_utc(regeneration.started_at) if regeneration.started_at else utcnow()
    attempt = GenerationAttempt(
        regeneration_id=generation_id,
        number=regeneration.attempts,
        outcome=Status.FAILED,
        failure_class=FailureClass.PROVIDER_ERROR,
        error=WorkerLost.public_message,
        duration_ms=max(int((utcnow() - started).total_seconds() * 1000), 0),
        provider=state.provider.name,
        charged_to=regeneration.charged_to,
        prompt_hash="",
    )
    fail(state, regeneration, attempt, WorkerLost(why))
    regeneration = session.get(Regeneration, generation_id)
    status = Status(regeneration.status) if regeneration is not None else None
    session.rollback()
    logger.warning("regeneration %s: %s; now %s", generation_id, why, status)
    if requeue and regeneration is not None and status == Status.PENDING:
        requeue_job(state, regeneration)
    return status


def cancel(state: RegenState, regeneration: Regeneration) -> Regeneration:
    """``pending``/``processing`` -> ``canceled``, then stop its RQ job.

    The database decides: once the row is canceled no delivery can claim it
    and a running attempt cannot commit its content (both are conditional on
    the row's status), so stopping the job only saves the provider's time.
    Raises a 409 ``REGENERATION_FINISHED`` when it had already ended.
    """
    session = state.db.session
    canceled = session.execute(
        update(Regeneration)
        .where(Regeneration.id == regeneration.id, Regeneration.status.in_(ACTIVE_STATUSES))
        .values(status=Status.CANCELED, finished_at=utcnow(), updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if getattr(canceled, "rowcount", 0):
        spend.release(state, regeneration)
    session.commit()
    session.refresh(regeneration)
    if not getattr(canceled, "rowcount", 0):
        raise ApiError(
            409,
            "REGENERATION_FINISHED",
            "This regeneration has already finished.",
            details={"generationId": regeneration.id, "status": regeneration.status},
        )
    progress.publish(state, regeneration.id, Status.CANCELED)
    checkpoints.request_cancel(state, regeneration.id, current_app.config)
    # A running attempt of an interruptible provider stops itself at its next checkpoint
    # and records what its call cost (canceled_attempt); killing it would lose that.
    interruptible = bool(getattr(state.provider, "interruptible", False))
    queue.stop_job(state.redis, regeneration.id, kill_running=not interruptible)
    signals.send(signals.regeneration_canceled, session, regeneration.id)
    return regeneration


def canceled_attempt(
    state: RegenState, regeneration: Regeneration, attempt: GenerationAttempt
) -> None:
    """Record the attempt that stopped because its regeneration was canceled meanwhile.

    The row is already ``canceled`` (by :func:`cancel`); the attempt's row keeps
    the tokens its provider call used up to then, and what they cost is charged
    (a paid call is never unrecorded).
    """
    attempt.outcome, attempt.error = Status.CANCELED, "Canceled during the provider call."
    session = state.db.session
    try:
        _record(state, regeneration, attempt)
        session.commit()
    except IntegrityError:  # recorded by a takeover in the meantime
        session.rollback()


PLAN_DELETED = "The plan was deleted during its regeneration."


def plan_deleted(
    state: RegenState, regeneration: Regeneration, attempt: GenerationAttempt | None
) -> bool:
    """``processing`` -> ``canceled``: the plan was deleted while it was being regenerated.

    Nothing is left to regenerate, and neither the user nor the provider
    failed, so the quota is given back, unless the provider billed an attempt.
    ``attempt`` is the provider call made before the plan was found gone (``None``
    if none was made). ``False`` when
    this attempt no longer held the row.
    """
    session = state.db.session
    generation_id = regeneration.id
    if not _change_attempt(
        state, generation_id, regeneration.attempts, status=Status.CANCELED, error=PLAN_DELETED,
        finished_at=utcnow(),
    ):  # fmt: skip
        session.rollback()
        return False
    if attempt is not None:
        attempt.outcome, attempt.error = Status.CANCELED, PLAN_DELETED
        _record(state, regeneration, attempt)
    settle(state, regeneration, "")  # refunded unless the provider billed an attempt
    spend.release(state, regeneration)
    session.commit()
    logger.info("regeneration %s canceled: its plan was deleted", generation_id)
    progress.publish(state, generation_id, Status.CANCELED)
    signals.send(signals.regeneration_canceled, session, generation_id)
    return True


def requeue_job(state: RegenState, regeneration: Regeneration) -> bool:
    """Replace whatever RQ has under a pending row's job id with a fresh job.

    Workers sweep concurrently: a lock per row and attempt lets only one of
    them requeue it, since two deliveries of one job id would race for it.
    """
    lock = state.key("requeue", regeneration.id, str(regeneration.attempts))
    if not state.redis.set(lock, 1, nx=True, ex=int(PENDING_GRACE.total_seconds())):
        return False
    queue.delete_job(state.redis, regeneration.id)
    _enqueue(state, regeneration)
    return True
