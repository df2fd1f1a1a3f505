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

import dataclasses
import logging
from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from .errors import ConfigurationError, GenerationError, ReportedUsage
from .providers import GenerationResult

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
        # Strings (or ints) only: a float such as 0.1 is not the price that was meant.
        if isinstance(value[key], float) or money(value[key]) is None:
            raise ValueError(f"{key!r} must be a decimal string such as '0.15'")
        amounts[key] = Decimal(str(value[key]).strip())
    assert amounts["input"] is not None and amounts["output"] is not None
    return Prices(amounts["input"], amounts["output"], amounts["cached_input"])


def price_table(config: Mapping[str, Any]) -> dict[str, Prices]:
    """``PLAN_REGEN_PRICES``, parsed (checked at init_app)."""
    return {model: parse_prices(prices) for model, prices in config["PLAN_REGEN_PRICES"].items()}


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
    amount = money(value) if not isinstance(value, float) else None
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
