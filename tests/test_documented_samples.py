"""The samples and field lists in docs/http-api.md against real answers of the example app.

Each documented shape names exactly the fields the route answers: a field the
docs lack (``userId`` once was) or name wrongly fails here. Also: the
sections follow the order of the routes' table of contents, and the refund
rule is stated once, in docs/billing.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from app_server import serve
from conftest import ALICE, REPO_ROOT, regenerate, run_jobs, status_of
from flask import Flask
from sse import EventStream

HTTP_API = REPO_ROOT / "docs" / "http-api.md"
# A quoted name followed by ":" in a JSON sample, or a quoted name in a field list.
_SAMPLE_KEY = re.compile(r'"(\w+)":')
_LISTED_KEY = re.compile(r'"(\w+)"')


def section(title: str) -> str:
    """The text of the ``## title`` section of docs/http-api.md (up to the next ``## ``)."""
    text = HTTP_API.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def keys(value: Any, *, skip: frozenset[str] = frozenset()) -> set[str]:
    """Every object key in ``value``, nested ones too (not inside the keys in ``skip``)."""
    if isinstance(value, dict):
        found = set(value)
        for key, item in value.items():
            if key not in skip:
                found |= keys(item, skip=skip)
        return found
    if isinstance(value, list):
        return set().union(*(keys(item, skip=skip) for item in value))
    return set()


def test_the_regeneration_sample_names_every_field_of_a_real_answer(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id, weeklyHours=8)["generationId"]
    run_jobs(app)
    real = status_of(client, plan_id, generation_id)
    sample = section("`GET /plans/<plan_id>/regenerations/<generation_id>`")
    block = sample.split("```json\n", 1)[1].split("```", 1)[0]
    documented = set(_SAMPLE_KEY.findall(block))
    # "overrides" and "adjustments" hold whatever was overridden or adjusted: not a shape.
    answered = keys(real, skip=frozenset({"overrides", "adjustments"}))
    print(f"documented {len(documented)} fields; answered {len(answered)}")
    assert documented - {"weeklyHours"} == answered, documented ^ answered


def test_the_event_sample_names_every_field_of_a_real_event(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    client = app.test_client()
    plan_id = make_plan()
    generation_id = regenerate(client, plan_id)["generationId"]
    run_jobs(app)
    url = f"/api/v1/plans/{plan_id}/regenerations/{generation_id}/events"
    with serve(app) as base_url, EventStream(base_url + url, ALICE) as stream:
        (event,) = stream.rest()
    sample = section("`GET /plans/<plan_id>/regenerations/<generation_id>/events`")
    block = sample.split("```text\n", 1)[1].split("```", 1)[0]
    # The status events (unnamed); a named event's data is another document.
    datas = [
        json.loads(event.split("data: ", 1)[1])
        for event in block.split("\n\n")
        if "data: " in event and "\nevent: " not in f"\n{event}"
    ]
    print(f"{len(datas)} documented events; a real one: {sorted(event.data)}")
    assert datas and all(set(data) == set(event.data) for data in datas)
    assert set(datas[-1]["result"]) == set(event.data["result"])


def test_the_listed_fields_of_202_plan_and_usage_answers_are_the_real_ones(
    app: Flask, make_plan: Callable[..., str]
) -> None:
    client = app.test_client()
    plan_id = make_plan()
    accepted = regenerate(client, plan_id)
    run_jobs(app)
    plan = client.get(f"/api/v1/plans/{plan_id}", headers=ALICE).get_json()
    usage = client.get("/api/v1/usage", headers=ALICE).get_json()

    table = section("`POST /plans/<plan_id>/regenerate`")
    row = next(line for line in table.splitlines() if line.startswith("| 202 |"))
    assert set(_LISTED_KEY.findall(row.split("Body", 1)[1].split("`Location`")[0])) == set(
        accepted
    ) | {"pending"}  # the row shows `"status": "pending"`

    plan_section = section("`GET /plans/<plan_id>`")
    listed = set(_LISTED_KEY.findall(plan_section.split("`{", 1)[1].split("}`", 1)[0]))
    assert listed == keys(plan), listed ^ keys(plan)

    usage_section = section("`GET /usage`")
    listed = set(_LISTED_KEY.findall(usage_section.split("`{", 1)[1].split("}`", 1)[0]))
    assert listed == keys(usage), listed ^ keys(usage)
    print(f"202: {sorted(accepted)}; plan: {len(keys(plan))} fields; usage: {sorted(keys(usage))}")


def test_the_sections_come_in_the_order_of_a_clients_journey() -> None:
    titles = re.findall(r"^## (.+)$", HTTP_API.read_text(), re.M)
    routes = [t for t in titles if t.startswith("`")]
    print(routes)
    order = [
        "`POST /plans`",
        "`POST /plans/<plan_id>/regenerate`",
        "`GET /plans/<plan_id>/regenerations/<generation_id>`",
        "`GET /plans/<plan_id>/regenerations/<generation_id>/events`",
        "`POST /plans/<plan_id>/regenerations/<generation_id>/cancel`",
    ]
    assert [r for r in routes if r in order] == order
    webhook = routes.index("`POST /billing/stripe/webhook`")
    assert all(routes.index(r) < webhook for r in order)


def test_the_refund_rule_is_stated_only_in_billing() -> None:
    """Other docs point to docs/billing.md's rule rather than list the refunded classes."""
    for path in [REPO_ROOT / "README.md", HTTP_API, REPO_ROOT / "docs" / "operations.md"]:
        text = " ".join(path.read_text().split())
        for sentence in re.split(r"(?<=[.;])\s", text):
            refund = re.search(
                r"quota\W+(is\W+)?given back|gives? the (monthly )?quota back", sentence
            )
            classes = re.findall(
                r"provider_error|rate_limit|timeout|provider_rejected|truncated", sentence
            )
            assert not (refund and len(classes) >= 2), f"{path.name}: {sentence}"
        assert "billing.md" in text, path.name
