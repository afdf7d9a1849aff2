"""The fast path: a unit of work on the asyncpg connection itself.

SQLAlchemy Core costs Python time on every statement (compilation lookup, execution
context, a greenlet switch); on a 2-core machine shared with PostgreSQL that halves the
transactions a process commits (see ``benchmarks/transactions.py``). Hot paths such as the
coordinator's transitions therefore run on the driver connection, checked out from the
same SQLAlchemy pool, with PostgreSQL's ``$1`` parameters. :class:`DriverConnection`
exposes only what such a unit needs (the public :class:`~saga.store.connection.Connection`
protocol), times every statement for the slow-query log and translates the driver's errors
into :mod:`saga.errors`, so no handler ever catches an ``asyncpg`` exception.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, TypeVar, cast

import asyncpg

from saga.store.connection import Row
from saga.store.engine import QueryRecorder
from saga.store.errors import translate

R = TypeVar("R")

# What a statement on the driver connection may raise: the server's errors (with their
# SQLSTATE), the driver's own (a closed connection, a protocol misuse) and the socket's.
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


class DriverConnection:
    """An asyncpg connection inside a transaction the runner owns: no ``transaction()``,
    no ``close()``; each statement is timed and counted, and its errors are raised as
    :mod:`saga.errors` types chained to the driver's."""

    __slots__ = ("_conn", "_recorder")

    def __init__(self, conn: asyncpg.Connection, recorder: QueryRecorder) -> None:
        self._conn = conn
        self._recorder = recorder

    async def execute(self, query: str, *args: Any) -> str:
        """Run a statement; returns its status tag, e.g. ``UPDATE 1``."""
        return await self._timed(query, self._conn.execute(query, *args))

    async def executemany(self, query: str, args: Iterable[Sequence[Any]]) -> None:
        """Run one statement for each argument tuple, pipelined in one round trip."""
        await self._timed(query, self._conn.executemany(query, args))

    async def fetchmany(self, query: str, args: Iterable[Sequence[Any]]) -> list[Row]:
        """Run one statement for each argument tuple, pipelined in one round trip and one
        implicit transaction; every row they returned, in their order."""
        return cast("list[Row]", await self._timed(query, self._conn.fetchmany(query, args)))

    async def fetch(self, query: str, *args: Any) -> list[Row]:
        # asyncpg's Record is a Row; the cast only tells the type checker so.
        return cast("list[Row]", await self._timed(query, self._conn.fetch(query, *args)))

    async def fetchrow(self, query: str, *args: Any) -> Row | None:
        return await self._timed(query, self._conn.fetchrow(query, *args))

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._timed(query, self._conn.fetchval(query, *args))

    async def _timed(self, query: str, pending: Awaitable[R]) -> R:
        started = time.perf_counter()
        try:
            return await pending
        except _DRIVER_ERRORS as exc:
            raise translate(exc) from exc
        finally:
            self._recorder.record(query, (time.perf_counter() - started) * 1000)


def document(value: Any) -> Any:
    """A ``json``/``jsonb`` column's value as Python data. SQLAlchemy's asyncpg dialect
    installs a decoding codec on every pooled connection; a bare asyncpg connection
    returns text, so both are accepted."""
    return json.loads(value) if isinstance(value, str | bytes) else value


def rows_affected(status: str) -> int:
    """The row count of a command status such as ``DELETE 12`` or ``INSERT 0 3``."""
    return int(status.rsplit(" ", 1)[-1])


def set_local_timeout(milliseconds: int) -> str:
    # SET takes no bind parameters; int() keeps the value a number.
    return f"SET LOCAL statement_timeout = {int(milliseconds)}"
