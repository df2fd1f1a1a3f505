"""The Overview's chart, drawn on the server as inline SVG: no script, no library.

Each bar segment carries its series, hour and count as ``data-*`` attributes and
a ``<title>`` tooltip, so the chart can be read by people, tests and scrapers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..documents import usd
from ..models import FailureClass

WIDTH = 720
HEIGHT = 200
AXIS = 30  # room under the bars for the hour labels, left of them for the scale

SERIES_COLOURS: dict[str, str] = {
    "succeeded": "#2f9e44",
    "spend": "#1971c2",
    FailureClass.VALIDATION: "#e8590c",
    FailureClass.CAPPED: "#a61e4d",
    FailureClass.PROVIDER_ERROR: "#c92a2a",
    FailureClass.RATE_LIMIT: "#f08c00",
    FailureClass.TIMEOUT: "#862e9c",
    FailureClass.PROVIDER_REJECTED: "#5f3dc4",
    FailureClass.REFUSED: "#1864ab",
    FailureClass.TRUNCATED: "#0b7285",
    FailureClass.INTERNAL: "#495057",
}


@dataclasses.dataclass
class Segment:
    x: float
    y: float
    width: float
    height: float
    colour: str
    series: str
    hour: str
    count: str
    """The value as shown: a count, or an amount."""


@dataclasses.dataclass
class Chart:
    width: int
    height: int
    top: str
    segments: list[Segment]
    labels: list[tuple[float, str]]
    legend: list[tuple[str, str]]


Column = tuple[datetime, list[tuple[str, float, str]]]
"""An hour and its stacked values, bottom first: (series, value, value as shown)."""


def hourly_outcomes(hours: list[dict[str, Any]]) -> Chart:
    """Stacked bars per hour: succeeded at the bottom, then each failure class."""
    return stacked_bars(
        [
            (
                hour["hour"],
                [
                    (name, count, str(count))
                    for name, count in [("succeeded", hour["succeeded"]), *hour["failed"].items()]
                ],
            )
            for hour in hours
        ],
        str,
    )


def hourly_cost(hours: list[dict[str, Any]]) -> Chart:
    """A bar per hour: what its attempts cost."""
    return stacked_bars(
        [
            (hour["hour"], [("spend", float(hour["cost_usd"]), usd(hour["cost_usd"]) or "0")])
            for hour in hours
        ],
        lambda top: f"${top:.4g}",
    )


def stacked_bars(columns: list[Column], scale: Callable[[Any], str]) -> Chart:
    totals = [sum(value for _, value, _ in series) for _, series in columns]
    top: float = max([*totals, 0]) or 1
    plot_height = HEIGHT - AXIS
    slot = (WIDTH - AXIS) / max(len(columns), 1)
    segments: list[Segment] = []
    labels: list[tuple[float, str]] = []
    seen: list[str] = []
    for index, (hour, series) in enumerate(columns):
        x = AXIS + index * slot
        if index % 3 == 0:
            labels.append((x + slot / 2, hour.strftime("%H:00")))
        base: float = plot_height
        for name, value, shown in series:
            if not value:
                continue
            height = plot_height * value / top
            base -= height
            segments.append(
                Segment(
                    x=round(x + 1, 1),
                    y=round(base, 1),
                    width=round(slot - 2, 1),
                    height=round(height, 1),
                    colour=SERIES_COLOURS.get(name, "#868e96"),
                    series=str(name),
                    hour=hour.strftime("%Y-%m-%dT%H:00Z"),
                    count=shown,
                )
            )
            if name not in seen:
                seen.append(str(name))
    legend = [(name, SERIES_COLOURS.get(name, "#868e96")) for name in seen]
    return Chart(WIDTH, HEIGHT, scale(top), segments, labels, legend)
