"""The example app's demo page in a real browser: headless Chromium driven by selenium.

Against the real example app (werkzeug, threaded), a real Redis and a real
``flask plan-regen worker``: sign in, create a plan, regenerate it with overrides,
watch the status live from the event stream, and see the new plan's modules.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from app_server import serve
from conftest import ALICE, NO_LIMITS, REPO_ROOT, worker_env
from flask import Flask
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait
from servers import IN_CI, WorkerProcs

# Flags that let Chromium run headless as root in a container, with nothing fetched
# from the network but the page under test.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
]


@pytest.fixture
def app_config() -> dict[str, Any]:
    return NO_LIMITS


def find_chromium() -> tuple[str, str] | None:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """Paths of Debian's chromium and chromedriver, installed with apt-get if missing (root)."""
    found = find_chromium()
    if found is None and os.geteuid() == 0:
        script = REPO_ROOT / ".ci" / "ensure-chromium"
        subprocess.run(["bash", str(script)], check=False, stdin=subprocess.DEVNULL)
        found = find_chromium()
    if found is None:
        reason = (
            "chromium and chromedriver not found and could not be installed; run "
            "`bash .ci/ensure-chromium` as root (Debian's chromium and chromium-driver)"
        )
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@pytest.fixture
def browser(chromium: tuple[str, str], tmp_path: Path) -> Iterator[WebDriver]:
    binary, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


SEEN_PREVIEWS = """
window.previewsSeen = [];
new MutationObserver((changes) => {
  for (const change of changes) for (const node of change.addedNodes) {
    if (node.classList && node.classList.contains("preview")) {
      window.previewsSeen.push({
        index: Number(node.dataset.index),
        status: document.getElementById("status").textContent,
      });
    }
  }
}).observe(document.getElementById("modules"), {childList: true});
"""


def text_of(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def timeline(driver: WebDriver) -> list[str]:
    items = driver.find_elements(By.CSS_SELECTOR, "#timeline li")
    return [str(item.get_attribute("data-status")) for item in items]


def test_the_demo_page_regenerates_a_plan_and_shows_it_live(
    app: Flask,
    browser: WebDriver,
    sqlite_uri: str,
    redis_url: str,
    worker_procs: WorkerProcs,
    tmp_path: Path,
) -> None:
    env = worker_env(sqlite_uri, redis_url, PLAN_REGEN_BUILTIN_DELAY="2.0")
    worker = worker_procs.spawn(["flask", "plan-regen", "worker"], env)
    worker_procs.wait_for_log(worker, "Listening on", timeout=30)
    wait = WebDriverWait(browser, 60)
    with serve(app) as base_url:
        browser.get(base_url + "/")
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))

        user = browser.find_element(By.ID, "user-id")
        user.clear()
        user.send_keys("alice")
        browser.find_element(By.ID, "sign-in").click()
        wait.until(lambda d: text_of(d, "user-name") == "alice")

        browser.find_element(By.ID, "create-plan").click()  # the form's defaults
        wait.until(lambda d: text_of(d, "status") in {"succeeded", "failed", "canceled"})
        assert text_of(browser, "status") == "succeeded", text_of(browser, "message")
        assert "First generation" in text_of(browser, "progress-label")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#modules .module"))
        first_plan = text_of(browser, "modules")

        Select(browser.find_element(By.ID, "override-skill-level")).select_by_visible_text(
            "advanced"
        )
        browser.find_element(By.ID, "override-weekly-hours").send_keys("3")
        # Note, in the page, the status shown when each module preview appears on screen.
        browser.execute_script(SEEN_PREVIEWS)
        browser.find_element(By.ID, "regenerate-plan").click()
        wait.until(lambda d: "Regeneration with overrides" in text_of(d, "progress-label"))
        wait.until(lambda d: text_of(d, "status") in {"succeeded", "failed", "canceled"})
        assert text_of(browser, "status") == "succeeded", text_of(browser, "message")
        seen = timeline(browser)
        print(f"statuses the page showed live: {seen}")
        # The first event is the state when the stream opened; then each change.
        assert seen[-2:] == ["processing", "succeeded"]
        assert set(seen) <= {"pending", "processing", "succeeded"}
        wait.until(lambda d: text_of(d, "modules") != first_plan)
        previews = browser.execute_script("return window.previewsSeen")
        print(f"module previews on screen, with the status shown then: {previews}")
        assert previews and previews[0]["status"] == "processing"  # before the end
        assert [p["index"] for p in previews] == list(range(len(previews)))
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#modules .preview"))

        # The page shows the plan the API has, with its weeks and due dates.
        plan_id = browser.execute_script("return planId")
        plan = requests.get(f"{base_url}/api/v1/plans/{plan_id}", headers=ALICE, timeout=10).json()
        shown = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#modules .module h3")]
        assert shown == [f"{i}. {m['title']}" for i, m in enumerate(plan["modules"], 1)]
        weeks = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#modules td.week")]
        dues = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#modules td.due")]
        tasks = [t for m in plan["modules"] for t in m["tasks"]]
        assert weeks == [str(t["week"]) for t in tasks] and all(weeks)
        assert dues == [t["dueDate"] for t in tasks] and all(dues)
        history = requests.get(
            f"{base_url}/api/v1/plans/{plan_id}/regenerations", headers=ALICE, timeout=10
        ).json()["items"]
        assert history[0]["overrides"] == {"skillLevel": "advanced", "weeklyHours": 3}

        screenshot = tmp_path / "demo-page.png"
        shot = browser.execute_cdp_cmd(  # the whole page, not only the window
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
        )
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        print(f"screenshot: {screenshot}")
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
