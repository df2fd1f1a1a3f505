"""The built-in tables, on a metadata of their own.

They live on :data:`metadata` rather than the host's ``db.Model`` so that the
package never has to subclass a model of an app it does not know; the host's
``db.session`` reads and writes them like any other mapped class. Add
``metadata`` to Alembic's ``target_metadata`` to migrate them (docs/operations.md).
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeEngine


class Status(enum.StrEnum):
    """Where a regeneration stands; only :mod:`flask_plan_regen.lifecycle` changes it."""

    PENDING = "pending"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class FailureClass(enum.StrEnum):
    """Why a regeneration (or one attempt of it) failed."""

    VALIDATION = "validation"
    CAPPED = "capped"
    PROVIDER_ERROR = "provider_error"
    RATE_LIMIT = "rate_limit"
    TIMEOUT = "timeout"
    # The provider answered 400/401/403/404...: the request or its settings are wrong.
    PROVIDER_REJECTED = "provider_rejected"
    # The model declined the request (its refusal is in the error).
    REFUSED = "refused"
    # The answer hit the output token cap.
    TRUNCATED = "truncated"
    # Our own code failed after the provider answered (a bug to fix): not retried.
    INTERNAL = "internal"
    # The provider account is out of credit (OpenAI's insufficient_quota): an operator must act.
    PROVIDER_QUOTA = "provider_quota"
    # Every provider entry stayed open-circuited for PLAN_REGEN_PROVIDER_OUTAGE_WAIT: no call made.
    PROVIDER_UNAVAILABLE = "provider_unavailable"


ACTIVE_STATUSES: tuple[Status, ...] = (Status.PENDING, Status.PROCESSING)
TERMINAL_STATUSES: tuple[Status, ...] = (Status.SUCCEEDED, Status.FAILED, Status.CANCELED)
RETRYABLE_FAILURES: frozenset[FailureClass] = frozenset(
    {FailureClass.PROVIDER_ERROR, FailureClass.RATE_LIMIT, FailureClass.TIMEOUT}
)

# Column widths of the ids; an id longer than its column names nothing.
ID_LENGTH = 36  # uuid4 text: plans of the built-in store, regenerations (generationId)
PLAN_ID_LENGTH = 64  # any store's plan id, as regenerations keep it
USER_ID_LENGTH = 255


class Money(TypeDecorator[Decimal]):
    """US dollars as exact decimals of 10 places (the cost of one cached token at USD
    0.075 per million, 7.5e-8, stays exact).

    ``NUMERIC(20, 10)`` where the database has exact decimals (PostgreSQL); on SQLite,
    whose NUMERIC is a float, a whole number of 1e-10 dollars in an INTEGER, so sums
    and comparisons made in SQL stay exact there too.
    """

    impl = Numeric(20, 10)
    cache_ok = True
    SCALE = Decimal("1e10")

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(20, 10, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        amount = Decimal(value).quantize(Decimal("1e-10"))
        return int(amount * self.SCALE) if dialect.name == "sqlite" else amount

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return (Decimal(int(value)) / self.SCALE).quantize(Decimal("1e-10"))
        return Decimal(value).quantize(Decimal("1e-10"))


MONEY = Money()


class ChargedTo(enum.StrEnum):
    """Whose spend a provider call is: the user's (their quota and budget) or an operator's."""

    USER = "user"
    OPERATOR = "operator"


def storable(text: str) -> bool:
    """Whether every supported database can keep ``text``.

    JSON and URLs can carry NUL characters and unpaired surrogates, but
    PostgreSQL text refuses NUL and UTF-8 cannot encode a lone surrogate.
    """
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def storable_text(text: str) -> str:
    """``text`` without what :func:`storable` refuses (NULs dropped, lone surrogates ``?``)."""
    return text if storable(text) else text.replace("\x00", "").encode("utf-8", "replace").decode()


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` with its time zone; SQLite hands back naive datetimes, which are UTC here."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    metadata = metadata


class Plan(Base):
    """A learning plan kept by the built-in store."""

    __tablename__ = "plan_regen_plans"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(String(USER_ID_LENGTH), index=True)
    topic: Mapped[str] = mapped_column(String(200))
    skill_level: Mapped[str] = mapped_column(String(20), default="beginner")
    weekly_hours: Mapped[int] = mapped_column(Integer, default=5)
    learning_style: Mapped[str] = mapped_column(String(20), default="mixed")
    start_date: Mapped[date | None] = mapped_column(Date)
    deadline_date: Mapped[date | None] = mapped_column(Date)
    notes: Mapped[str | None] = mapped_column(Text)
    # "pending" until its first generation succeeds, then "ready" for good.
    status: Mapped[str] = mapped_column(String(20), default="pending")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    modules: Mapped[list[Module]] = relationship(
        back_populates="plan",
        order_by="Module.position",
        cascade="all, delete-orphan",
    )


class _PlanItem:
    """The columns modules and tasks share: an ordered, titled piece of work."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(500))
    description: Mapped[str | None] = mapped_column(Text)
    estimated_minutes: Mapped[int] = mapped_column(Integer)


class Module(_PlanItem, Base):
    __tablename__ = "plan_regen_modules"
    __table_args__ = (UniqueConstraint("plan_id", "position"),)

    plan_id: Mapped[str] = mapped_column(ForeignKey(Plan.id, ondelete="CASCADE"))

    plan: Mapped[Plan] = relationship(back_populates="modules")
    tasks: Mapped[list[Task]] = relationship(
        back_populates="module",
        order_by="Task.position",
        cascade="all, delete-orphan",
    )


class Task(_PlanItem, Base):
    __tablename__ = "plan_regen_tasks"
    __table_args__ = (UniqueConstraint("module_id", "position"),)

    module_id: Mapped[int] = mapped_column(ForeignKey(Module.id, ondelete="CASCADE"))
    week: Mapped[int | None] = mapped_column(Integer)
    due_date: Mapped[date | None] = mapped_column(Date)

    module: Mapped[Module] = relationship(back_populates="tasks")


class Regeneration(Base):
    """One request to (re)generate a plan; its id is the generationId."""

    __tablename__ = "plan_regen_regenerations"
    __table_args__ = (
        # At most one active regeneration per plan, enforced by the database so
        # that concurrent requests cannot both pass a pre-check.
        Index(
            "uq_plan_regen_active_per_plan",
            "plan_id",
            unique=True,
            sqlite_where=text("status IN ('pending', 'processing')"),
            postgresql_where=text("status IN ('pending', 'processing')"),
        ),
        Index("ix_plan_regen_regenerations_plan_created", "plan_id", "created_at"),
        Index("ix_plan_regen_regenerations_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    plan_id: Mapped[str] = mapped_column(String(PLAN_ID_LENGTH))
    user_id: Mapped[str] = mapped_column(String(USER_ID_LENGTH), index=True)
    kind: Mapped[str] = mapped_column(String(20), default="regeneration")
    status: Mapped[str] = mapped_column(String(20), default=Status.PENDING)
    overrides: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tier: Mapped[str] = mapped_column(String(50))
    priority: Mapped[int] = mapped_column(Integer)
    queue: Mapped[str] = mapped_column(String(100))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    failure_class: Mapped[str | None] = mapped_column(String(20))
    error: Mapped[str | None] = mapped_column(Text)
    error_history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The month ("2026-11") whose quota this regeneration used; NULL once refunded.
    quota_period: Mapped[str | None] = mapped_column(String(7))
    # Quota units it holds: one at submit, one more before each retry after a billed answer.
    quota_units: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    # "user", or "operator" for an operator's re-run (charged to no user's quota or budget).
    charged_to: Mapped[str] = mapped_column(
        String(20), default=ChargedTo.USER, server_default=ChargedTo.USER.value
    )
    # What is left of the spend budget reserved at submit (USD); NULL when none was.
    reserved_usd: Mapped[Decimal | None] = mapped_column(MONEY)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    attempt_rows: Mapped[list[GenerationAttempt]] = relationship(
        back_populates="regeneration", order_by="GenerationAttempt.number"
    )


class GenerationAttempt(Base):
    """One provider call made for a regeneration."""

    __tablename__ = "plan_regen_attempts"
    __table_args__ = (UniqueConstraint("regeneration_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    regeneration_id: Mapped[str] = mapped_column(
        ForeignKey(Regeneration.id, ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    # "succeeded" | "failed" | "canceled" (the plan was deleted during the attempt)
    outcome: Mapped[str] = mapped_column(String(20))
    failure_class: Mapped[str | None] = mapped_column(String(20))
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)
    modules_count: Mapped[int] = mapped_column(Integer, default=0)
    tasks_count: Mapped[int] = mapped_column(Integer, default=0)
    provider: Mapped[str] = mapped_column(String(100))
    model: Mapped[str | None] = mapped_column(String(200))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    cached_tokens: Mapped[int | None] = mapped_column(Integer)
    # What the call cost (USD, exact): the server's reported cost, else the price table's;
    # NULL when unknown (never 0 for unknown).
    cost_usd: Mapped[Decimal | None] = mapped_column(MONEY)
    # Whether the provider billed the call (its answer carried completion tokens).
    billed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    charged_to: Mapped[str] = mapped_column(
        String(20), default=ChargedTo.USER, server_default=ChargedTo.USER.value
    )
    prompt_hash: Mapped[str] = mapped_column(String(64))
    adjustments: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    regeneration: Mapped[Regeneration] = relationship(back_populates="attempt_rows")


class Usage(Base):
    """Regenerations a user has used in one calendar month (UTC): the monthly quota."""

    __tablename__ = "plan_regen_usage"

    user_id: Mapped[str] = mapped_column(String(USER_ID_LENGTH), primary_key=True)
    period: Mapped[str] = mapped_column(String(7), primary_key=True)  # "2026-11"
    used: Mapped[int] = mapped_column(Integer, default=0)


class Spend(Base):
    """Spend in one calendar month (UTC) against a budget: one user's, or the app's.

    ``scope`` is ``"user:<id>"`` or ``"all"``; ``reserved_usd`` is the worst case of the
    regenerations still running, ``spent_usd`` what their attempts cost.
    """

    __tablename__ = "plan_regen_spend"

    scope: Mapped[str] = mapped_column(String(USER_ID_LENGTH + 5), primary_key=True)
    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    spent_usd: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    reserved_usd: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
