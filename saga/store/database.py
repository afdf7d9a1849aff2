"""Run a unit of work in one short transaction, retrying it whole on conflicts.

A *unit of work* is an async function of a connection. :meth:`Database.run` gives it a
SQLAlchemy :class:`AsyncConnection` (convenient: Core constructs, named parameters);
:meth:`Database.run_driver` gives it a :class:`~saga.store.driver.DriverConnection` on the
asyncpg connection (fast: about twice the commits per second on this project's hardware).
Either way the runner opens a transaction at the requested isolation level (sent with
``BEGIN``, no extra round trip), optionally tightens the statement timeout with
``SET LOCAL``, runs the unit and commits.

On a serialization failure (40001) or deadlock (40P01) PostgreSQL has rolled the
transaction back, so the runner waits per the :class:`~saga.retry.RetryPolicy`
(exponential backoff with jitter) and runs the *whole* unit again; past the last attempt
it raises :class:`~saga.errors.RetriesExhausted`. The unit must therefore do no I/O
outside the database that cannot be repeated. A lost connection is not re-run here: if it
broke during COMMIT nobody knows whether the unit took effect, and only the caller knows
whether its unit is safe to repeat. A connection that could not be had at all (a full
pool, or a server that refused or did not answer in time) is waited out the same way as a
conflict, since the unit had not begun.

A unit that takes longer than DATABASE_SLOW_UNIT_THRESHOLD in all (the wait for a
connection and every retry included) is logged as ``slow_unit`` and counted in
``saga_db_slow_units_total``; the pool's connections and the units waiting for one are
exported when scraped (:data:`saga.metrics.POOLS`).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar, cast

import asyncpg
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import QueuePool

from saga import metrics
from saga.clock import SYSTEM_CLOCK, Clock
from saga.definition import IsolationLevel
from saga.errors import (
    ConnectFailed,
    DatabaseError,
    DatabaseUnavailable,
    PoolExhausted,
    RetriesExhausted,
    TransactionConflict,
    UsageError,
)
from saga.retry import RetryPolicy
from saga.settings import Settings
from saga.store.driver import DriverConnection, set_local_timeout
from saga.store.engine import QueryRecorder, create_engine
from saga.store.errors import database_errors, is_conflict, opening_errors
from saga.store.shared_transactions import SharedTransactions

T = TypeVar("T")
UnitOfWork = Callable[[AsyncConnection], Awaitable[T]]
DriverUnitOfWork = Callable[[DriverConnection], Awaitable[T]]

log = structlog.get_logger("saga.store")


@dataclass
class RetryStats:
    """Retries counted per unit name and per SQLSTATE, for alerting on hot spots."""

    by_unit: Counter[str] = field(default_factory=Counter)
    by_sqlstate: Counter[str] = field(default_factory=Counter)
    exhausted: Counter[str] = field(default_factory=Counter)
    # Units that found the pool full and waited for another try (not in ``total``).
    pool_exhausted: Counter[str] = field(default_factory=Counter)
    # Units whose connection could not be opened and that tried again (not in ``total``).
    connect_failed: Counter[str] = field(default_factory=Counter)

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
    """An engine plus the transaction runners and the counters they keep."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        recorder: QueryRecorder,
        retry: RetryPolicy | None = None,
        slow_unit_ms: float = 500.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.engine = engine
        # The time deadlines on this database are written and judged by (saga.clock).
        self.clock = clock
        self.retry = retry or RetryPolicy()
        self.retries = RetryStats()
        # The same recorder the engine's query events report to.
        self.queries = recorder
        self.slow_unit_ms = slow_unit_ms
        # Units between asking the pool for a connection and getting one.
        self.waiting = 0
        self._shared: dict[IsolationLevel, SharedTransactions] = {}
        metrics.POOLS.track(self)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        url: str | None = None,
        application_name: str = "austa-saga",
        clock: Clock = SYSTEM_CLOCK,
        server_settings: Mapping[str, str] | None = None,
    ) -> Database:
        recorder = QueryRecorder.from_settings(settings)
        engine = create_engine(
            settings,
            url=url,
            application_name=application_name,
            recorder=recorder,
            server_settings=server_settings,
        )
        return cls(
            engine,
            recorder=recorder,
            retry=retry_policy_from(settings),
            slow_unit_ms=settings.database_slow_unit_threshold,
            clock=clock,
        )

    async def dispose(self) -> None:
        metrics.POOLS.forget(self)
        await self.engine.dispose()

    def pool_status(self) -> metrics.PoolStatus | None:
        """The pool's connections as they are now (read when /metrics is scraped)."""
        pool = self.engine.pool
        if not isinstance(pool, QueuePool):
            return None
        return metrics.PoolStatus(
            in_use=max(pool.checkedout(), 0),
            idle=pool.checkedin(),
            waiting=self.waiting,
            size=pool.size() + max(pool._max_overflow, 0),
        )

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection, counting this unit among the waiters until it has one."""
        self.waiting += 1
        async with AsyncExitStack() as stack:
            try:
                with opening_errors():
                    conn = await stack.enter_async_context(self.engine.connect())
            finally:
                self.waiting -= 1
            yield conn

    async def run(
        self,
        unit: UnitOfWork[T],
        *,
        isolation: IsolationLevel = IsolationLevel.READ_COMMITTED,
        statement_timeout_ms: int | None = None,
        retry: RetryPolicy | None = None,
        name: str | None = None,
    ) -> T:
        """Run ``unit`` on a SQLAlchemy connection in one transaction, retrying conflicts."""

        async def once() -> T:
            async with self._connection() as conn:
                conn = await conn.execution_options(
                    isolation_level=isolation.value.replace(" ", "_")
                )
                async with conn.begin():
                    if statement_timeout_ms is not None:
                        await conn.execute(text(set_local_timeout(statement_timeout_ms)))
                    return await unit(conn)

        return await self._with_retries(once, retry or self.retry, name or _name_of(unit))

    async def run_driver(
        self,
        unit: DriverUnitOfWork[T],
        *,
        isolation: IsolationLevel = IsolationLevel.READ_COMMITTED,
        statement_timeout_ms: int | None = None,
        retry: RetryPolicy | None = None,
        name: str | None = None,
        transaction: bool = True,
        tally: Counter[str] | None = None,
    ) -> T:
        """Run ``unit`` on the asyncpg connection in one transaction, retrying conflicts.

        ``transaction=False`` runs each statement of the unit as its own implicit
        transaction (no ``BEGIN``/``COMMIT`` round trips): for units of one statement,
        which PostgreSQL makes atomic by itself, such as a data-modifying CTE.
        ``tally`` counts this call's retries by SQLSTATE.
        """
        if not transaction and (
            isolation is not IsolationLevel.READ_COMMITTED or statement_timeout_ms is not None
        ):
            raise UsageError(
                "run_driver: isolation and statement_timeout_ms need transaction=True "
                f"(got isolation={isolation.name}, statement_timeout_ms={statement_timeout_ms})"
            )

        async def once() -> T:
            return await self.attempt_driver(
                unit,
                isolation=isolation,
                statement_timeout_ms=statement_timeout_ms,
                transaction=transaction,
            )

        return await self._with_retries(
            once, retry or self.retry, name or _name_of(unit), tally=tally
        )

    async def run_shared(
        self,
        unit: DriverUnitOfWork[T],
        *,
        isolation: IsolationLevel = IsolationLevel.READ_COMMITTED,
        statement_timeout_ms: int | None = None,
        retry: RetryPolicy | None = None,
        name: str | None = None,
        tally: Counter[str] | None = None,
    ) -> T:
        """Like :meth:`run_driver`, but the unit may share one transaction and one commit
        with the units other callers submit meanwhile at the same isolation level, each in
        a savepoint of its own (:class:`~saga.store.shared_transactions.SharedTransactions`).

        A unit that raises has its savepoint rolled back, so nothing of it stays, and the
        others commit; what it raised reaches only its caller. A unit that would wait for
        a lock over ``LOCK_WAIT_MS`` leaves the group and runs alone. A commit lost to a
        conflict or a broken connection fails every unit, each retried like any; one
        refused for one unit's sake is redone unit by unit. The unit sees the writes of
        the units before it in the transaction, as it would had they committed first.

        Serializable units share too, until a conflict: one unit's serialization failure
        dooms the whole transaction, so every unit in it fails with the conflict, and
        each tries again in a transaction of its own, where a conflict costs only its
        own work.
        """
        shared = self._shared.get(isolation)
        if shared is None:
            shared = self._shared[isolation] = SharedTransactions(self, isolation)
        conflicted = False

        async def once() -> T:
            nonlocal conflicted
            if conflicted:
                shared.ran_alone_after_conflict += 1
                return await self.attempt_driver(
                    unit,
                    isolation=isolation,
                    statement_timeout_ms=statement_timeout_ms,
                    transaction=True,
                )
            try:
                return await shared.run(unit, statement_timeout_ms)
            except Exception as exc:
                if isolation is IsolationLevel.SERIALIZABLE and is_conflict(exc):
                    conflicted = True
                raise

        return await self._with_retries(
            once, retry or self.retry, name or _name_of(unit), tally=tally
        )

    async def attempt_driver(
        self,
        unit: DriverUnitOfWork[T],
        *,
        isolation: IsolationLevel,
        statement_timeout_ms: int | None,
        transaction: bool,
    ) -> T:
        """Run ``unit`` once on a pooled asyncpg connection, in a transaction or not."""
        async with self._connection() as conn:
            raw = cast(asyncpg.Connection, (await conn.get_raw_connection()).driver_connection)
            try:
                if not transaction:
                    return await unit(DriverConnection(raw, self.queries))
                async with _driver_transaction(raw, isolation, statement_timeout_ms):
                    return await unit(DriverConnection(raw, self.queries))
            except Exception as exc:
                if not raw.is_closed():
                    raise
                # SQLAlchemy saw none of this connection's statements, so it cannot
                # know it died: take it out of the pool before it is handed out again.
                await conn.invalidate()
                if isinstance(exc, DatabaseError | asyncpg.PostgresError) and exc.sqlstate:
                    raise  # the server said why (e.g. 57P01): translated as such
                # Otherwise the driver reports the loss as a misuse or protocol error
                # that hides it; the connection's state tells what happened.
                raise DatabaseUnavailable(f"connection lost: {exc}") from exc

    async def _with_retries(
        self,
        once: Callable[[], Awaitable[T]],
        policy: RetryPolicy,
        unit_name: str,
        *,
        tally: Counter[str] | None = None,
    ) -> T:
        started = time.perf_counter()
        try:
            return await self._attempts(once, policy, unit_name, tally)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            if elapsed_ms > self.slow_unit_ms:
                metrics.DB_SLOW_UNITS.labels(unit_name).inc()
                log.warning(
                    "slow_unit",
                    unit=unit_name,
                    duration_ms=round(elapsed_ms, 2),
                    threshold_ms=self.slow_unit_ms,
                )

    async def _attempts(
        self,
        once: Callable[[], Awaitable[T]],
        policy: RetryPolicy,
        unit_name: str,
        tally: Counter[str] | None,
    ) -> T:
        attempt = 1
        while True:
            try:
                with database_errors():
                    return await once()
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
                sqlstate = exc.sqlstate or "unknown"
                self.retries.by_unit[unit_name] += 1
                self.retries.by_sqlstate[sqlstate] += 1
                metrics.DB_RETRIES.labels(unit_name, sqlstate).inc()
                if tally is not None:
                    tally[sqlstate] += 1
                attempt += 1
                delay = policy.delay_before(attempt)
                log.info(
                    "transaction_retry",
                    unit=unit_name,
                    transaction_attempt=attempt,
                    sqlstate=exc.sqlstate,
                    delay_ms=round(delay * 1000, 2),
                )
                await asyncio.sleep(delay)
            except (PoolExhausted, ConnectFailed) as exc:
                # The unit had not begun, so any unit may simply be tried again.
                if attempt >= policy.max_attempts:
                    raise
                attempt += 1
                if isinstance(exc, PoolExhausted):
                    self.retries.pool_exhausted[unit_name] += 1
                    log.warning(
                        "database_pool_exhausted", unit=unit_name, transaction_attempt=attempt
                    )
                else:
                    # Info, not warning: if every attempt fails, the caller hears it once.
                    self.retries.connect_failed[unit_name] += 1
                    log.info(
                        "database_connect_failed",
                        unit=unit_name,
                        transaction_attempt=attempt,
                        error=str(exc),
                    )
                await asyncio.sleep(policy.delay_before(attempt))


@asynccontextmanager
async def _driver_transaction(
    raw: asyncpg.Connection, isolation: IsolationLevel, statement_timeout_ms: int | None
) -> AsyncIterator[None]:
    """``BEGIN`` and the local settings in one round trip (a simple-protocol query may
    hold several statements), ``COMMIT`` or ``ROLLBACK`` at the end."""
    opening = f"BEGIN ISOLATION LEVEL {isolation.value}"
    if statement_timeout_ms is not None:
        opening += f"; {set_local_timeout(statement_timeout_ms)}"
    if isolation is IsolationLevel.SERIALIZABLE:
        # A sequential scan takes a predicate lock on the whole relation, so every other
        # Serializable transaction touching the table conflicts with it; small or fresh
        # tables (an inbox, a claims table) are planned that way. Index scans lock only
        # the pages they read (PostgreSQL's manual, "Serializable Isolation Level").
        opening += "; SET LOCAL enable_seqscan = off"
    await raw.execute(opening)
    try:
        yield
    except BaseException:
        if not raw.is_closed():
            try:
                await raw.execute("ROLLBACK")
            except Exception:
                # The connection broke under us: close it so that the caller sees a lost
                # connection and the pool never hands out one stuck in a transaction.
                raw.terminate()
        raise
    await raw.execute("COMMIT")


def _name_of(unit: object) -> str:
    return str(getattr(unit, "__qualname__", "unit"))
