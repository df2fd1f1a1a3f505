"""The custom provider shown in docs/providers.md, plugged in through config."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import regenerate, run_jobs, status_of
from flask import Flask

from flask_plan_regen import GenerationRequest, GenerationResult, ProviderRateLimited


class TemplateProvider:
    """A provider that answers from a template, and rate-limits one topic."""

    name = "template"

    def generate(self, request: GenerationRequest) -> GenerationResult:
        if request.plan.topic == "Busy topic":
            raise ProviderRateLimited("template provider: busy")
        task = {"title": f"Read about {request.plan.topic}", "estimatedMinutes": 30}
        module = {"title": request.plan.topic, "estimatedMinutes": 30, "tasks": [task]}
        return GenerationResult(content={"modules": [module]}, provider=self.name, model="v1")


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"PLAN_REGEN_PROVIDER": f"{__name__}:TemplateProvider", "PLAN_REGEN_MAX_ATTEMPTS": 1}


def test_a_custom_provider_generates_and_fails_like_the_builtin(app: Flask, make_plan: Any) -> None:
    client = app.test_client()
    ok_plan = make_plan()
    ok = regenerate(client, ok_plan)["generationId"]
    busy_plan = make_plan(topic="Busy topic")
    busy = regenerate(client, busy_plan)["generationId"]
    run_jobs(app)

    done = status_of(client, ok_plan, ok)
    assert (done["status"], done["result"]["provider"], done["result"]["model"]) == (
        "succeeded",
        "template",
        "v1",
    )
    failed = status_of(client, busy_plan, busy)
    assert (failed["status"], failed["failureClass"]) == ("failed", "rate_limit")
