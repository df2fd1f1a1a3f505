"""Structured logs: the generation id (and plan, user, queue) on every line about it.

The ids travel in a context variable: :func:`log_context` binds them around a
job, and log calls may also pass them in ``extra``. :class:`ContextFilter` copies
them onto each record so a plain format can show ``%(generation_id)s``, and
:class:`JsonFormatter` writes one JSON object a line::

    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)

``flask plan-regen worker --log-format json`` does this for workers.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

CONTEXT_FIELDS = ("generation_id", "plan_id", "user_id", "queue")

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "plan_regen_log_context", default=MappingProxyType({})
)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every record logged inside the block (in this thread or task)."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def context_of(regeneration: Any) -> dict[str, Any]:
    """The log fields of a regeneration row, for ``extra=``."""
    return {
        "generation_id": regeneration.id,
        "plan_id": regeneration.plan_id,
        "user_id": regeneration.user_id,
        "queue": regeneration.queue,
    }


class ContextFilter(logging.Filter):
    """Set every context field on the record (``None`` when unknown); never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _context.get()
        for field in CONTEXT_FIELDS:
            if getattr(record, field, None) is None:
                setattr(record, field, bound.get(field))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the context fields."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        bound = _context.get()
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None) or bound.get(field)
            if value is not None:
                document[field] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def install_json_logging(level: str) -> None:
    """Log JSON lines to stderr from every logger (used by the worker command)."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
