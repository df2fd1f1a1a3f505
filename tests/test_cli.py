"""``flask plan-regen`` commands that need no worker."""

from __future__ import annotations

from pathlib import Path

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import inspect

from examples.host_app import create_app


def test_init_db_creates_the_tables_and_is_repeatable(tmp_path: Path) -> None:
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'new.sqlite'}"})
    runner = app.test_cli_runner()
    for _ in range(2):
        result = runner.invoke(args=["plan-regen", "init-db"])
        assert result.exit_code == 0, result.output
    db: SQLAlchemy = app.extensions["sqlalchemy"]
    with app.app_context():
        tables = set(inspect(db.engine).get_table_names())
    assert {
        "plan_regen_plans",
        "plan_regen_modules",
        "plan_regen_tasks",
        "plan_regen_regenerations",
        "plan_regen_attempts",
    } <= tables


def test_rq_command_lists_the_queues_in_priority_order(tmp_path: Path) -> None:
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": "sqlite://",
            "PLAN_REGEN_QUEUES": [["urgent", 8], ["rest", 0]],
        }
    )
    result = app.test_cli_runner().invoke(args=["plan-regen", "rq-command"])
    assert result.exit_code == 0
    assert result.output.strip().endswith(
        "-S rq.serializers.JSONSerializer --url "
        "redis://127.0.0.1:6379/0 plan_regen_urgent plan_regen_rest"
    )


def test_rq_command_masks_the_redis_password() -> None:
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": "sqlite://",
            "PLAN_REGEN_REDIS_URL": "redis://:s3cret@redis.internal:6380/2",
        }
    )
    result = app.test_cli_runner().invoke(args=["plan-regen", "rq-command"])
    assert result.exit_code == 0
    assert "s3cret" not in result.output
    assert "--url 'redis://:***@redis.internal:6380/2' " in result.output  # shell-quoted


def test_rq_command_masks_a_password_given_in_the_query() -> None:
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": "sqlite://",
            "PLAN_REGEN_REDIS_URL": "redis://redis.internal:6380/2?password=s3cret",
        }
    )
    result = app.test_cli_runner().invoke(args=["plan-regen", "rq-command"])
    print(result.output)
    assert result.exit_code == 0
    assert "s3cret" not in result.output
    assert "--url 'redis://redis.internal:6380/2?password=***' " in result.output


def test_worker_count_below_one_is_a_usage_error() -> None:
    app = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"})
    result = app.test_cli_runner().invoke(args=["plan-regen", "worker", "--workers", "0"])
    assert result.exit_code == 2
    assert "--workers" in result.output


def test_threads_with_a_worker_class_that_cannot_run_them_is_a_usage_error() -> None:
    app = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"})
    result = app.test_cli_runner().invoke(
        args=["plan-regen", "worker", "--threads", "4", "--worker-class", "rq.SimpleWorker"]
    )
    assert result.exit_code == 2
    assert "--threads needs flask_plan_regen.threaded_worker.ThreadedWorker" in result.output
