"""The built-in provider sizes a plan to its time, so that the schedule spreads over the weeks."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from conftest import ALICE, run_jobs
from flask import Flask


def test_a_six_week_ten_hour_plan_fills_its_six_weeks(app: Flask) -> None:
    client = app.test_client()
    start = datetime.now(UTC).date() + timedelta(days=7)
    body = {
        "topic": "Interview prep: data structures",
        "weeklyHours": 10,
        "startDate": start.isoformat(),
        "deadlineDate": (start + timedelta(weeks=6)).isoformat(),
    }
    created = client.post("/api/v1/plans", json=body, headers=ALICE)
    assert created.status_code == 202, created.get_json()
    run_jobs(app)
    plan = client.get(f"/api/v1/plans/{created.get_json()['planId']}", headers=ALICE).get_json()
    tasks = [task for module in plan["modules"] for task in module["tasks"]]
    per_week = Counter(task["week"] for task in tasks)
    minutes = Counter()
    for task in tasks:
        minutes[task["week"]] += task["estimatedMinutes"]
    print(f"{len(plan['modules'])} modules, {len(tasks)} tasks")
    print(f"tasks by week {sorted(per_week.items())}")
    print(f"hours by week {[(week, round(m / 60, 1)) for week, m in sorted(minutes.items())]}")
    assert sorted(per_week) == [1, 2, 3, 4, 5, 6]  # every week has work, none beyond the deadline
    assert all(m <= 10 * 60 for m in minutes.values())  # within the weekly hours
    assert sum(minutes.values()) >= 0.8 * 6 * 10 * 60  # and the time available is used
