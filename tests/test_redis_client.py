"""PLAN_REGEN_REDIS_URL's kinds (server, Sentinels), what is refused at init_app,
what rq-command prints of it, and the start-up check of Redis's eviction policy."""

from __future__ import annotations

import logging

import pytest
import redis

from examples.host_app import create_app
from flask_plan_regen import get_state
from flask_plan_regen.errors import ConfigurationError
from flask_plan_regen.redis_client import parse_sentinel_url, warn_unless_noeviction


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_options() -> None:
    addresses, service, options, sentinel_options = parse_sentinel_url(
        "rediss+sentinel://app:pw@10.0.0.5:26380,sentinel-b,[::1]:26381/regen/3"
        "?sentinel_password=sp&ssl_ca_certs=/etc/ca.pem&socket_keepalive=true"
    )
    assert addresses == [("10.0.0.5", 26380), ("sentinel-b", 26379), ("::1", 26381)]
    assert service == "regen"
    assert sentinel_options == {"password": "sp"}
    assert options["db"] == 3
    assert (options["username"], options["password"]) == ("app", "pw")
    assert (options["ssl"], options["ssl_ca_certs"], options["socket_keepalive"]) == (
        True,
        "/etc/ca.pem",
        True,
    )


@pytest.mark.parametrize(
    ("url", "wrong"),
    [
        ("redis+sentinel://127.0.0.1:26379/", "path"),
        ("redis+sentinel://127.0.0.1:26379/regen/zero", "path"),
        ("redis+sentinel:///regen", "Sentinel host"),
        ("redis://127.0.0.1:6379/0?sentinel=regen", "sentinel"),
    ],
)
def test_an_unusable_redis_url_is_refused_at_init_app(url: str, wrong: str) -> None:
    with pytest.raises(ConfigurationError, match="PLAN_REGEN_REDIS_URL") as raised:
        create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://", "PLAN_REGEN_REDIS_URL": url})
    assert wrong in str(raised.value)


def test_the_app_gets_a_client_of_the_sentinels_primary() -> None:
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": "sqlite://",
            "PLAN_REGEN_REDIS_URL": "redis+sentinel://127.0.0.1:1,127.0.0.1:2/regen/0",
        }
    )
    client = get_state(app).redis
    assert "service=regen(master)" in repr(client.connection_pool)
    # Nothing answers on those ports: a transient error, the 503 of any Redis outage.
    with pytest.raises(redis.ConnectionError):
        client.ping()


def test_rq_command_masks_secrets_but_prints_paths() -> None:
    url = (
        "rediss://:s3cret@redis.internal:6380/0?ssl_ca_certs=/etc/regen/ca.pem"
        "&ssl_certfile=/etc/regen/client.pem&ssl_keyfile=/etc/regen/client.key&password=zz"
    )
    app = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://", "PLAN_REGEN_REDIS_URL": url})
    result = app.test_cli_runner().invoke(args=["plan-regen", "rq-command"])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output and "zz" not in result.output
    assert (
        "'rediss://:***@redis.internal:6380/0?ssl_ca_certs=/etc/regen/ca.pem"
        "&ssl_certfile=/etc/regen/client.pem&ssl_keyfile=/etc/regen/client.key&password=***'"
    ) in result.output


def test_rq_command_refuses_sentinels_which_rq_cannot_follow() -> None:
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": "sqlite://",
            "PLAN_REGEN_REDIS_URL": "redis+sentinel://127.0.0.1:26379/regen",
        }
    )
    result = app.test_cli_runner().invoke(args=["plan-regen", "rq-command"])
    assert result.exit_code == 2
    assert "flask plan-regen worker" in result.output


def test_an_evicting_redis_is_warned_about(
    redis_conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    before = redis_conn.config_get("maxmemory-policy")["maxmemory-policy"]
    try:
        assert warn_unless_noeviction(redis_conn) is None
        redis_conn.config_set("maxmemory-policy", "allkeys-lru")
        with caplog.at_level(logging.WARNING, logger="flask_plan_regen.redis"):
            message = warn_unless_noeviction(redis_conn)
        assert message is not None and "'allkeys-lru'" in message
        assert [record.getMessage() for record in caplog.records] == [message]
    finally:
        redis_conn.config_set("maxmemory-policy", before)
