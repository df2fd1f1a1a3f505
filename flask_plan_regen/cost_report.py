"""Reading spend back: the cost report (``flask plan-regen costs``) and a user's month
(``GET /usage``), summed by the database from the attempt rows, in exact decimals."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from datetime import datetime
from decimal import Decimal
from typing import Any

from flask import current_app
from sqlalchemy import ColumnElement, case, func, select

from .documents import usd
from .models import ChargedTo, GenerationAttempt, Regeneration, Spend
from .quota import current_period, period_resets_at
from .spend import monthly_budget, user_scope
from .state import RegenState

GROUPINGS = ("user", "model", "tier", "day")
FORMATS = ("table", "json", "csv")
OPERATOR = "(operator)"
UNKNOWN_MODEL = "(unknown)"


@dataclasses.dataclass(frozen=True)
class CostRow:
    """Spend of one group in a month: ``cost_usd`` sums the known costs; attempts the
    provider billed whose cost is unknown are counted in ``unknown_cost``."""

    key: str
    attempts: int
    billed: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: Decimal
    unknown_cost: int

    def document(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "attempts": self.attempts,
            "billed": self.billed,
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "cachedTokens": self.cached_tokens,
            "costUsd": usd(self.cost_usd),
            "unknownCostAttempts": self.unknown_cost,
        }


def month_bounds(period: str) -> tuple[datetime, datetime]:
    """The first instant of ``period`` ("YYYY-MM", UTC) and of the month after it."""
    year, month = (int(part) for part in period.split("-"))
    start = period_resets_at(f"{year - 1}-12" if month == 1 else f"{year}-{month - 1:02d}")
    return start, period_resets_at(period)


def cost_report(
    state: RegenState, period: str, by: str = "user", top: int | None = None
) -> list[CostRow]:
    """Every attempt made in ``period``, grouped ``by`` user (operator re-runs as
    ``(operator)``), model, tier or day (UTC), the most costly first."""
    attempts, regenerations = GenerationAttempt.__table__.c, Regeneration.__table__.c
    key = _group_key(state, by)
    start, end = month_bounds(period)
    cost = func.coalesce(func.sum(attempts.cost_usd), Decimal(0))
    query = (
        select(
            key.label("key"),
            func.count().label("attempts"),
            func.sum(case((attempts.billed, 1), else_=0)).label("billed"),
            func.coalesce(func.sum(attempts.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(attempts.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(attempts.cached_tokens), 0).label("cached_tokens"),
            cost.label("cost_usd"),
            func.sum(case((attempts.billed & attempts.cost_usd.is_(None), 1), else_=0)).label(
                "unknown_cost"
            ),
        )
        .select_from(
            GenerationAttempt.__table__.join(
                Regeneration.__table__, attempts.regeneration_id == regenerations.id
            )
        )
        .where(attempts.created_at >= start, attempts.created_at < end)
        .group_by(key)
        .order_by(cost.desc(), key)
    )
    if top is not None:
        query = query.limit(top)
    rows = state.db.session.execute(query).all()
    return [
        CostRow(
            key=str(row.key),
            attempts=int(row.attempts),
            billed=int(row.billed or 0),
            prompt_tokens=int(row.prompt_tokens),
            completion_tokens=int(row.completion_tokens),
            cached_tokens=int(row.cached_tokens),
            cost_usd=Decimal(row.cost_usd),
            unknown_cost=int(row.unknown_cost or 0),
        )
        for row in rows
    ]


def _group_key(state: RegenState, by: str) -> ColumnElement[Any]:
    attempts, regenerations = GenerationAttempt.__table__.c, Regeneration.__table__.c
    if by == "user":
        return case(
            (attempts.charged_to == ChargedTo.OPERATOR, OPERATOR), else_=regenerations.user_id
        )
    if by == "model":
        return func.coalesce(attempts.model, UNKNOWN_MODEL)
    if by == "tier":
        return regenerations.tier
    if state.db.session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", attempts.created_at), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", attempts.created_at)  # SQLite keeps UTC text


def render(rows: list[CostRow], output: str, by: str) -> str:
    """The report as an aligned table (with a total), JSON or CSV."""
    documents = [row.document() for row in rows]
    if output == "json":
        return json.dumps(documents, indent=2)
    columns = ["key", *list(CostRow.__dataclass_fields__)[1:]]
    headers = [by, "attempts", "billed", "prompt", "completion", "cached", "cost_usd", "unknown"]
    values = [[_cell(getattr(row, name)) for name in columns] for row in rows]
    if output == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(values)
        return buffer.getvalue().rstrip("\n")
    total = [
        "TOTAL",
        *(_cell(sum((getattr(row, name) for row in rows), 0)) for name in columns[1:]),
    ]
    lines = [headers, *values, total]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )


def _cell(value: Any) -> str:
    return usd(value) or "0" if isinstance(value, Decimal) else str(value)


@dataclasses.dataclass(frozen=True)
class MonthlySpend:
    """A user's spend this month (``GET /usage``); budget fields ``None`` when unlimited."""

    period: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: Decimal
    unknown_cost_attempts: int
    budget_usd: Decimal | None
    reserved_usd: Decimal
    budget_left_usd: Decimal | None
    resets_at: datetime


def monthly_spend(state: RegenState, user_id: str, tier: str) -> MonthlySpend:
    """What ``user_id``'s own regenerations (not operator re-runs) cost this month, and
    what is left of the tier's budget after what is spent and reserved."""
    period = current_period()
    attempts, regenerations = GenerationAttempt.__table__.c, Regeneration.__table__.c
    start, end = month_bounds(period)
    totals = state.db.session.execute(
        select(
            func.coalesce(func.sum(attempts.prompt_tokens), 0),
            func.coalesce(func.sum(attempts.completion_tokens), 0),
            func.coalesce(func.sum(attempts.cached_tokens), 0),
            func.coalesce(func.sum(attempts.cost_usd), Decimal(0)),
            func.coalesce(
                func.sum(case((attempts.billed & attempts.cost_usd.is_(None), 1), else_=0)), 0
            ),
        )
        .select_from(
            GenerationAttempt.__table__.join(
                Regeneration.__table__, attempts.regeneration_id == regenerations.id
            )
        )
        .where(
            regenerations.user_id == user_id,
            attempts.charged_to == ChargedTo.USER,
            attempts.created_at >= start,
            attempts.created_at < end,
        )
    ).one()
    ledger = state.db.session.get(Spend, (user_scope(user_id), period))
    spent = ledger.spent_usd if ledger is not None else Decimal(0)
    reserved = ledger.reserved_usd if ledger is not None else Decimal(0)
    budget = monthly_budget(current_app.config, tier)
    return MonthlySpend(
        period=period,
        prompt_tokens=int(totals[0]),
        completion_tokens=int(totals[1]),
        cached_tokens=int(totals[2]),
        cost_usd=Decimal(totals[3]),
        unknown_cost_attempts=int(totals[4]),
        budget_usd=budget,
        reserved_usd=reserved,
        budget_left_usd=None if budget is None else max(budget - spent - reserved, Decimal(0)),
        resets_at=period_resets_at(period),
    )
