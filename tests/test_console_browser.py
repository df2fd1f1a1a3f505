"""The operator console in a real browser: headless Chromium driven by selenium against
the real example app (werkzeug, threaded), a real Redis and real ``flask plan-regen
worker`` processes. Every page and every action is used; screenshots are saved under
the test's tmp dir; the chart must show the regenerations the test made.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from app_server import serve
from conftest import ALICE, NO_LIMITS, regenerate, statuses, wait_for_status, worker_env
from console_support import CONSOLE_CONFIG, PREFIX, with_console
from flask import Flask
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait
from servers import WorkerProcs
from sqlalchemy import select
from test_demo_page import browser, chromium  # noqa: F401 (fixtures)

from examples.host_app import db
from flask_plan_regen import GenerationAttempt

URGENT = "urgent"
# The built-in provider's model priced, so that the workers record what each attempt cost.
PRICES = json.dumps({"builtin-deterministic-1": {"input": "1.5", "output": "6"}})


@pytest.fixture
def app_config() -> dict[str, Any]:
    # One attempt: a forced failure ends a regeneration at once. "urgent" plans go to the
    # high queue, which the long-running worker does not serve: they wait there.
    return {
        **NO_LIMITS,
        **CONSOLE_CONFIG,
        "PLAN_REGEN_MAX_ATTEMPTS": 1,
        "PLAN_REGEN_PRIORITY_PHRASES": [URGENT],
        "PLAN_REGEN_PRIORITY_BOOST": 10,
    }


def shoot(driver: WebDriver, path: Path) -> None:
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"screenshot: {path}")


def chart_counts(driver: WebDriver) -> Counter[str]:
    counts: Counter[str] = Counter()
    for rect in driver.find_elements(By.CSS_SELECTOR, "#hourly-chart rect"):
        counts[str(rect.get_attribute("data-series"))] += int(rect.get_attribute("data-count"))
    return counts


def high_queue_waiting(driver: WebDriver) -> str:
    row = driver.find_element(By.CSS_SELECTOR, '#queues tr[data-queue="plan_regen_high"]')
    return str(row.find_element(By.CSS_SELECTOR, ".waiting").text)


def click(driver: WebDriver, element_id: str) -> None:
    driver.find_element(By.ID, element_id).click()


def text_of(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def test_the_console_shows_and_fixes_what_happened(
    app: Flask,
    browser: WebDriver,  # noqa: F811
    make_plan: Callable[..., str],
    sqlite_uri: str,
    redis_url: str,
    worker_procs: WorkerProcs,
    tmp_path: Path,
) -> None:
    console = with_console(app)
    client = console.test_client()
    # Three regenerations fail validation (a burst worker forced to fail), two succeed.
    failed = [regenerate(client, make_plan())["generationId"] for _ in range(3)]
    failing = worker_env(sqlite_uri, redis_url, PLAN_REGEN_BUILTIN_FAILURE="validation",
                         PLAN_REGEN_MAX_ATTEMPTS="1", PLAN_REGEN_PRICES=PRICES)  # fmt: skip
    burst = worker_procs.spawn(["flask", "plan-regen", "worker", "--burst"], failing)
    assert burst.wait(timeout=120) == 0, worker_procs.log_tail(burst)
    assert set(wait_for_status(console, failed).values()) == {"failed"}
    env = worker_env(sqlite_uri, redis_url, PLAN_REGEN_MAX_ATTEMPTS="1", PLAN_REGEN_PRICES=PRICES)
    serving = worker_procs.spawn(
        ["flask", "plan-regen", "worker", "plan_regen_default", "plan_regen_low"], env
    )
    worker_procs.wait_for_log(serving, "Listening on", timeout=60)
    succeeded = [regenerate(client, make_plan())["generationId"] for _ in range(2)]
    wait_for_status(console, succeeded)
    waiting_plan = make_plan(topic=f"{URGENT}: incident response")

    wait = WebDriverWait(browser, 60)
    with serve(console) as base_url:
        admin = base_url + PREFIX
        browser.get(admin + "/")
        assert "OPERATOR_REQUIRED" in browser.page_source  # no operator yet: 403
        browser.get_log("browser")  # the 403s just seen (page, CSS, script): expected
        browser.add_cookie({"name": "operator", "value": "olivia"})

        # Overview: queues, workers, the last hour, the chart of what the test made. With
        # "live" ticked it shows a regeneration queued after it loaded, without a reload.
        browser.get(admin + "/")
        assert text_of(browser, "operator") == "olivia"
        assert high_queue_waiting(browser) == "0"
        click(browser, "live")
        waiting = regenerate(client, waiting_plan)["generationId"]
        started = time.monotonic()
        wait.until(lambda d: high_queue_waiting(d) == "1")
        print(f"live refresh showed the new job after {time.monotonic() - started:.1f} s")
        click(browser, "live")  # off again: nothing below is replaced while it is read
        browser.refresh()
        assert not browser.find_element(By.ID, "live").is_selected()
        assert "plan_regen_low" in text_of(browser, "workers")
        assert chart_counts(browser) == {"succeeded": 2, "validation": 3}
        ended = browser.find_element(By.CSS_SELECTOR, "#last-hour .ended").text
        assert ended == "5"
        shoot(browser, tmp_path / "console-overview.png")

        # Regenerations: filter failed, open one, requeue it; the worker runs the new one.
        browser.get(admin + "/regenerations")
        Select(browser.find_element(By.NAME, "status")).select_by_visible_text("failed")
        click(browser, "apply-filters")
        wait.until(lambda d: "status=failed" in d.current_url)
        rows = browser.find_elements(By.CSS_SELECTOR, "#regenerations tbody tr")
        listed = [row.get_attribute("data-generation-id") for row in rows]
        assert sorted(listed) == sorted(failed)
        shoot(browser, tmp_path / "console-regenerations.png")
        browser.find_element(By.LINK_TEXT, failed[0][:8]).click()
        wait.until(lambda d: d.find_elements(By.ID, "attempts"))
        attempt = browser.find_element(By.CSS_SELECTOR, "#attempts tr[data-number='1']")
        assert "validation" in attempt.text and "builtin-deterministic-1" in attempt.text
        events = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#timeline .event")]
        assert events == ["submitted", "attempt 1 started", "attempt 1 failed", "failed"]
        shoot(browser, tmp_path / "console-regeneration.png")
        click(browser, "requeue")
        wait.until(lambda d: d.find_elements(By.ID, "notice"))
        assert "requeued 1" in text_of(browser, "notice")
        requeued = browser.current_url.split("/regenerations/")[1].split("?")[0]
        assert requeued not in failed
        wait_for_status(console, [requeued])
        browser.refresh()
        wait.until(lambda d: text_of(d, "status") == "succeeded")

        # Actions: requeue the class, with the count in the confirmation.
        browser.get(admin + "/actions")
        browser.find_element(
            By.CSS_SELECTOR, "#failed-by-class tr[data-class='validation'] a"
        ).click()
        wait.until(lambda d: d.find_elements(By.ID, "confirm-count"))
        confirm = browser.find_element(By.ID, "confirm-count")
        assert confirm.get_attribute("data-count") == "2"  # the third was requeued above
        shoot(browser, tmp_path / "console-confirm.png")
        click(browser, "confirm")
        wait.until(lambda d: "requeued 2" in text_of(d, "notice"))
        known = {*failed, *succeeded, waiting, requeued}
        again = set(statuses(console)) - known
        assert len(again) == 2
        assert set(wait_for_status(console, again).values()) == {"succeeded"}

        # Cancel the regeneration waiting in the high queue, from its page.
        browser.get(f"{admin}/regenerations/{waiting}")
        click(browser, "cancel")
        wait.until(lambda d: d.find_elements(By.ID, "notice"))
        assert text_of(browser, "status") == "canceled"
        assert statuses(console, [waiting]) == {waiting: "canceled"}

        # The kill switch, off then on: the API refuses, then accepts new regenerations.
        regenerate_url = f"{base_url}/api/v1/plans/{make_plan()}/regenerate"
        browser.get(admin + "/actions")
        click(browser, "switch-off")
        wait.until(lambda d: d.find_elements(By.ID, "switch-on"))
        assert "refused" in text_of(browser, "switch-state")
        refused = requests.post(regenerate_url, json={}, headers=ALICE, timeout=10)
        assert refused.status_code == 503
        shoot(browser, tmp_path / "console-actions.png")
        click(browser, "switch-on")
        wait.until(lambda d: d.find_elements(By.ID, "switch-off"))
        accepted = requests.post(regenerate_url, json={}, headers=ALICE, timeout=10)
        assert accepted.status_code == 202
        logged = [
            (row.find_element(By.CSS_SELECTOR, ".action").text, row.text.split()[1])
            for row in browser.find_elements(By.CSS_SELECTOR, "#recent-actions tbody tr")
        ]
        assert logged == [
            ("switch on", "olivia"),
            ("switch off", "olivia"),
            ("cancel", "olivia"),
            ("requeue class validation", "olivia"),
            ("requeue", "olivia"),
        ]
        wait_for_status(console, [accepted.json()["generationId"]])

        # The chart shows everything that ended: 2 + 1 + 2 + 1 succeeded, 3 failed.
        browser.get(admin + "/")
        wait.until(lambda d: chart_counts(d) == {"succeeded": 6, "validation": 3})
        shoot(browser, tmp_path / "console-overview-after.png")

        # Spend: what the workers recorded, per hour on the Overview and by model this month.
        with console.app_context():
            costs = db.session.scalars(select(GenerationAttempt.cost_usd)).all()
        total = sum(cost for cost in costs if cost is not None)
        assert total > 0
        charted = browser.find_elements(By.CSS_SELECTOR, "#spend-chart rect")
        assert sum(Decimal(str(rect.get_attribute("data-count"))) for rect in charted) == total
        browser.get(admin + "/spend")
        cell = browser.find_element(By.CSS_SELECTOR, "#by-model tr[data-key] .cost")
        assert Decimal(cell.text.removeprefix("$")) == total
        print(f"spend shown: {cell.text} for {len(costs)} attempts")
        shoot(browser, tmp_path / "console-spend.png")

        # Providers: the entry that answered, its limits, use and breaker.
        browser.get(admin + "/providers")
        entries = browser.find_elements(By.CSS_SELECTOR, "#providers tbody tr[data-entry]")
        assert entries and "closed" in entries[0].find_element(By.CSS_SELECTOR, ".breaker").text
        shoot(browser, tmp_path / "console-providers.png")
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
