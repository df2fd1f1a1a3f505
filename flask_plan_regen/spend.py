"""What provider calls cost: the price table, the cost of one attempt, and spend budgets.

Money is exact: prices are decimal strings (USD per million tokens), costs are
:class:`~decimal.Decimal` quantized to 10 places and stored in ``Numeric``
columns, sums are made by the database. A cost nobody can know (no price, no
usage reported) is ``None``, never 0.

Budgets (docs/billing.md, "What a regeneration costs"): a regeneration
reserves its worst case at submit, in the transaction that charges the count
quota; each attempt then charges what it cost, and the end of the regeneration
releases what is left of the reservation. The ledger is one row per scope
(``user:<id>``, or ``all`` for the app) and month, changed by conditional
UPDATEs, so concurrent submits can never take more than the budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, cast

from flask import current_app
from flask_sqlalchemy.session import Session
from redis.exceptions import RedisError
from sqlalchemy import BindParameter, Table, bindparam, case, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import scoped_session

from .documents import iso_utc, usd
from .errors import ApiError, ConfigurationError, GenerationError, ReportedUsage
from .metrics import count_budget_paused
from .models import MONEY, ChargedTo, GenerationAttempt, Regeneration, Spend, as_utc
from .output import plan_json_schema
from .providers import GenerationRequest, GenerationResult
from .quota import current_period, period_resets_at
from .state import RegenState
from .types import PlanInput

logger = logging.getLogger("flask_plan_regen.spend")

UNLIMITED = "unlimited"
PLACES = Decimal("1e-10")
MILLION = Decimal(1_000_000)
_PRICE_KEYS = ("input", "output", "cached_input")


@dataclasses.dataclass(frozen=True)
class Prices:
    """USD per million tokens of one model; ``cached_input`` defaults to ``input``."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None


def money(value: Any) -> Decimal | None:
    """``value`` (a decimal string, int, float or Decimal) as a non-negative, finite USD
    amount of 10 places; ``None`` when it is not one. Floats go through their shortest
    text (``0.1`` -> ``Decimal("0.1")``), which is what the server wrote."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        return None
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount < 0 or amount >= Decimal(10) ** 9:
        return None
    return amount.quantize(PLACES, rounding=ROUND_HALF_EVEN)


def parse_prices(value: Any) -> Prices:
    """One model's prices, ``{"input": "0.15", "output": "0.60", "cached_input"?: ...}``.

    Raises ``ValueError`` saying what is wrong.
    """
    if not isinstance(value, Mapping) or not {"input", "output"} <= set(value):
        raise ValueError("a mapping with 'input' and 'output' (and optional 'cached_input')")
    unknown = set(value) - set(_PRICE_KEYS)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    amounts: dict[str, Decimal | None] = {}
    for key in _PRICE_KEYS:
        if key not in value:
            amounts[key] = None
            continue
        # A float is read through its shortest text (0.15 -> "0.15"), which is what was
        # written (in Python or in a FLASK_PLAN_REGEN_* variable, which Flask reads as JSON).
        if money(value[key]) is None:
            raise ValueError(f"{key!r} must be a decimal string such as '0.15'")
        amounts[key] = money(value[key])
    assert amounts["input"] is not None and amounts["output"] is not None
    return Prices(amounts["input"], amounts["output"], amounts["cached_input"])


def prices_for(config: Mapping[str, Any], *models: str | None) -> Prices | None:
    """The prices of the first of ``models`` the table knows."""
    table = config["PLAN_REGEN_PRICES"]
    for model in models:
        if model is not None and model in table:
            return parse_prices(table[model])
    return None


def tier_model(config: Mapping[str, Any], tier: str) -> str:
    """The model a tier's regenerations ask for (PLAN_REGEN_PROVIDER_TIER_MODELS, else the
    default model)."""
    models = config["PLAN_REGEN_PROVIDER_TIER_MODELS"]
    return str(models.get(tier, config["PLAN_REGEN_PROVIDER_MODEL"]))


def call_cost(
    prices: Prices | None,
    *,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    cached_tokens: int | None = None,
    reported: Any = None,
) -> Decimal | None:
    """What one call cost (USD, 10 places): the server's ``reported`` cost when it sent a
    readable one, else the tokens at ``prices``, else ``None`` (unknown).

    ``cached_tokens`` are the part of ``prompt_tokens`` read from the provider's cache,
    priced at ``cached_input`` (``input`` when the table has no cached price).
    """
    own = money(reported) if reported is not None else None
    if own is not None:
        return own
    if prices is None or prompt_tokens is None or completion_tokens is None:
        return None
    cached = min(cached_tokens or 0, prompt_tokens)
    total = (
        (prompt_tokens - cached) * prices.input
        + cached * (prices.cached_input if prices.cached_input is not None else prices.input)
        + completion_tokens * prices.output
    ) / MILLION
    return total.quantize(PLACES, rounding=ROUND_HALF_EVEN)


def worst_case(prices: Prices, *, attempts: int, output_tokens: int, prompt_tokens: int) -> Decimal:
    """The most ``attempts`` calls can cost: each with ``prompt_tokens`` in and the whole
    output cap out."""
    per_call = call_cost(prices, prompt_tokens=prompt_tokens, completion_tokens=output_tokens)
    assert per_call is not None
    return per_call * attempts


def was_billed(usage: ReportedUsage | None) -> bool:
    """Whether a provider bills a call that ended with ``usage``: the server produced an
    answer with completion tokens (or answered without saying how many), or reported a
    cost above 0. A call refused before any answer (a 5xx or 429 without usage, a
    connection reset) is not billed."""
    if usage is None:
        return False
    cost = money(usage.cost) if usage.cost is not None else None
    if cost is not None and cost > 0:
        return True
    completion = usage.completion_tokens
    if isinstance(completion, int) and not isinstance(completion, bool):
        return completion > 0
    return usage.answered


def usage_of(result: GenerationResult | None, error: GenerationError | None) -> ReportedUsage:
    """What the server reported for an attempt: its answer's usage, else the usage its
    failure carries, else nothing (no answer came)."""
    if result is not None:
        return ReportedUsage(
            model=result.model,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cached_tokens=result.cached_tokens,
            cost=result.reported_cost,
            answered=True,
        )
    if error is not None and error.usage is not None:
        return error.usage
    return ReportedUsage()


def parse_budget(value: Any) -> Decimal | None:
    """A monthly budget: ``"unlimited"`` -> ``None``, else a decimal string of USD."""
    if value == UNLIMITED or value is None:
        return None
    amount = money(value)
    if amount is None:
        raise ValueError(f"a decimal string of USD such as '25.00', or {UNLIMITED!r}")
    return amount


def check_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigurationError` for a wrong price table or budget."""
    table = config["PLAN_REGEN_PRICES"]
    if not isinstance(table, Mapping):
        raise ConfigurationError(
            "PLAN_REGEN_PRICES must be a mapping of model name to its prices "
            '({"input": "0.15", "output": "0.60", "cached_input": "0.075"}, USD per million '
            f"tokens); got {type(table).__name__}."
        )
    for model, prices in table.items():
        try:
            parse_prices(prices)
        except ValueError as error:
            raise ConfigurationError(f"PLAN_REGEN_PRICES[{model!r}] must be {error}.") from None
    budgets = config["PLAN_REGEN_MONTHLY_BUDGETS"]
    tiers = config["PLAN_REGEN_TIER_PRIORITY"]
    if not isinstance(budgets, Mapping) or not set(budgets) <= set(tiers):
        raise ConfigurationError(
            "PLAN_REGEN_MONTHLY_BUDGETS must be a mapping of tier "
            f"(one of {', '.join(sorted(tiers))}) to a budget; got {budgets!r}."
        )
    for key, value in [
        *((f"PLAN_REGEN_MONTHLY_BUDGETS[{tier!r}]", v) for tier, v in budgets.items()),
        ("PLAN_REGEN_GLOBAL_MONTHLY_BUDGET", config["PLAN_REGEN_GLOBAL_MONTHLY_BUDGET"]),
    ]:
        try:
            parse_budget(value)
        except ValueError as error:
            raise ConfigurationError(f"{key} must be {error}; got {value!r}.") from None
    for tier, value in budgets.items():
        model = tier_model(config, tier)
        if parse_budget(value) is not None and prices_for(config, model) is None:
            raise ConfigurationError(
                f"PLAN_REGEN_MONTHLY_BUDGETS[{tier!r}] needs the price of the tier's model "
                f"{model!r} in PLAN_REGEN_PRICES: a reservation is its worst-case cost."
            )


# --- Budgets: the ledger -------------------------------------------------------------

GLOBAL_SCOPE = "all"
# Tokens a chat request adds around its messages' text (roles, separators): generous.
MESSAGE_OVERHEAD_TOKENS = 32
# The plan's JSON schema rides along as response_format (structured outputs), and is
# counted as input.
SCHEMA_BYTES = len(json.dumps(plan_json_schema()).encode())
_SPEND = cast(Table, Spend.__table__)
# How long the "pause logged" mark lives: a pause still on after it is logged again.
PAUSE_KEY_TTL = 24 * 3600


def user_scope(user_id: str) -> str:
    return f"user:{user_id}"


def monthly_budget(config: Mapping[str, Any], tier: str) -> Decimal | None:
    """The tier's USD budget per calendar month; ``None`` for unlimited."""
    return parse_budget(config["PLAN_REGEN_MONTHLY_BUDGETS"].get(tier, UNLIMITED))


def global_budget(config: Mapping[str, Any]) -> Decimal | None:
    return parse_budget(config["PLAN_REGEN_GLOBAL_MONTHLY_BUDGET"])


def prompt_token_bound(plan: PlanInput, tier: str) -> int:
    """At most how many tokens the prompt of ``plan`` can be: its UTF-8 bytes (a token
    covers at least one byte) and the plan's JSON schema's, plus the messages' overhead."""
    system, user = GenerationRequest(plan=plan, tier=tier, generation_id="", attempt=1).prompt()
    return len(system.encode()) + len(user.encode()) + SCHEMA_BYTES + MESSAGE_OVERHEAD_TOKENS


def reservation(config: Mapping[str, Any], tier: str, plan: PlanInput | None) -> Decimal | None:
    """The worst case a regeneration of ``plan`` for ``tier`` can cost, when the tier has a
    budget: every attempt with the whole prompt in and the whole output cap out, at the
    price of the tier's model (init_app checked there is one)."""
    if monthly_budget(config, tier) is None:
        return None
    prompt_tokens = prompt_token_bound(plan, tier) if plan is not None else 0
    prices = prices_for(config, tier_model(config, tier))
    assert prices is not None, "check_config requires a price for a budgeted tier's model"
    return worst_case(
        prices,
        attempts=int(config["PLAN_REGEN_MAX_ATTEMPTS"]),
        output_tokens=int(config["PLAN_REGEN_PROVIDER_MAX_OUTPUT_TOKENS"]),
        prompt_tokens=prompt_tokens,
    )


def reserve(state: RegenState, values: Mapping[str, Any]) -> None:
    """Reserve a new regeneration's worst case (``values["reserved_usd"]``) against its
    user's monthly budget, in the caller's transaction; 429 ``BUDGET_EXCEEDED`` (the
    caller rolls back) when the budget cannot cover it next to what is spent and
    reserved. One conditional UPDATE: concurrent submits cannot overrun the budget."""
    amount = values["reserved_usd"]
    if amount is None:
        return
    budget = monthly_budget(current_app.config, values["tier"])
    assert budget is not None
    session = state.db.session
    period = current_period(values["created_at"])
    scope = user_scope(values["user_id"])
    _ensure_rows(session, [scope], period)
    reserved = session.execute(
        update(_SPEND)
        .where(
            _SPEND.c.scope == scope,
            _SPEND.c.period == period,
            _SPEND.c.spent_usd + _SPEND.c.reserved_usd + _money_param("amount") <= budget,
        )
        .values(reserved_usd=_SPEND.c.reserved_usd + _money_param("amount"))
        .returning(_SPEND.c.scope),
        {"amount": amount},
    ).first()
    if reserved is None:
        raise ApiError(
            429,
            "BUDGET_EXCEEDED",
            f"The monthly spend budget of the {values['tier']} tier (USD {usd(budget)}) "
            "cannot cover another regeneration this month.",
            details={
                "budgetUsd": usd(budget),
                "neededUsd": usd(amount),
                "resetsAt": iso_utc(period_resets_at(period)),
            },
        )


def ensure_not_paused(state: RegenState) -> None:
    """503 ``BUDGET_PAUSED`` once this month's spend reached the global budget."""
    if calls_paused(state):
        count_budget_paused("submit")
        raise ApiError(
            503,
            "BUDGET_PAUSED",
            "Regenerations are paused: this month's spending limit has been reached. "
            "Try again later.",
            details={"resetsAt": iso_utc(period_resets_at(current_period()))},
            # Like the other 503s: an operator may raise the budget at any moment.
            headers={"Retry-After": str(int(current_app.config["PLAN_REGEN_BUDGET_RECHECK"]))},
        )


def calls_paused(state: RegenState) -> bool:
    """Whether this month's spend reached ``PLAN_REGEN_GLOBAL_MONTHLY_BUDGET``: then no
    provider call is made (jobs wait, pending) and submits answer 503. The first process
    to see a pause start logs it, once for the whole app (a key in Redis says so)."""
    budget = global_budget(current_app.config)
    if budget is None:
        return False
    period = current_period()
    spent = state.db.session.scalar(
        select(_SPEND.c.spent_usd).where(_SPEND.c.scope == GLOBAL_SCOPE, _SPEND.c.period == period)
    )
    paused = spent is not None and spent >= budget
    if paused and _first_to_see_the_pause(state, period):
        logger.warning(
            "the global monthly budget (USD %s) is reached (spent USD %s): provider calls "
            "are paused and submits answer 503 until the month ends or the budget is raised",
            usd(budget),
            usd(spent),
        )
    elif not paused:
        _forget_the_pause(state, period)
    return paused


def _forget_the_pause(state: RegenState, period: str) -> None:
    """The pause is over (the budget was raised): the next one is logged again."""
    with contextlib.suppress(RedisError):
        state.redis.delete(state.key("budget-paused", period))


def _first_to_see_the_pause(state: RegenState, period: str) -> bool:
    try:
        return bool(
            state.redis.set(state.key("budget-paused", period), 1, nx=True, ex=PAUSE_KEY_TTL)
        )
    except RedisError:
        return True  # better a line too many than a pause nobody hears of


def charge(state: RegenState, regeneration: Regeneration, attempt: GenerationAttempt) -> None:
    """Add a recorded attempt's cost to the month's ledger (the app's, and its user's when
    charged to the user), taking it out of the regeneration's reservation first; in the
    caller's transaction. A billed call of unknown cost is charged the whole output cap
    (and the prompt tokens it reported) at the model's price: never 0."""
    cost = attempt.cost_usd
    if cost is None and attempt.billed:
        cost = _worst_call(current_app.config, regeneration.tier, attempt.prompt_tokens)
    if not cost:
        return
    session = state.db.session
    period = current_period()
    scopes = [GLOBAL_SCOPE]
    if regeneration.charged_to == ChargedTo.USER:
        scopes.append(user_scope(regeneration.user_id))
    _ensure_rows(session, scopes, period)
    session.execute(
        update(_SPEND)
        .where(_SPEND.c.scope.in_(scopes), _SPEND.c.period == period)
        .values(spent_usd=_SPEND.c.spent_usd + _money_param("cost")),
        {"cost": cost},
    )
    held = regeneration.reserved_usd or Decimal(0)
    used = min(cost, held)
    if used > 0:
        _take_from_reservation(state, regeneration, used)


def release(state: RegenState, regeneration: Regeneration) -> None:
    """Give back what is left of a regeneration's reservation as it ends (not committed)."""
    left = regeneration.reserved_usd
    if not left:
        return
    _take_from_reservation(state, regeneration, left)


def _take_from_reservation(state: RegenState, regeneration: Regeneration, amount: Decimal) -> None:
    session = state.db.session
    session.execute(
        update(Regeneration)
        .where(Regeneration.id == regeneration.id)
        .values(reserved_usd=Regeneration.reserved_usd - _money_param("amount"))
        .execution_options(synchronize_session=False),
        {"amount": amount},
    )
    session.execute(
        update(_SPEND)
        .where(
            _SPEND.c.scope == user_scope(regeneration.user_id),
            _SPEND.c.period == current_period(as_utc(regeneration.created_at)),
        )
        .values(
            reserved_usd=case(
                (
                    _SPEND.c.reserved_usd > _money_param("amount"),
                    _SPEND.c.reserved_usd - _money_param("amount"),
                ),
                else_=Decimal(0),
            )
        ),
        {"amount": amount},
    )
    regeneration.reserved_usd = (regeneration.reserved_usd or Decimal(0)) - amount


def _worst_call(config: Mapping[str, Any], tier: str, prompt_tokens: int | None) -> Decimal | None:
    prices = prices_for(config, tier_model(config, tier))
    if prices is None:
        return None
    return worst_case(
        prices,
        attempts=1,
        output_tokens=int(config["PLAN_REGEN_PROVIDER_MAX_OUTPUT_TOKENS"]),
        prompt_tokens=prompt_tokens or 0,
    )


def _money_param(name: str) -> BindParameter[Decimal]:
    return bindparam(name, type_=MONEY)


def _ensure_rows(session: scoped_session[Session], scopes: list[str], period: str) -> None:
    """Insert the month's ledger rows that do not exist yet (race-free)."""
    dialect = session.get_bind().dialect.name
    rows = [{"scope": scope, "period": period} for scope in scopes]
    if dialect in ("postgresql", "sqlite"):
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = insert(_SPEND).values(spent_usd=Decimal(0), reserved_usd=Decimal(0))
        session.execute(statement.on_conflict_do_nothing(), rows)
        return
    for row in rows:  # other databases: a savepoint absorbs a concurrent insert
        try:
            with session.begin_nested():
                session.add(Spend(**row, spent_usd=Decimal(0), reserved_usd=Decimal(0)))
        except IntegrityError:
            pass
