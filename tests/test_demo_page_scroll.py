"""The demo page brings its progress card into view when a regeneration starts (1280x900)."""

from __future__ import annotations

from typing import Any

import pytest
from app_server import serve
from conftest import NO_LIMITS, worker_env
from flask import Flask
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait
from servers import WorkerProcs
from test_demo_page import browser, chromium, text_of  # noqa: F401 - fixtures

VISIBLE = """
const rect = document.getElementById(arguments[0]).getBoundingClientRect();
return [rect.top, rect.bottom, window.innerHeight];
"""


@pytest.fixture
def app_config() -> dict[str, Any]:
    return NO_LIMITS


def test_regenerate_scrolls_the_progress_card_into_view(
    app: Flask,
    browser: WebDriver,  # noqa: F811 - the fixture imported above
    sqlite_uri: str,
    redis_url: str,
    worker_procs: WorkerProcs,
) -> None:
    browser.set_window_size(1280, 900)
    env = worker_env(sqlite_uri, redis_url, PLAN_REGEN_BUILTIN_DELAY="1.0")
    worker_procs.wait_for_log(
        worker_procs.spawn(["flask", "plan-regen", "worker"], env), "Listening on", timeout=30
    )
    wait = WebDriverWait(browser, 60)
    with serve(app) as base_url:
        browser.get(base_url + "/")
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        user = browser.find_element(By.ID, "user-id")
        user.clear()
        user.send_keys("alice")
        browser.find_element(By.ID, "sign-in").click()
        wait.until(lambda d: text_of(d, "user-name") == "alice")
        browser.find_element(By.ID, "create-plan").click()
        wait.until(lambda d: text_of(d, "status") == "succeeded")

        browser.execute_script("window.scrollTo(0, 0)")  # where a reader of the forms is
        button = browser.find_element(By.ID, "regenerate-plan")
        browser.execute_script("arguments[0].scrollIntoView({block: 'end'})", button)
        top, bottom, height = browser.execute_script(VISIBLE, "progress")
        print(f"before: progress card at {top:.0f}-{bottom:.0f} of a {height} px window")
        assert top > height - 100  # out of sight, or its first line at most
        button.click()

        def in_view(driver: WebDriver) -> list[float] | None:
            top, bottom, height = driver.execute_script(VISIBLE, "progress")
            return [top, bottom, height] if top >= 0 and top < height - 100 else None

        top, bottom, height = wait.until(in_view)
        print(f"after Regenerate: progress card at {top:.0f}-{bottom:.0f} of a {height} px window")
