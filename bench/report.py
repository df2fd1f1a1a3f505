"""The results table (median, min-max, ratios), written into docs/performance.md."""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import REPO_ROOT, median_range

DOC = REPO_ROOT / "docs" / "performance.md"
START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"


@dataclass
class Row:
    """One compared measure: the package's values, the baseline's, paired by round."""

    measure: str
    unit: str
    package: Sequence[float]
    baseline: Sequence[float]
    target: str = ""
    higher_is_better: bool = True
    limit: float | None = None
    goal: float | None = None
    """A goal for the package's median value itself (the ratio is then informative)."""

    def ratios(self) -> list[float]:
        return [p / b for p, b in zip(self.package, self.baseline, strict=True) if b]

    def verdict(self) -> str:
        if self.goal is not None:
            value = median_range(self.package)[0]
            met = value >= self.goal if self.higher_is_better else value <= self.goal
            return "met" if met else "**missed**"
        if self.limit is None:
            return ""
        ratio = median_range(self.ratios())[0]
        met = ratio >= self.limit if self.higher_is_better else ratio <= self.limit
        return "met" if met else "**missed**"


def fmt(values: Sequence[float], digits: int) -> str:
    median, low, high = median_range(values)
    return f"{median:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def table(rows: Sequence[Row], rounds: int, command: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Measured {now} on {os.cpu_count()} CPUs ({platform.machine()}, Python "
        f"{platform.python_version()}), {rounds} interleaved rounds; median (min-max).",
        f"Reproduce: `{command}`",
        "",
        "| Measure | Unit | flask-plan-regen | Compared with | Ratio | Target | |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        digits = 0 if max(row.package, default=0) >= 100 else 1
        lines.append(
            f"| {row.measure} | {row.unit} | {fmt(row.package, digits)} | "
            f"{fmt(row.baseline, digits)} | {fmt(row.ratios(), 2)} | {row.target} | "
            f"{row.verdict()} |"
        )
    return "\n".join(lines)


def write_results(text: str, doc: Path = DOC) -> None:
    """Replace what lies between the markers in ``doc`` with ``text``."""
    content = doc.read_text()
    head, found, rest = content.partition(START)
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise RuntimeError(f"{doc} lacks the {START} / {END} markers")
    doc.write_text(f"{head}{START}\n{text}\n{END}{tail}")
