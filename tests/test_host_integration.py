"""What a host app meets when it plugs the package in: stores and providers in each
documented form, init_app without ``db``, the blueprint at the root, ``init-db`` with
its own store, ``rq-command`` after ``--app``, and the public names."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import ALICE, REPO_ROOT, build_app, regenerate, status_of
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import inspect

import flask_plan_regen
from examples.host_app import db
from flask_plan_regen import (
    BuiltinProvider,
    ConfigurationError,
    GeneratedModule,
    PlanInput,
    PlanRegen,
    SQLAlchemyPlanStore,
    create_plan,
    get_state,
    regen_bp,
)
from flask_plan_regen.testing import TEST_CONFIG


def eager_app(database_uri: str, **config: Any) -> Flask:
    """The example app on an in-process Redis, each job run in its request."""
    return build_app(database_uri, "memory://", PLAN_REGEN_EAGER=True, **config)


# --- PLAN_REGEN_STORE and PLAN_REGEN_PROVIDER: an object, a class or a factory ---------


class ExampleStore:
    """A store class whose constructor takes nothing: it keeps plans in the example's db."""

    def __init__(self) -> None:
        self.builtin = SQLAlchemyPlanStore(db)

    def load_plan(self, plan_id: str) -> PlanInput | None:
        return self.builtin.load_plan(plan_id)

    def create_plan(self, owner_id: str, plan: dict[str, Any]) -> str:
        return self.builtin.create_plan(owner_id, plan)

    def replace_content(self, plan_id: str, modules: Sequence[GeneratedModule]) -> None:
        self.builtin.replace_content(plan_id, modules)

    def plan_document(self, plan_id: str) -> dict[str, Any] | None:
        return self.builtin.plan_document(plan_id)


class StoreTakingDb(SQLAlchemyPlanStore):
    """A store class that takes ``db``, like the built-in one."""


def store_factory(db: SQLAlchemy) -> StoreTakingDb:
    return StoreTakingDb(db)


class NamedProvider(BuiltinProvider):
    """The built-in provider's plans under another name, to see which provider ran."""

    name = "named"


def provider_factory() -> NamedProvider:
    return NamedProvider()


def post_plan(app: Flask) -> dict[str, Any]:
    """POST /plans, assert 202, and return the (eagerly run) regeneration's document."""
    client = app.test_client()
    response = client.post("/api/v1/plans", json={"topic": "Baroque music"}, headers=ALICE)
    assert response.status_code == 202, response.json
    document = status_of(client, response.json["planId"], response.json["generationId"])
    assert document["status"] == "succeeded", document
    plan = client.get(f"/api/v1/plans/{response.json['planId']}", headers=ALICE).json
    assert plan["modules"], plan
    return document


@pytest.mark.parametrize(
    ("store", "made"),
    [
        (ExampleStore(), ExampleStore),
        (ExampleStore, ExampleStore),
        (f"{__name__}:ExampleStore", ExampleStore),
        (StoreTakingDb, StoreTakingDb),
        (store_factory, StoreTakingDb),
        (f"{__name__}:store_factory", StoreTakingDb),
    ],
    ids=["object", "class", "class-import", "class-with-db", "factory", "factory-import"],
)
def test_the_store_setting_takes_an_object_a_class_or_a_factory(
    sqlite_uri: str, store: Any, made: type
) -> None:
    app = eager_app(sqlite_uri, PLAN_REGEN_STORE=store)
    assert type(get_state(app).store) is made
    if not isinstance(store, str | type) and not callable(store):
        assert get_state(app).store is store  # an object is used as it is
    post_plan(app)


@pytest.mark.parametrize(
    "provider",
    [NamedProvider(), NamedProvider, provider_factory, f"{__name__}:provider_factory"],
    ids=["object", "class", "factory", "factory-import"],
)
def test_the_provider_setting_takes_an_object_a_class_or_a_factory(
    sqlite_uri: str, provider: Any
) -> None:
    app = eager_app(sqlite_uri, PLAN_REGEN_PROVIDER=provider)
    assert post_plan(app)["result"]["provider"] == "named"


class NotAStore:
    def load_plan(self, plan_id: str) -> None:
        return None


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("PLAN_REGEN_STORE", 42, "got a int"),
        ("PLAN_REGEN_STORE", NotAStore, "does not implement PlanStore"),
        ("PLAN_REGEN_PROVIDER", NotAStore, "does not implement GenerationProvider"),
        ("PLAN_REGEN_PROVIDER", "no.colon.here", "import string"),
    ],
)
def test_a_wrong_store_or_provider_is_a_clear_configuration_error(
    sqlite_uri: str, key: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=key) as raised:
        eager_app(sqlite_uri, **{key: value})
    assert message in str(raised.value)


def test_a_provider_given_to_init_app_is_used(sqlite_uri: str) -> None:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=sqlite_uri, **TEST_CONFIG)
    own_db = SQLAlchemy(app)
    PlanRegen(app, db=own_db, provider=NamedProvider, store=StoreTakingDb)
    assert isinstance(get_state(app).provider, NamedProvider)
    assert isinstance(get_state(app).store, StoreTakingDb)


def test_init_app_without_db_uses_the_apps_flask_sqlalchemy(sqlite_uri: str) -> None:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=sqlite_uri, **TEST_CONFIG)
    own_db = SQLAlchemy(app)
    PlanRegen().init_app(app)
    assert get_state(app).db is own_db


# --- The blueprint at the root leaves the host's own error pages alone -------------------


def host_app(sqlite_uri: str, url_prefix: str) -> Flask:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=sqlite_uri, **TEST_CONFIG)
    SQLAlchemy(app)
    regen = PlanRegen(app)
    regen.auth_handler(lambda: "alice")
    app.register_blueprint(regen_bp, url_prefix=url_prefix)

    @app.get("/about")
    def about() -> str:
        return "about us"

    @app.errorhandler(404)
    def host_not_found(error: Exception) -> tuple[str, int]:
        return "<h1>host 404</h1>", 404

    @app.errorhandler(405)
    def host_wrong_method(error: Exception) -> tuple[str, int]:
        return "<h1>host 405</h1>", 405

    return app


@pytest.mark.parametrize("url_prefix", ["", "/"])
def test_at_the_root_the_host_keeps_its_404_and_405(sqlite_uri: str, url_prefix: str) -> None:
    client = host_app(sqlite_uri, url_prefix).test_client()
    assert client.get("/no-such-page").text == "<h1>host 404</h1>"
    assert client.post("/about").text == "<h1>host 405</h1>"
    assert client.get("/about").text == "about us"
    # The package's own routes still answer in JSON, a wrong method included.
    wrong_method = client.get("/plans/x/regenerate")
    assert (wrong_method.status_code, wrong_method.json["code"]) == (405, "METHOD_NOT_ALLOWED")
    assert "POST" in wrong_method.headers["Allow"]
    assert client.get("/plans/x").json["code"] == "PLAN_NOT_FOUND"


def test_under_a_prefix_unknown_urls_answer_json_and_others_are_the_hosts(
    sqlite_uri: str,
) -> None:
    client = host_app(sqlite_uri, "/api/").test_client()
    assert client.get("/api/nothing").json["code"] == "NOT_FOUND"
    assert client.delete("/api/plans/x").json["code"] == "METHOD_NOT_ALLOWED"
    assert client.get("/apiary").text == "<h1>host 404</h1>"
    assert client.post("/about").text == "<h1>host 405</h1>"


# --- init-db with a custom store ----------------------------------------------------------

PLAN_TABLES = {"plan_regen_plans", "plan_regen_modules", "plan_regen_tasks"}


def fresh_app(tmp_path: Path, **config: Any) -> Flask:
    from examples.host_app import create_app

    return create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'new.sqlite'}", **config})


def table_names(app: Flask) -> set[str]:
    with app.app_context():
        return set(inspect(db.engine).get_table_names())


def test_init_db_leaves_the_plan_tables_out_for_a_custom_store(tmp_path: Path) -> None:
    app = fresh_app(tmp_path, PLAN_REGEN_STORE=ExampleStore)
    result = app.test_cli_runner().invoke(args=["plan-regen", "init-db"])
    assert result.exit_code == 0, result.output
    tables = table_names(app)
    assert "plan_regen_regenerations" in tables
    assert not tables & PLAN_TABLES
    assert "plan_regen_plans" not in result.output


def test_create_all_leaves_the_plan_tables_out_for_a_custom_store(tmp_path: Path) -> None:
    app = fresh_app(tmp_path, PLAN_REGEN_STORE=ExampleStore)
    PlanRegen.create_all(app)
    assert not table_names(app) & PLAN_TABLES


def test_init_db_creates_the_plan_tables_for_a_subclass_of_the_builtin_store(
    tmp_path: Path,
) -> None:
    app = fresh_app(tmp_path, PLAN_REGEN_STORE=StoreTakingDb)
    assert app.test_cli_runner().invoke(args=["plan-regen", "init-db"]).exit_code == 0
    assert table_names(app) >= PLAN_TABLES


# --- CLI: rq-command after `flask --app` ----------------------------------------------------


def flask_command(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "FLASK_APP"}
    environ["PYTHONPATH"] = str(REPO_ROOT)
    environ.update(env or {})
    flask = Path(sys.executable).parent / "flask"
    return subprocess.run(
        [str(flask), *args], env=environ, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )


def test_rq_command_prints_the_app_given_with_dash_dash_app() -> None:
    result = flask_command("--app", "examples.host_app:create_app", "plan-regen", "rq-command")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("FLASK_APP=examples.host_app:create_app rq worker ")


def test_rq_command_prints_the_app_named_in_flask_app() -> None:
    result = flask_command(
        "plan-regen", "rq-command", env={"FLASK_APP": "examples.host_app:create_app"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("FLASK_APP=examples.host_app:create_app rq worker ")


# --- Public names ---------------------------------------------------------------------------


def test_the_openai_provider_is_importable_from_the_top_level() -> None:
    from flask_plan_regen import OpenAIProvider
    from flask_plan_regen.openai_provider import OpenAIProvider as Defined

    assert OpenAIProvider is Defined


def test_without_the_openai_extra_the_error_says_what_to_install() -> None:
    script = (
        "import sys; sys.modules['openai'] = None\n"  # as if openai were not installed
        "import flask_plan_regen\n"
        "print('package imported')\n"
        "from flask_plan_regen import OpenAIProvider\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "package imported"
    assert result.returncode != 0
    assert "pip install 'flask-plan-regen[openai]'" in result.stderr


def test_create_plan_needs_no_internal_state(sqlite_uri: str) -> None:
    app = eager_app(sqlite_uri)
    with app.app_context():
        plan_id = create_plan("alice", "  Baroque music ", weekly_hours=3, skill_level="advanced")
    client = app.test_client()
    plan = client.get(f"/api/v1/plans/{plan_id}", headers=ALICE).json
    assert (plan["topic"], plan["weeklyHours"], plan["skillLevel"], plan["modules"]) == (
        "Baroque music",
        3,
        "advanced",
        [],
    )
    assert status_of(client, plan_id, regenerate(client, plan_id)["generationId"])["status"] == (
        "succeeded"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"weekly_hours": 0}, "weeklyHours"),
        ({"weekly_hours": "5"}, "weeklyHours"),
        ({"start_date": "2027-03-01", "deadline_date": "2027-01-01"}, "deadlineDate"),
        ({"colour": "blue"}, "Unknown plan fields: colour"),
    ],
)
def test_create_plan_checks_the_fields_as_post_plans_does(
    sqlite_uri: str, fields: dict[str, Any], message: str
) -> None:
    app = eager_app(sqlite_uri)
    with app.app_context(), pytest.raises(ValueError, match=message):
        create_plan("alice", "Baroque music", **fields)


def test_the_version_is_the_installed_distributions() -> None:
    assert flask_plan_regen.__version__ == importlib.metadata.version("flask-plan-regen")
