"""Run a unit of work in one short transaction, retrying it whole on conflicts.

A *unit of work* is an async function of an :class:`AsyncConnection`. :meth:`Database.run`
opens a transaction at the requested isolation level (sent with ``BEGIN``, no extra round
trip), optionally tightens the statement timeout with ``SET LOCAL``, runs the unit and
commits. On a serialization failure (40001) or deadlock (40P01) PostgreSQL has rolled the
transaction back, so the runner waits per the :class:`~saga.retry.RetryPolicy`
(exponential backoff with jitter) and runs the *whole* unit again; past the last attempt
it raises :class:`~saga.errors.RetriesExhausted`. The unit must therefore do no I/O
outside the database that cannot be repeated. A lost connection is not re-run here: if it
broke during COMMIT nobody knows whether the unit took effect, and only the caller knows
whether its unit is safe to repeat.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from saga.errors import RetriesExhausted, TransactionConflict
from saga.retry import RetryPolicy
from saga.settings import Settings
from saga.store.engine import QueryStats, create_engine
from saga.store.errors import database_errors

T = TypeVar("T")
UnitOfWork = Callable[[AsyncConnection], Awaitable[T]]

log = structlog.get_logger("saga.store")


class IsolationLevel(StrEnum):
    """The isolation levels a step may ask for (the guide's three)."""

    READ_COMMITTED = "READ COMMITTED"
    REPEATABLE_READ = "REPEATABLE READ"
    SERIALIZABLE = "SERIALIZABLE"


@dataclass
class RetryStats:
    """Retries counted per unit name and per SQLSTATE, for alerting on hot spots."""

    by_unit: Counter[str] = field(default_factory=Counter)
    by_sqlstate: Counter[str] = field(default_factory=Counter)
    exhausted: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.by_unit.values())


def retry_policy_from(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.database_retry_attempts,
        initial_delay=settings.database_retry_base_delay / 1000,
        max_delay=max(settings.database_retry_max_delay, settings.database_retry_base_delay) / 1000,
    )


class Database:
    """An engine plus the transaction runner and the counters both keep."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        retry: RetryPolicy | None = None,
        query_stats: QueryStats | None = None,
    ) -> None:
        self.engine = engine
        self.retry = retry or RetryPolicy()
        self.retries = RetryStats()
        self.queries = query_stats or QueryStats()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, url: str | None = None, application_name: str = "austa-saga"
    ) -> Database:
        stats = QueryStats()
        engine = create_engine(settings, url=url, application_name=application_name, stats=stats)
        return cls(engine, retry=retry_policy_from(settings), query_stats=stats)

    async def dispose(self) -> None:
        await self.engine.dispose()

    async def run(
        self,
        unit: UnitOfWork[T],
        *,
        isolation: IsolationLevel = IsolationLevel.READ_COMMITTED,
        statement_timeout_ms: int | None = None,
        retry: RetryPolicy | None = None,
        name: str | None = None,
    ) -> T:
        """Run ``unit`` in one transaction and return its result, retrying on conflicts."""
        policy = retry or self.retry
        unit_name: str = name or str(getattr(unit, "__qualname__", "unit"))
        attempt = 1
        while True:
            try:
                return await self._run_once(unit, isolation, statement_timeout_ms)
            except TransactionConflict as exc:
                if attempt >= policy.max_attempts:
                    self.retries.exhausted[unit_name] += 1
                    log.error(
                        "transaction_retries_exhausted",
                        unit=unit_name,
                        attempts=attempt,
                        sqlstate=exc.sqlstate,
                        error=str(exc),
                    )
                    raise RetriesExhausted(unit_name, attempt, exc) from exc
                self.retries.by_unit[unit_name] += 1
                self.retries.by_sqlstate[exc.sqlstate or "unknown"] += 1
                attempt += 1
                delay = policy.delay_before(attempt)
                log.info(
                    "transaction_retry",
                    unit=unit_name,
                    attempt=attempt,
                    sqlstate=exc.sqlstate,
                    delay_ms=round(delay * 1000, 2),
                )
                await asyncio.sleep(delay)

    async def _run_once(
        self,
        unit: UnitOfWork[T],
        isolation: IsolationLevel,
        statement_timeout_ms: int | None,
    ) -> T:
        with database_errors():
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(
                    isolation_level=isolation.value.replace(" ", "_")
                )
                async with conn.begin():
                    if statement_timeout_ms is not None:
                        # SET cannot take a bind parameter; the value is a validated int.
                        await conn.execute(
                            text(f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}")
                        )
                    return await unit(conn)
