"""Where plans are read and written: the store interface and the built-in store.

A host app that keeps plans in its own tables implements :class:`PlanStore`
and passes it as ``PlanRegen(store=...)`` or ``PLAN_REGEN_STORE``; regenerations
and attempts stay in this package's tables either way.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any, Protocol, cast, runtime_checkable

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Engine, Table, bindparam, delete, insert, inspect, select, update
from sqlalchemy.orm import selectinload

from .documents import dump, plan_document_schema
from .models import Module, Plan, Task, metadata, utcnow
from .types import GeneratedModule, PlanInput


@runtime_checkable
class PlanStore(Protocol):
    """The interface a plan store implements.

    All methods run inside an app context; ``replace_content`` and
    ``create_plan`` must only add to the current ``db.session`` transaction
    (no commit): the job commits the new content together with the
    regeneration's outcome, so a failure never leaves a plan half-replaced.
    """

    def load_plan(self, plan_id: str) -> PlanInput | None:
        """The plan's input and owner, or ``None`` (also for a malformed id)."""

    def create_plan(self, owner_id: str, plan: dict[str, Any]) -> str:
        """Add a plan with no content yet; return its id."""

    def replace_content(self, plan_id: str, modules: Sequence[GeneratedModule]) -> None:
        """Replace the plan's modules and tasks with ``modules``, in order."""

    def plan_document(self, plan_id: str) -> dict[str, Any] | None:
        """The plan with its modules and tasks, as answered by ``GET /plans/<id>``."""

    # Optional: ``delete_plan(plan_id) -> None`` removes a plan whose first generation
    # could not be queued (POST /plans answering 503), in the current transaction.


class SQLAlchemyPlanStore:
    """The built-in store: plans, modules and tasks in this package's tables."""

    def __init__(self, db: SQLAlchemy) -> None:
        self.db = db

    def _get(self, plan_id: str) -> Plan | None:
        canonical = _canonical_id(plan_id)
        return self.db.session.get(Plan, canonical) if canonical else None

    def load_plan(self, plan_id: str) -> PlanInput | None:
        canonical = _canonical_id(plan_id)
        if canonical is None:
            return None
        row = self.db.session.execute(_SELECT_PLAN_INPUT, {"plan_id": canonical}).first()
        return None if row is None else PlanInput(**row._mapping)

    def create_plan(self, owner_id: str, plan: dict[str, Any]) -> str:
        row = Plan(owner_id=owner_id, **plan)
        self.db.session.add(row)
        self.db.session.flush()
        return row.id

    def delete_plan(self, plan_id: str) -> None:
        """Remove a plan that never got content (its first generation was not queued)."""
        plan = self._get(plan_id)
        if plan is not None:
            self.db.session.delete(plan)

    def replace_content(self, plan_id: str, modules: Sequence[GeneratedModule]) -> None:
        session = self.db.session
        canonical = _canonical_id(plan_id)
        # Marking the plan ready doubles as the existence check: no SELECT needed.
        marked = session.execute(_MARK_READY, {"plan_id": canonical, "now": utcnow()})
        if not getattr(marked, "rowcount", 0):
            raise LookupError(f"plan {plan_id} no longer exists")
        # Bulk deletes rather than ORM cascades: SQLite only honours ON DELETE
        # CASCADE with a pragma the host may not have set.
        session.execute(_DELETE_TASKS, {"plan_id": canonical})
        session.execute(_DELETE_MODULES, {"plan_id": canonical})
        # Bulk inserts (two statements, no ORM objects): the ORM unit of work spent more
        # CPU on a few dozen rows than everything else in the job.
        module_ids = session.execute(
            _INSERT_MODULES,
            [
                {
                    "plan_id": canonical,
                    "position": position,
                    "title": generated.title,
                    "description": generated.description,
                    "estimated_minutes": generated.estimated_minutes,
                }
                for position, generated in enumerate(modules)
            ],
        ).scalars()
        tasks = [
            {
                "module_id": module_id,
                "position": position,
                "title": task.title,
                "description": task.description,
                "estimated_minutes": task.estimated_minutes,
                "week": task.week,
                "due_date": task.due_date,
            }
            for module_id, generated in zip(module_ids, modules, strict=True)
            for position, task in enumerate(generated.tasks)
        ]
        if tasks:
            session.execute(_INSERT_TASKS, tasks)

    def plan_document(self, plan_id: str) -> dict[str, Any] | None:
        canonical = _canonical_id(plan_id)
        if canonical is None:
            return None
        plan = self.db.session.scalar(
            select(Plan)
            .where(Plan.id == canonical)
            .options(selectinload(Plan.modules).selectinload(Module.tasks))
        )
        return None if plan is None else dump(plan_document_schema, plan)


def tables_for(store: PlanStore) -> list[Table]:
    """The package's tables that ``store`` needs: a custom store keeps plans elsewhere."""
    if isinstance(store, SQLAlchemyPlanStore):
        return list(metadata.sorted_tables)
    plan_tables = {Plan.__table__, Module.__table__, Task.__table__}
    return [table for table in metadata.sorted_tables if table not in plan_tables]


def create_tables(engine: Engine, store: PlanStore) -> list[str]:
    """Create the tables ``store`` needs that are missing; return the names of all it needs."""
    tables = tables_for(store)
    metadata.create_all(engine, tables=tables)
    _create_missing_indexes(engine, tables)
    return sorted(table.name for table in tables)


def _create_missing_indexes(engine: Engine, tables: list[Table]) -> None:
    """Add the indexes a release added to tables that already existed (``create_all``
    only creates whole tables)."""
    inspector = inspect(engine)
    for table in tables:
        present = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in present:
                index.create(engine)


# Core statements on the tables, built once: the ORM's bulk paths and building a statement
# per call cost more CPU than the job's own work (docs/performance.md).
_PLANS = cast(Table, Plan.__table__)
_MODULES = cast(Table, Module.__table__)
_TASKS = cast(Table, Task.__table__)
_SELECT_PLAN_INPUT = select(
    *(_PLANS.c[field.name] for field in dataclasses.fields(PlanInput))
).where(_PLANS.c.id == bindparam("plan_id"))
_MARK_READY = (
    update(_PLANS)
    .where(_PLANS.c.id == bindparam("plan_id"))
    .values(status="ready", updated_at=bindparam("now"))
)
_DELETE_TASKS = delete(_TASKS).where(
    _TASKS.c.module_id.in_(select(_MODULES.c.id).where(_MODULES.c.plan_id == bindparam("plan_id")))
)
_DELETE_MODULES = delete(_MODULES).where(_MODULES.c.plan_id == bindparam("plan_id"))
_INSERT_MODULES = insert(_MODULES).returning(_MODULES.c.id, sort_by_parameter_order=True)
_INSERT_TASKS = insert(_TASKS)


def _canonical_id(plan_id: str) -> str | None:
    """Built-in plan ids are UUIDs; anything else names no plan."""
    try:
        return str(uuid.UUID(plan_id))
    except ValueError:
        return None
