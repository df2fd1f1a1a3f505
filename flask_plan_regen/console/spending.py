"""The Spend page: what this month's provider calls cost, by model, tier and user,
against the budgets (the sums are cost_report.py's, the ledger is spend.py's)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from flask import current_app
from sqlalchemy import case, func, select

from ..cost_report import UNKNOWN_MODEL, CostRow, month_bounds
from ..models import GenerationAttempt, Regeneration, Spend
from ..quota import current_period, period_resets_at
from ..spend import GLOBAL_SCOPE, global_budget, monthly_budget, user_scope
from ..state import RegenState
from .queries import HOURS_CHARTED, utc_hour

TOP_USERS = 10


def spend_data(state: RegenState) -> dict[str, Any]:
    """This month: spend by model and by tier (from the attempts), the users who spent
    most against their tier's budget, and the app against its global budget."""
    config = current_app.config
    period = current_period()
    session = state.db.session
    ledger = session.execute(
        select(Spend.scope, Spend.spent_usd, Spend.reserved_usd)
        .where(Spend.period == period, Spend.scope != GLOBAL_SCOPE)
        .order_by(Spend.spent_usd.desc(), Spend.scope)
        .limit(TOP_USERS)
    ).all()
    user_ids = [scope.removeprefix(user_scope("")) for scope, _, _ in ledger]
    tiers_of = _latest_tiers(state, user_ids)
    users = []
    for user_id, (_, spent, reserved) in zip(user_ids, ledger, strict=True):
        tier = tiers_of.get(user_id)
        budget = monthly_budget(config, tier) if tier else None
        users.append(
            {
                "user_id": user_id,
                "tier": tier,
                "spent_usd": spent,
                "reserved_usd": reserved,
                "budget_usd": budget,
                "used_share": _share(spent + reserved, budget),
            }
        )
    everything = session.scalar(
        select(Spend.spent_usd).where(Spend.period == period, Spend.scope == GLOBAL_SCOPE)
    )
    spent = everything if everything is not None else Decimal(0)
    budget = global_budget(config)
    tiers = {str(tier) for tier in config["PLAN_REGEN_TIER_PRIORITY"]}
    return {
        "period": period,
        "resets_at": period_resets_at(period),
        "spent_usd": spent,
        "budget_usd": budget,
        "used_share": _share(spent, budget),
        **_by_model_and_tier(state, period),
        "top_users": users,
        "tier_budgets": {tier: monthly_budget(config, tier) for tier in sorted(tiers)},
    }


def _by_model_and_tier(state: RegenState, period: str) -> dict[str, list[CostRow]]:
    """The cost report by model and by tier, from one pass over the month's attempts
    (grouped by both, then added up each way): half the cost of two reports."""
    start, end = month_bounds(period)
    model = func.coalesce(GenerationAttempt.model, UNKNOWN_MODEL)
    cost_usd = func.coalesce(func.sum(GenerationAttempt.cost_usd), Decimal(0))
    billed = func.sum(case((GenerationAttempt.billed, 1), else_=0))
    unknown = func.sum(
        case((GenerationAttempt.billed & GenerationAttempt.cost_usd.is_(None), 1), else_=0)
    )
    rows = state.db.session.execute(
        select(
            model,
            Regeneration.tier,
            func.count(),
            billed,
            func.coalesce(func.sum(GenerationAttempt.prompt_tokens), 0),
            func.coalesce(func.sum(GenerationAttempt.completion_tokens), 0),
            func.coalesce(func.sum(GenerationAttempt.cached_tokens), 0),
            cost_usd,
            unknown,
        )
        .join(Regeneration, GenerationAttempt.regeneration_id == Regeneration.id)
        .where(GenerationAttempt.created_at >= start, GenerationAttempt.created_at < end)
        .group_by(model, Regeneration.tier)
    ).all()
    totals: dict[str, dict[str, dict[str, Any]]] = {"by_model": {}, "by_tier": {}}
    for model_name, tier, *values in rows:
        for grouping, key in (("by_model", model_name), ("by_tier", tier)):
            sums = totals[grouping].setdefault(str(key), dict.fromkeys(_SUMS, 0))
            for name, value in zip(_SUMS, values, strict=True):
                sums[name] += value or 0
    return {
        grouping: sorted(
            (_cost_row(key, sums) for key, sums in groups.items()),
            key=lambda row: (-row.cost_usd, row.key),
        )
        for grouping, groups in totals.items()
    }


_SUMS = ("attempts", "billed", "prompt_tokens", "completion_tokens", "cached_tokens",
         "cost_usd", "unknown_cost")  # fmt: skip


def _cost_row(key: str, sums: dict[str, Any]) -> CostRow:
    counts = {name: int(value) for name, value in sums.items() if name != "cost_usd"}
    return CostRow(key=key, cost_usd=Decimal(sums["cost_usd"]), **counts)


def _latest_tiers(state: RegenState, user_ids: list[str]) -> dict[str, str]:
    """Each user's tier as of their latest regeneration (one query)."""
    latest = (
        select(Regeneration.user_id, func.max(Regeneration.created_at).label("created_at"))
        .where(Regeneration.user_id.in_(user_ids))
        .group_by(Regeneration.user_id)
        .subquery()
    )
    rows = state.db.session.execute(
        select(Regeneration.user_id, Regeneration.tier).join(
            latest,
            (Regeneration.user_id == latest.c.user_id)
            & (Regeneration.created_at == latest.c.created_at),
        )
    )
    return {user_id: tier for user_id, tier in rows}


def _share(amount: Decimal, budget: Decimal | None) -> float | None:
    if budget is None or budget <= 0:
        return None
    return float(amount / budget)


def hourly_spend(state: RegenState, first: datetime) -> list[dict[str, Any]]:
    """What the attempts of each of the last 24 hours cost (USD; known costs only)."""
    bucket = utc_hour(GenerationAttempt.created_at)
    rows = state.db.session.execute(
        select(bucket, func.coalesce(func.sum(GenerationAttempt.cost_usd), Decimal(0)))
        .where(GenerationAttempt.created_at >= first)
        .group_by(bucket)
    ).all()
    cost = {stamp: Decimal(total) for stamp, total in rows}
    hours = [first + timedelta(hours=index) for index in range(HOURS_CHARTED)]
    return [
        {"hour": hour, "cost_usd": cost.get(hour.strftime("%Y-%m-%d %H:00"), Decimal(0))}
        for hour in hours
    ]
