"""The hand-written equivalent: the route and the job a competent developer would write.

The route does the same work as the package's: the same marshmallow schema, the plan read
and owner check, a per-user moving-window rate limit in Redis with ``limits``, the
regeneration row and the monthly quota upsert in one transaction (409 on a busy plan, 429
on a used-up quota, both rolled back), commit, then a plain RQ enqueue. The job claims the
row, calls the same built-in provider, replaces the plan's content with bulk statements and
records the attempt, in one transaction. Same tables as the package (its ``metadata``).

What it leaves out is what the package adds on top: hooks, idempotency keys, priorities,
headers, signals, leases, retries, output rules and pacing.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from limits import parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from marshmallow import ValidationError
from redis import Redis, RedisError
from rq import Queue
from sqlalchemy import delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from flask_plan_regen.models import GenerationAttempt, Module, Plan, Regeneration, Task, Usage
from flask_plan_regen.providers import BuiltinProvider, GenerationRequest
from flask_plan_regen.schemas import overrides_schema, regenerate_request_schema
from flask_plan_regen.types import PlanInput

QUEUE = "bench_handwritten"
JOB = "bench.handwritten.run_regeneration"
RATE_LIMIT = parse("10/hour")
MONTHLY_QUOTA = 5
TIER = "free"

db = SQLAlchemy()


def create_app(database_uri: str | None = None, redis_url: str | None = None) -> Flask:
    """The app on ``database_uri`` and ``redis_url`` (default: the environment's, as the
    package's example app reads them)."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_uri or os.environ["SQLALCHEMY_DATABASE_URI"]
    # What the built-in provider reads.
    app.config["PLAN_REGEN_BUILTIN_DELAY"] = 0.0
    app.config["PLAN_REGEN_BUILTIN_FAILURE"] = None
    db.init_app(app)
    redis_url = redis_url or os.environ["PLAN_REGEN_REDIS_URL"]
    limiter = MovingWindowRateLimiter(RedisStorage(redis_url))
    queue = Queue(QUEUE, connection=Redis.from_url(redis_url))

    @app.post("/api/v1/plans/<plan_id>/regenerate")
    def regenerate(plan_id: str) -> tuple[Response, int]:
        user_id = request.headers.get("X-User-Id")
        if not user_id:
            return jsonify(error="authentication required"), 401
        if not limiter.hit(RATE_LIMIT, "regenerate", user_id):
            return jsonify(error="too many requests"), 429
        try:
            body = regenerate_request_schema.load(request.get_json(silent=True) or {})
        except ValidationError as error:
            return jsonify(error=error.messages), 400
        plan = db.session.get(Plan, plan_id)
        if plan is None or plan.owner_id != user_id:
            return jsonify(error="plan not found"), 404
        generation_id = str(uuid.uuid4())
        period = datetime.now(UTC).strftime("%Y-%m")
        db.session.add(
            Regeneration(
                id=generation_id,
                plan_id=plan_id,
                user_id=user_id,
                kind="regeneration",
                status="pending",
                overrides=overrides_schema.dump(body["overrides"]),
                tier=TIER,
                priority=1,
                queue=QUEUE,
                attempts=0,
                error_history=[],
                quota_period=period,
            )
        )
        try:
            db.session.flush()
        except IntegrityError:
            db.session.rollback()
            return jsonify(error="a regeneration is already queued"), 409
        if not take_quota(user_id, period):
            db.session.rollback()
            return jsonify(error="monthly quota used up"), 429
        db.session.commit()
        try:
            queue.enqueue(JOB, generation_id, job_id=generation_id, job_timeout=180)
        except RedisError:
            db.session.execute(delete(Regeneration).where(Regeneration.id == generation_id))
            db.session.execute(
                update(Usage)
                .where(Usage.user_id == user_id, Usage.period == period)
                .values(used=Usage.used - 1)
            )
            db.session.commit()
            return jsonify(error="queue unavailable"), 503
        return jsonify(generationId=generation_id, planId=plan_id, status="pending"), 202

    return app


def take_quota(user_id: str, period: str) -> bool:
    """One upsert: used + 1 while under the quota; False when it is used up."""
    dialect = db.session.get_bind().dialect.name
    upsert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        upsert(Usage)
        .values(user_id=user_id, period=period, used=1)
        .on_conflict_do_update(
            index_elements=[Usage.user_id, Usage.period],
            set_={"used": Usage.used + 1},
            where=Usage.used < MONTHLY_QUOTA,
        )
        .returning(Usage.used)
    )
    return db.session.execute(statement).first() is not None


_worker_app: Flask | None = None


def worker_app() -> Flask:
    """The app for jobs; ``bench.handwritten_settings`` creates it before RQ forks."""
    global _worker_app
    if _worker_app is None:
        _worker_app = create_app()
    return _worker_app


provider = BuiltinProvider()


def run_regeneration(generation_id: str) -> dict[str, Any] | None:
    """Claim the row, generate, replace the plan's content and record the attempt."""
    with worker_app().app_context():
        session = db.session
        now = datetime.now(UTC)
        claimed = session.execute(
            update(Regeneration)
            .where(Regeneration.id == generation_id, Regeneration.status == "pending")
            .values(
                status="processing",
                attempts=Regeneration.attempts + 1,
                started_at=now,
                updated_at=now,
            )
            .returning(Regeneration.plan_id, Regeneration.overrides, Regeneration.attempts)
        ).first()
        session.commit()
        if claimed is None:
            return None
        plan = session.get(Plan, claimed.plan_id)
        if plan is None:
            return None
        plan_input = PlanInput(
            id=plan.id,
            owner_id=plan.owner_id,
            topic=plan.topic,
            skill_level=plan.skill_level,
            weekly_hours=plan.weekly_hours,
            learning_style=plan.learning_style,
            start_date=plan.start_date,
            deadline_date=plan.deadline_date,
            notes=plan.notes,
        ).with_overrides(overrides_schema.load(claimed.overrides))
        started = time.monotonic()
        generation = GenerationRequest(plan_input, TIER, generation_id, claimed.attempts)
        try:
            result = provider.generate(generation)
            modules = json.loads(str(result.content))["modules"]
        except Exception as error:
            session.rollback()
            record_failure(generation_id, claimed.attempts, generation, started, error)
            raise
        replace_content(plan.id, modules)
        summary = {
            "modules": len(modules),
            "tasks": sum(len(module["tasks"]) for module in modules),
            "durationMs": int((time.monotonic() - started) * 1000),
        }
        session.execute(
            update(Regeneration)
            .where(Regeneration.id == generation_id)
            .values(
                status="succeeded",
                result=summary,
                finished_at=datetime.now(UTC),
                updated_at=datetime.now(UTC),
            )
        )
        session.execute(
            insert(GenerationAttempt).values(
                regeneration_id=generation_id,
                number=claimed.attempts,
                outcome="succeeded",
                duration_ms=summary["durationMs"],
                modules_count=summary["modules"],
                tasks_count=summary["tasks"],
                provider=result.provider,
                model=result.model,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                prompt_hash=generation.prompt_hash(),
                adjustments={},
                created_at=datetime.now(UTC),
            )
        )
        session.commit()
        return summary


def replace_content(plan_id: str, modules: list[dict[str, Any]]) -> None:
    """Delete the plan's modules and tasks, insert the new ones (bulk), mark it ready."""
    session = db.session
    old_modules = select(Module.id).where(Module.plan_id == plan_id)
    session.execute(delete(Task).where(Task.module_id.in_(old_modules)))
    session.execute(delete(Module).where(Module.plan_id == plan_id))
    module_ids = session.scalars(
        insert(Module).returning(Module.id, sort_by_parameter_order=True),
        [
            {
                "plan_id": plan_id,
                "position": position,
                "title": module["title"],
                "description": module["description"],
                "estimated_minutes": module["estimatedMinutes"],
            }
            for position, module in enumerate(modules)
        ],
    ).all()
    session.execute(
        insert(Task),
        [
            {
                "module_id": module_id,
                "position": position,
                "title": task["title"],
                "description": task["description"],
                "estimated_minutes": task["estimatedMinutes"],
            }
            for module_id, module in zip(module_ids, modules, strict=True)
            for position, task in enumerate(module["tasks"])
        ],
    )
    session.execute(
        update(Plan).where(Plan.id == plan_id).values(status="ready", updated_at=datetime.now(UTC))
    )


def record_failure(
    generation_id: str,
    attempt: int,
    generation: GenerationRequest,
    started: float,
    error: Exception,
) -> None:
    """Mark the regeneration failed and record the failed attempt."""
    session = db.session
    session.execute(
        update(Regeneration)
        .where(Regeneration.id == generation_id)
        .values(
            status="failed",
            failure_class="provider_error",
            error=str(error),
            finished_at=datetime.now(UTC),
            updated_at=datetime.now(UTC),
        )
    )
    session.execute(
        insert(GenerationAttempt).values(
            regeneration_id=generation_id,
            number=attempt,
            outcome="failed",
            failure_class="provider_error",
            error=str(error),
            duration_ms=int((time.monotonic() - started) * 1000),
            provider=provider.name,
            prompt_hash=generation.prompt_hash(),
            adjustments={},
            created_at=datetime.now(UTC),
        )
    )
    session.commit()
