"""The database being unreachable: which errors mean it, the 503 they answer, one log per outage.

PEP 249's ``OperationalError`` is the driver's "not the programmer's fault"
error: server stopped or restarting, database dropped, connection cut,
too many connections. With ``InterfaceError`` (a connection already closed) and
SQLAlchemy's pool ``TimeoutError`` they answer 503 ``DATABASE_UNAVAILABLE``
with ``Retry-After``, never 500: the request can simply be sent again.

A request storm during an outage must not write one traceback per request:
:class:`OutageLog` logs the first failure (with its traceback) and, once a
statement runs again, one line saying how long it lasted and how many
requests it refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from .errors import ApiError

logger = logging.getLogger("flask_plan_regen.database")

UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    PoolTimeoutError,
)
"""Errors that say the database cannot be used right now, not that a statement is wrong."""

RETRY_AFTER_SECONDS = 5


def database_unavailable() -> ApiError:
    return ApiError(
        503,
        "DATABASE_UNAVAILABLE",
        "The database is unavailable; nothing was changed. Try again shortly.",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


class OutageLog:
    """Logs a database outage once, when it starts, and once when it ends (per process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None
        self._refused = 0

    def failed(self, error: BaseException, engines: Iterable[Engine]) -> None:
        """A request could not use ``engines``: log it if it starts an outage.

        The outage ends with the first statement that runs on one of them again.
        """
        with self._lock:
            starts = self._since is None
            if starts:
                self._since = time.monotonic()
            self._refused += 1
        if starts:
            for engine in engines:
                if not event.contains(engine, "after_cursor_execute", self._statement_ran):
                    event.listen(engine, "after_cursor_execute", self._statement_ran)
            logger.error(
                "database unavailable; answering 503 DATABASE_UNAVAILABLE until it is back "
                "(logged once per outage)",
                exc_info=error,
            )

    def recovered(self) -> None:
        """A statement ran: end the outage, if there is one."""
        if self._since is None:  # the common case: no lock taken
            return
        with self._lock:
            if self._since is None:
                return
            lasted, refused = time.monotonic() - self._since, self._refused
            self._since, self._refused = None, 0
        logger.warning(
            "database available again after %.1f s; %d requests were answered 503",
            lasted,
            refused,
        )

    def _statement_ran(self, *args: object) -> None:
        self.recovered()


def prepare_no_statements(engines: Iterable[Engine]) -> None:
    """Make every new psycopg 3 connection of ``engines`` prepare no statements.

    PgBouncer in transaction mode hands each transaction to any server
    connection: a statement psycopg prepared on one is missing on the next
    (``InvalidSqlStatementName``) or already there (``DuplicatePreparedStatement``).
    ``prepare_threshold = None`` is psycopg's switch for that; other drivers are
    left as they are.
    """
    for engine in engines:
        if not event.contains(engine, "connect", _prepare_nothing):
            event.listen(engine, "connect", _prepare_nothing)


def _prepare_nothing(dbapi_connection: object, connection_record: object) -> None:
    if hasattr(dbapi_connection, "prepare_threshold"):
        dbapi_connection.prepare_threshold = None
