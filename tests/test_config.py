"""init_app: defaults, checks of every PLAN_REGEN_* value, hooks from import strings."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_plan_regen import ConfigurationError, PlanRegen, get_state, regen_bp
from flask_plan_regen.config import DEFAULTS
from flask_plan_regen.identity import tier_of


def tier_from_config_hook(user_id: str) -> str:
    return "pro" if user_id == "vip" else "free"


def make_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", **config)
    db = SQLAlchemy()
    db.init_app(app)
    PlanRegen(app, db=db)
    return app


def test_defaults_are_set_without_overwriting_the_hosts_values() -> None:
    app = make_app(PLAN_REGEN_PAGE_SIZE=7)
    assert app.config["PLAN_REGEN_PAGE_SIZE"] == 7
    for key, value in DEFAULTS.items():
        assert key.startswith("PLAN_REGEN_")
        if key != "PLAN_REGEN_PAGE_SIZE":
            assert app.config[key] == value


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PLAN_REGEN_ENABLED", "yes"),
        ("PLAN_REGEN_REDIS_TIMEOUT", 0),
        ("PLAN_REGEN_QUEUES", [["high", 5], ["low", 10]]),
        ("PLAN_REGEN_QUEUES", [["bad:name", 0]]),
        ("PLAN_REGEN_QUEUES", [["only", 3]]),
        ("PLAN_REGEN_TIER_PRIORITY", {"free": -1}),
        ("PLAN_REGEN_PRIORITY_PHRASES", ["ok", ""]),
        ("PLAN_REGEN_PRIORITY_BOOST", 1.5),
        ("PLAN_REGEN_DEFAULT_TIER", "gold"),
        ("PLAN_REGEN_AUTH_HANDLER", "not an import string"),
        ("PLAN_REGEN_MAX_BODY_BYTES", 0),
        ("PLAN_REGEN_JOB_TIMEOUT", True),
        ("PLAN_REGEN_PAGE_SIZE", 1000),
        ("PLAN_REGEN_BUILTIN_FAILURE", "explode"),
        ("PLAN_REGEN_STREAM_KEEPALIVE", 0),
        ("PLAN_REGEN_STREAM_RECHECK", "5"),
        ("PLAN_REGEN_STREAM_MAX_OPEN", 0),
        ("PLAN_REGEN_PROVIDER_BASE_URL", "ftp://127.0.0.1/v1"),
        ("PLAN_REGEN_PROVIDER_BASE_URL", "not a url"),
        ("PLAN_REGEN_STRIPE_API_BASE", "http://stripe.internal:badport"),
        ("PLAN_REGEN_PROVIDER_RESPONSE_FORMAT", "text"),
        ("PLAN_REGEN_PROVIDER_MAX_OUTPUT_TOKENS", 100),
        ("PLAN_REGEN_PROVIDER_MAX_OUTPUT_TOKENS", "4096"),
        ("PLAN_REGEN_PROVIDER_MAX_OUTPUT_TOKENS_PARAM", "max_output_tokens"),
        ("PLAN_REGEN_PROVIDER_FIRST_TOKEN_TIMEOUT", 0),
        ("PLAN_REGEN_PROVIDER_IDLE_TIMEOUT", "30"),
        ("PLAN_REGEN_PROVIDER_TIMEOUT_EXTENSION", -1),
        ("PLAN_REGEN_PROVIDER_STREAM", "yes"),
    ],
)
def test_a_wrong_value_is_named_in_a_clear_error(key: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=key) as raised:
        make_app(**{key: value})
    assert repr(value) in str(raised.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PLAN_REGEN_PROVIDER_API_KEY", b"sk-live-secret"),
        ("PLAN_REGEN_STRIPE_WEBHOOK_SECRET", 12345),
    ],
)
def test_an_error_about_a_secret_never_prints_its_value(key: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=key) as raised:
        make_app(**{key: value})
    assert "value hidden" in str(raised.value)
    assert str(value).strip("b'") not in str(raised.value)


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        (
            "PLAN_REGEN_REDIS_URL",
            "localhost://:hunter2@cache:6379",
            "'localhost://:***@cache:6379'",
        ),
        (
            "PLAN_REGEN_REDIS_URL",
            "tcp://cache:6379/0?password=hunter2",
            "'tcp://cache:6379/0?password=***'",
        ),
        # Not named *URL*, KEY or SECRET: masked all the same.
        (
            "PLAN_REGEN_STRIPE_API_BASE",
            "ftp://stripe-proxy:hunter2@proxy.internal",
            "'ftp://stripe-proxy:***@proxy.internal'",
        ),
        (
            "PLAN_REGEN_STRIPE_API_BASE",
            "HTTPS//hunter2@proxy.internal",
            "'HTTPS//***@proxy.internal'",
        ),
        ("PLAN_REGEN_STRIPE_API_BASE", "proxy:hunter2@internal", "'proxy:***@internal'"),
    ],
)
def test_an_error_masks_the_credentials_of_a_url_in_any_key(
    key: str, value: str, shown: str
) -> None:
    with pytest.raises(ConfigurationError, match=key) as raised:
        make_app(**{key: value})
    message = str(raised.value)
    print(f"\n{message}")
    assert "hunter2" not in message
    assert message.endswith(f"got {shown}.")


def test_an_import_string_that_cannot_be_imported_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="PLAN_REGEN_TIER_RESOLVER"):
        make_app(PLAN_REGEN_TIER_RESOLVER="no_such_module_here:resolver")


def test_hooks_given_as_import_strings_are_used() -> None:
    app = make_app(PLAN_REGEN_TIER_RESOLVER=f"{__name__}:tier_from_config_hook")
    with app.app_context():
        assert tier_of(get_state(), "vip") == "pro"
        assert tier_of(get_state(), "someone") == "free"


def test_init_app_needs_the_db() -> None:
    with pytest.raises(ConfigurationError, match="db=db"):
        PlanRegen().init_app(Flask(__name__))


def test_init_app_twice_on_one_app_is_refused() -> None:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    db = SQLAlchemy(app)
    regen = PlanRegen(app, db=db)
    with pytest.raises(ConfigurationError, match="already"):
        regen.init_app(app, db=db)


def test_one_extension_serves_two_apps_with_their_own_state() -> None:
    db = SQLAlchemy()
    regen = PlanRegen(db=db)
    apps = []
    for url in ("redis://127.0.0.1:1/0", "redis://127.0.0.1:2/0"):
        app = Flask(__name__)
        app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", PLAN_REGEN_REDIS_URL=url)
        db.init_app(app)
        regen.init_app(app)
        apps.append(app)
    ports = [get_state(app).redis.connection_pool.connection_kwargs["port"] for app in apps]
    assert ports == [1, 2]


def test_registering_the_blueprint_before_init_app_says_what_to_do() -> None:
    app = Flask(__name__)
    with pytest.raises(RuntimeError, match="init_app"):
        app.register_blueprint(regen_bp)


def test_no_auth_handler_answers_401_with_how_to_register_one(
    redis_url: str, tmp_path: Any
) -> None:
    app = make_app(PLAN_REGEN_REDIS_URL=redis_url)
    app.register_blueprint(regen_bp)
    response = app.test_client().post("/api/v1/plans/x/regenerate", json={})
    assert response.status_code == 401
    assert response.json is not None
    assert response.json["code"] == "UNAUTHORIZED"
    assert "@regen.auth_handler" in response.json["error"]
