"""``python -m bench.extraction``: finding the plan's JSON in answers full of braces.

Times :func:`flask_plan_regen.output.json_in` on 10 MB answers shaped to defeat it, next
to the extraction 0.2 used (``raw_decode`` tried at every ``{``, quadratic), which is
only run up to 1 MB (at 10 MB it does not finish). Each row: the answer's shape and
size, seconds (median of ``--rounds``), and what came out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from flask_plan_regen.errors import ProviderError
from flask_plan_regen.output import json_in

PLAN = json.dumps({"modules": [{"title": "M", "estimatedMinutes": 60, "tasks": []}]})


def shapes(size: int) -> dict[str, str]:
    return {
        "open braces": "{" * size,
        "brace pairs": "{}" * (size // 2),
        "nested keys": '{"a": ' * (size // 6),
        "prose braces, then the plan": "{x} " * (size // 4) + PLAN,
        "the plan, then open braces": "Sure! " + PLAN + " {" * (size // 2),
        "a plan with a 10 MB string of braces": json.dumps({"modules": [], "note": "{" * size}),
        "a list of objects that never closes": '{"modules": [' + '{"title": "x"}, ' * (size // 16),
    }


def before(text: str) -> Any:
    """0.2's extraction: ``raw_decode`` from every ``{`` (for comparison only)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    decoder = json.JSONDecoder()
    found: list[Any] = []
    start = text.find("{")
    while start != -1:
        try:
            value, end = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            start = text.find("{", start + 1)
            continue
        found.append(value)
        start = text.find("{", end)
    if len(found) != 1:
        raise ProviderError("not one object")
    return found[0]


def timed(extract: Callable[[str], Any], text: str, rounds: int) -> tuple[float, str]:
    durations = []
    outcome = ""
    for _ in range(rounds):
        started = time.perf_counter()
        try:
            extract(text)
            outcome = "parsed"
        except ProviderError as error:
            outcome = f"refused ({str(error)[:48]})"
        durations.append(time.perf_counter() - started)
    return statistics.median(durations), outcome


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.extraction", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=10_000_000, help="characters per answer")
    parser.add_argument("--before-size", type=int, default=100_000)
    args = parser.parse_args()
    print(f"| answer | now, {args.size:,} chars | 0.2, {args.before_size:,} chars | outcome |")
    print("|---|---|---|---|")
    small = shapes(args.before_size)
    for name, text in shapes(args.size).items():
        now, outcome = timed(json_in, text, args.rounds)
        then, _ = timed(before, small[name], 1)
        print(f"| {name} | {now:.3f} s | {then:.3f} s | {outcome} |")


if __name__ == "__main__":
    main()
