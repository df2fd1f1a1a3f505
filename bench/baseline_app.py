"""The hand-rolled baseline: the least a Flask + RQ route has to do for a regeneration.

Parse the JSON body, validate it with marshmallow, read the plan by primary key, enqueue
one job, answer 202. No auth hooks, no regeneration row, no priority: what the package's
route costs on top of this is what the route benchmark measures.
"""

from __future__ import annotations

import os

from flask import Flask, Response, abort, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from marshmallow import ValidationError
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from flask_plan_regen.models import Plan
from flask_plan_regen.schemas import RegenerateRequestSchema

db = SQLAlchemy()


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["SQLALCHEMY_DATABASE_URI"]
    db.init_app(app)
    queue = Queue(
        "bench_baseline",
        connection=Redis.from_url(os.environ["PLAN_REGEN_REDIS_URL"]),
        serializer=JSONSerializer,
    )
    schema = RegenerateRequestSchema()

    @app.post("/api/v1/plans/<plan_id>/regenerate")
    def regenerate(plan_id: str) -> tuple[Response, int]:
        try:
            schema.load(request.get_json() or {})
        except ValidationError as error:
            return jsonify(error=error.messages), 400
        plan = db.session.get(Plan, plan_id)
        if plan is None or plan.owner_id != request.headers.get("X-User-Id"):
            abort(404)
        job = queue.enqueue("bench.jobs.noop", job_timeout=180)
        return jsonify(generationId=job.id, planId=plan.id, status="pending"), 202

    return app
