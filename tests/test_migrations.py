"""The Flask-Migrate recipe of docs/operations.md, followed with the real Flask-Migrate:
``flask db init``, the documented edit of ``migrations/env.py``, ``flask db migrate``,
``flask db upgrade``, and a second ``migrate`` that finds nothing to do."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO_ROOT, code_blocks
from servers import EmbeddedPostgres
from sqlalchemy import create_engine, inspect

OPERATIONS = REPO_ROOT / "docs" / "operations.md"

HOST_APP = '''
import os

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

from flask_plan_regen import PlanRegen

db = SQLAlchemy()


class Note(db.Model):
    """The host's own table, migrated together with the package's."""

    id = db.Column(db.Integer, primary_key=True)
    text = db.Column(db.String(200), nullable=False)


def create_app():
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
    db.init_app(app)
    PlanRegen(app)
{migrate}
    return app
'''


def recipe(containing: str) -> str:
    """The Python block of docs/operations.md that contains ``containing``."""
    (block,) = [code for code in code_blocks(OPERATIONS) if containing in code]
    return block


def write_host_app(directory: Path, migrate: str = "Migrate(app, db)") -> None:
    (directory / "host.py").write_text(HOST_APP.format(migrate=textwrap.indent(migrate, "    ")))


def flask_db(directory: Path, database_url: str, *args: str) -> str:
    """Run ``flask db ...`` on the host app in ``directory``; return its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASK_")}
    env.update(
        FLASK_APP="host:create_app",
        DATABASE_URL=database_url,
        PYTHONPATH=os.pathsep.join([str(directory), str(REPO_ROOT)]),
    )
    flask = Path(sys.executable).parent / "flask"
    result = subprocess.run(
        [str(flask), "db", *args], cwd=directory, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def apply_documented_edit(directory: Path) -> None:
    """Replace ``get_metadata`` in the generated env.py with the documented one."""
    env_py = directory / "migrations" / "env.py"
    generated = env_py.read_text()
    assert "def get_metadata():" in generated, "Flask-Migrate's env.py changed shape"
    function = re.compile(r"^def get_metadata\(\):\n(?:    .*\n|\n)*?(?=\n\ndef )", re.M)
    edited, count = function.subn(recipe("def get_metadata").rstrip("\n") + "\n", generated)
    assert count == 1
    env_py.write_text(edited)


def apply_documented_import(directory: Path) -> None:
    """Add the documented import of the package's column types to script.py.mako."""
    mako = directory / "migrations" / "script.py.mako"
    generated = mako.read_text()
    anchor = "import sqlalchemy as sa\n"
    assert anchor in generated, "Flask-Migrate's script.py.mako changed shape"
    mako.write_text(generated.replace(anchor, anchor + recipe("import flask_plan_regen.models")))


def migration_files(directory: Path) -> list[Path]:
    return sorted((directory / "migrations" / "versions").glob("*.py"))


def migrate_as_documented(directory: Path, database_url: str, message: str) -> Path:
    """The host app, ``flask db init``, the documented edits, ``flask db migrate``."""
    write_host_app(directory)
    flask_db(directory, database_url, "init")
    apply_documented_edit(directory)
    apply_documented_import(directory)
    flask_db(directory, database_url, "migrate", "-m", message)
    (migration,) = migration_files(directory)
    return migration


def follow_the_recipe(directory: Path, database_url: str) -> str:
    """Init, edit, migrate, upgrade, migrate again; return the first migration's text."""
    migration = migrate_as_documented(directory, database_url, "plan regeneration tables")
    flask_db(directory, database_url, "upgrade")
    again = flask_db(directory, database_url, "migrate", "-m", "nothing")
    assert "No changes in schema detected." in again
    assert migration_files(directory) == [migration]  # the second migrate wrote nothing
    return migration.read_text()


def check_the_schema(database_url: str, migration: str) -> None:
    for table in ("note", "plan_regen_plans", "plan_regen_regenerations", "plan_regen_attempts"):
        assert f"op.create_table('{table}'" in migration, table
    assert "uq_plan_regen_active_per_plan" in migration
    assert "status IN ('pending', 'processing')" in migration  # the index is partial
    engine = create_engine(database_url)
    try:
        indexes = {
            index["name"]: index
            for index in inspect(engine).get_indexes("plan_regen_regenerations")
        }
    finally:
        engine.dispose()
    assert indexes["uq_plan_regen_active_per_plan"]["unique"]


@pytest.mark.slow
def test_the_recipe_migrates_the_package_tables_on_sqlite(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'host.sqlite'}"
    check_the_schema(database_url, follow_the_recipe(tmp_path, database_url))


@pytest.mark.slow
@pytest.mark.postgres
def test_the_recipe_migrates_the_package_tables_on_postgres(
    tmp_path: Path, postgres_server: EmbeddedPostgres
) -> None:
    database_url = postgres_server.create_database("migrations_recipe")
    check_the_schema(database_url, follow_the_recipe(tmp_path, database_url))


@pytest.mark.slow
def test_the_custom_store_filter_leaves_the_plan_tables_out(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'host.sqlite'}"
    write_host_app(tmp_path, migrate=recipe("include_object"))
    flask_db(tmp_path, database_url, "init")
    apply_documented_edit(tmp_path)
    apply_documented_import(tmp_path)
    flask_db(tmp_path, database_url, "migrate", "-m", "without the plan tables")
    (migration,) = migration_files(tmp_path)
    text = migration.read_text()
    assert "op.create_table('plan_regen_regenerations'" in text
    for table in ("plan_regen_plans", "plan_regen_modules", "plan_regen_tasks"):
        assert f"'{table}'" not in text, table


# What 0.3 added to a 0.2 database (docs/operations.md, "Upgrading a database...").
SPEND_COLUMNS = {
    "plan_regen_attempts": ("cached_tokens", "cost_usd", "billed", "charged_to"),
    "plan_regen_regenerations": ("quota_units", "charged_to", "reserved_usd"),
}


def make_a_02_database(database_url: str) -> None:
    """The package's tables as 0.2 had them (no spend columns or ledger), with a
    regeneration and its attempt in them, and the host's own table."""
    from sqlalchemy import text

    from flask_plan_regen import metadata

    engine = create_engine(database_url)
    try:
        metadata.create_all(engine)
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE note (id INTEGER NOT NULL PRIMARY KEY, "
                                    "text VARCHAR(200) NOT NULL)"))  # fmt: skip
            connection.execute(text("DROP TABLE plan_regen_spend"))
            for table, columns in SPEND_COLUMNS.items():
                for column in columns:
                    connection.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
            connection.execute(
                text(
                    "INSERT INTO plan_regen_regenerations (id, plan_id, user_id, kind, status, "
                    "overrides, tier, priority, queue, attempts, error_history, quota_period, "
                    "created_at, updated_at) VALUES ('r1', 'p1', 'alice', 'regeneration', "
                    "'succeeded', '{}', 'free', 1, 'plan_regen_low', 1, '[]', '2026-11', "
                    "'2026-11-02 10:00:00', '2026-11-02 10:00:00')"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO plan_regen_attempts (regeneration_id, number, outcome, "
                    "duration_ms, modules_count, tasks_count, provider, prompt_tokens, "
                    "completion_tokens, prompt_hash, adjustments, created_at) VALUES ('r1', 1, "
                    "'succeeded', 900, 3, 9, 'openai', 120, 450, 'h', '{}', "
                    "'2026-11-02 10:00:01')"
                )
            )
    finally:
        engine.dispose()


def upgrade_a_02_database(directory: Path, database_url: str) -> None:
    make_a_02_database(database_url)
    text = migrate_as_documented(directory, database_url, "spend ledger").read_text()
    print(f"\n{text.count('op.add_column')} columns added, ledger created")
    for table, columns in SPEND_COLUMNS.items():
        for column in columns:
            assert f"add_column(sa.Column('{column}'" in text or (
                f"op.add_column('{table}', sa.Column('{column}'" in text
            ), (table, column)
    assert "op.create_table('plan_regen_spend'" in text
    assert "flask_plan_regen.models.Money(" in text  # hence the documented import
    flask_db(directory, database_url, "upgrade")
    again = flask_db(directory, database_url, "migrate", "-m", "nothing")
    assert "No changes in schema detected." in again

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            from sqlalchemy import text as sql

            row = connection.execute(
                sql("SELECT billed, charged_to, cost_usd FROM plan_regen_attempts")
            ).one()
            regeneration = connection.execute(
                sql("SELECT quota_units, charged_to, reserved_usd FROM plan_regen_regenerations")
            ).one()
    finally:
        engine.dispose()
    assert (bool(row.billed), row.charged_to, row.cost_usd) == (False, "user", None)
    assert tuple(regeneration) == (1, "user", None)


@pytest.mark.slow
def test_a_02_database_gains_the_spend_columns_on_sqlite(tmp_path: Path) -> None:
    upgrade_a_02_database(tmp_path, f"sqlite:///{tmp_path / 'host.sqlite'}")


@pytest.mark.slow
@pytest.mark.postgres
def test_a_02_database_gains_the_spend_columns_on_postgres(
    tmp_path: Path, postgres_server: EmbeddedPostgres
) -> None:
    upgrade_a_02_database(tmp_path, postgres_server.create_database("migrations_spend"))
