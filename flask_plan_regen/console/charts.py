"""The Overview's chart, drawn on the server as inline SVG: no script, no library.

Each bar segment carries its series, hour and count as ``data-*`` attributes and
a ``<title>`` tooltip, so the chart can be read by people, tests and scrapers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..models import FailureClass

WIDTH = 720
HEIGHT = 200
AXIS = 30  # room under the bars for the hour labels, left of them for the scale

SERIES_COLOURS: dict[str, str] = {
    "succeeded": "#2f9e44",
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
    count: int


@dataclasses.dataclass
class Chart:
    width: int
    height: int
    top: int
    segments: list[Segment]
    labels: list[tuple[float, str]]
    legend: list[tuple[str, str]]


def hourly_outcomes(hours: list[dict[str, Any]]) -> Chart:
    """Stacked bars per hour: succeeded at the bottom, then each failure class."""
    totals = [hour["succeeded"] + sum(hour["failed"].values()) for hour in hours]
    top = max([*totals, 1])
    plot_height = HEIGHT - AXIS
    slot = (WIDTH - AXIS) / max(len(hours), 1)
    segments: list[Segment] = []
    labels: list[tuple[float, str]] = []
    seen: list[str] = []
    for index, hour in enumerate(hours):
        x = AXIS + index * slot
        label = hour["hour"].strftime("%H:00")
        if index % 3 == 0:
            labels.append((x + slot / 2, label))
        base = plot_height
        series = [("succeeded", hour["succeeded"]), *sorted(hour["failed"].items())]
        for name, count in series:
            if not count:
                continue
            height = plot_height * count / top
            base -= height
            segments.append(
                Segment(
                    x=round(x + 1, 1),
                    y=round(base, 1),
                    width=round(slot - 2, 1),
                    height=round(height, 1),
                    colour=SERIES_COLOURS.get(name, "#868e96"),
                    series=str(name),
                    hour=hour["hour"].strftime("%Y-%m-%dT%H:00Z"),
                    count=count,
                )
            )
            if name not in seen:
                seen.append(str(name))
    legend = [(name, SERIES_COLOURS.get(name, "#868e96")) for name in seen]
    return Chart(WIDTH, HEIGHT, top, segments, labels, legend)
