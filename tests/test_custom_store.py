"""A host app that keeps plans in its own tables plugs in a store and a plan loader."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis
from conftest import ALICE, run_jobs
from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import JSON, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_plan_regen import (
    GeneratedModule,
    PlanInput,
    PlanRegen,
    PlanStore,
    Regeneration,
    metadata,
    regen_bp,
)


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
# The extension object of the course app, for tests that register hooks after init_app.
regen = PlanRegen()


class Course(db.Model):  # type: ignore[name-defined,misc]
    """The host's own plan table: input fields plus the content as one JSON column."""

    id: Mapped[str] = mapped_column(String(20), primary_key=True)
    student: Mapped[str] = mapped_column(String(50))
    subject: Mapped[str] = mapped_column(String(200))
    outline: Mapped[list[Any]] = mapped_column(JSON, default=list)


class CourseStore:
    """PlanStore over the host's Course table."""

    def load_plan(self, plan_id: str) -> PlanInput | None:
        course = db.session.get(Course, plan_id)
        if course is None:
            return None
        return PlanInput(id=course.id, owner_id=course.student, topic=course.subject)

    def create_plan(self, owner_id: str, plan: dict[str, Any]) -> str:
        course = Course(id=f"c{db.session.query(Course).count() + 1}", student=owner_id,
                        subject=plan["topic"])  # fmt: skip
        db.session.add(course)
        db.session.flush()
        return course.id

    def replace_content(self, plan_id: str, modules: Sequence[GeneratedModule]) -> None:
        course = db.session.get(Course, plan_id)
        assert course is not None
        course.outline = [{"module": m.title, "tasks": [t.title for t in m.tasks]} for m in modules]

    def plan_document(self, plan_id: str) -> dict[str, Any] | None:
        course = db.session.get(Course, plan_id)
        if course is None:
            return None
        return {"id": course.id, "subject": course.subject, "outline": course.outline}


@pytest.fixture
def course_app(sqlite_uri: str, redis_url: str, redis_conn: redis.Redis) -> Iterator[Flask]:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=sqlite_uri, PLAN_REGEN_REDIS_URL=redis_url)
    db.init_app(app)
    regen.init_app(app, db=db, store=CourseStore())

    @regen.auth_handler
    def user() -> str | None:
        return request.headers.get("X-User-Id")

    app.register_blueprint(regen_bp, url_prefix="/courses-api")
    with app.app_context():
        db.create_all()
        metadata.create_all(db.engine)
        db.session.add(Course(id="c1", student="alice", subject="Baroque music"))
        db.session.commit()
    yield app
    with app.app_context():
        db.engine.dispose()


def test_the_store_interface_is_satisfied() -> None:
    assert isinstance(CourseStore(), PlanStore)


def test_a_custom_store_is_regenerated_through_the_same_pipeline(course_app: Flask) -> None:
    client = course_app.test_client()
    response = client.post(
        "/courses-api/plans/c1/regenerate",
        data=json.dumps({"overrides": {"skillLevel": "advanced"}}),
        headers=ALICE,
        content_type="application/json",
    )
    assert response.status_code == 202, response.json
    assert response.headers["Location"].startswith("/courses-api/plans/c1/regenerations/")
    assert (
        client.post(
            "/courses-api/plans/c1/regenerate", json={}, headers={"X-User-Id": "bob"}
        ).status_code
        == 404
    )
    run_jobs(course_app)
    document = client.get("/courses-api/plans/c1", headers=ALICE).json
    assert document["subject"] == "Baroque music"
    assert 3 <= len(document["outline"]) <= 5
    assert all("Baroque music" in module["module"] for module in document["outline"])
    with course_app.app_context():
        row = db.session.get(Regeneration, response.json["generationId"])
        assert row is not None
        assert row.status == "succeeded"
    # Unknown URLs under the custom prefix answer JSON too.
    assert client.get("/courses-api/nothing").json["code"] == "NOT_FOUND"


def test_a_plan_loader_hook_overrides_the_stores_lookup(course_app: Flask) -> None:
    @regen.plan_loader
    def nobody_owns_anything(plan_id: str) -> PlanInput | None:
        return None

    try:
        response = course_app.test_client().post(
            "/courses-api/plans/c1/regenerate", json={}, headers=ALICE
        )
    finally:
        regen.plan_loader(None)  # type: ignore[arg-type]
    assert response.status_code == 404
