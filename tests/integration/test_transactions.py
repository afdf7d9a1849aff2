"""The transaction runner against real PostgreSQL conflicts (no simulated errors)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from saga.errors import (
    DatabaseUnavailable,
    DeadlockDetected,
    RetriesExhausted,
    SerializationConflict,
    StatementTimeout,
    UniqueViolation,
)
from saga.retry import RetryPolicy
from saga.settings import Settings, to_plain_url
from saga.store import Database, IsolationLevel
from saga.store.database import UnitOfWork

pytestmark = pytest.mark.integration

FAST_RETRY = RetryPolicy(max_attempts=5, initial_delay=0.001, max_delay=0.01)


async def test_unit_runs_at_the_requested_isolation_level(scratch: Database) -> None:
    async def level(conn: AsyncConnection) -> str:
        return str(await conn.scalar(text("SHOW transaction_isolation")))

    assert await scratch.run(level) == "read committed"
    assert await scratch.run(level, isolation=IsolationLevel.REPEATABLE_READ) == "repeatable read"
    assert await scratch.run(level, isolation=IsolationLevel.SERIALIZABLE) == "serializable"


async def test_write_skew_between_two_serializable_units_is_retried(scratch: Database) -> None:
    """Both read the total, then each withdraws from a different account: the classic
    write skew. PostgreSQL aborts one with 40001; the runner re-runs it, and the re-run
    sees the other's withdrawal and declines, keeping the total above zero."""
    both_read = asyncio.Barrier(2)
    attempts = {1: 0, 2: 0}

    def withdraw(account: int) -> UnitOfWork[bool]:
        async def unit(conn: AsyncConnection) -> bool:
            attempts[account] += 1
            total = await conn.scalar(text("SELECT sum(balance) FROM account"))
            if attempts[account] == 1:
                await both_read.wait()
            if total is None or total - 150 < 0:
                return False
            await conn.execute(
                text("UPDATE account SET balance = balance - 150 WHERE id = :id"), {"id": account}
            )
            return True

        return unit

    results = await asyncio.gather(
        scratch.run(
            withdraw(1), isolation=IsolationLevel.SERIALIZABLE, retry=FAST_RETRY, name="withdraw"
        ),
        scratch.run(
            withdraw(2), isolation=IsolationLevel.SERIALIZABLE, retry=FAST_RETRY, name="withdraw"
        ),
    )
    assert sorted(results) == [False, True]
    assert scratch.retries.by_unit["withdraw"] >= 1
    assert scratch.retries.by_sqlstate["40001"] >= 1
    total = await scratch.run(lambda c: c.scalar(text("SELECT sum(balance) FROM account")))
    assert total == 50


async def test_gives_up_after_the_limit_with_a_clear_error(
    scratch: Database, fresh_database_url: str
) -> None:
    """Every attempt loses the same race: another session updates the row after this
    unit's snapshot was taken, so the unit's own update fails with 40001."""
    other = await asyncpg.connect(to_plain_url(fresh_database_url))
    calls = 0

    async def always_loses(conn: AsyncConnection) -> None:
        nonlocal calls
        calls += 1
        await conn.scalar(text("SELECT balance FROM account WHERE id = 1"))
        await other.execute("UPDATE account SET balance = balance + 1 WHERE id = 1")
        await conn.execute(text("UPDATE account SET balance = balance - 1 WHERE id = 1"))

    policy = RetryPolicy(max_attempts=3, initial_delay=0.001, max_delay=0.002)
    try:
        with pytest.raises(RetriesExhausted) as caught:
            await scratch.run(
                always_loses,
                isolation=IsolationLevel.REPEATABLE_READ,
                retry=policy,
                name="always_loses",
            )
    finally:
        await other.close()
    assert calls == 3
    assert caught.value.attempts == 3
    assert isinstance(caught.value.last, SerializationConflict)
    assert isinstance(caught.value.__cause__, SerializationConflict)
    assert "gave up after 3 attempts" in str(caught.value)
    assert scratch.retries.by_unit["always_loses"] == 2
    assert scratch.retries.exhausted["always_loses"] == 1


async def test_deadlock_is_translated_and_retried(scratch: Database) -> None:
    """Two units lock the two rows in opposite order; PostgreSQL kills one (40P01)."""
    first_locks = asyncio.Barrier(2)
    attempts = {"a": 0, "b": 0}

    def transfer(name: str, first: int, second: int) -> UnitOfWork[None]:
        async def unit(conn: AsyncConnection) -> None:
            attempts[name] += 1
            await conn.execute(
                text("UPDATE account SET balance = balance - 1 WHERE id = :id"), {"id": first}
            )
            if attempts[name] == 1:
                await first_locks.wait()
            await conn.execute(
                text("UPDATE account SET balance = balance + 1 WHERE id = :id"), {"id": second}
            )

        return unit

    await asyncio.gather(
        scratch.run(transfer("a", 1, 2), retry=FAST_RETRY, name="transfer"),
        scratch.run(transfer("b", 2, 1), retry=FAST_RETRY, name="transfer"),
    )
    assert scratch.retries.by_sqlstate["40P01"] == 1
    assert attempts["a"] + attempts["b"] == 3


async def test_deadlock_without_retries_surfaces_as_deadlock_detected(scratch: Database) -> None:
    both_locked = asyncio.Barrier(2)

    def transfer(first: int, second: int) -> UnitOfWork[None]:
        async def unit(conn: AsyncConnection) -> None:
            await conn.execute(
                text("SELECT 1 FROM account WHERE id = :id FOR UPDATE"), {"id": first}
            )
            await both_locked.wait()
            await conn.execute(
                text("SELECT 1 FROM account WHERE id = :id FOR UPDATE"), {"id": second}
            )

        return unit

    once = RetryPolicy(max_attempts=1)
    results = await asyncio.gather(
        scratch.run(transfer(1, 2), retry=once),
        scratch.run(transfer(2, 1), retry=once),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1
    assert isinstance(failures[0], RetriesExhausted)
    assert isinstance(failures[0].last, DeadlockDetected)


async def test_local_statement_timeout_stops_a_long_statement(scratch: Database) -> None:
    async def slow(conn: AsyncConnection) -> None:
        await conn.execute(text("SELECT pg_sleep(2)"))

    with pytest.raises(StatementTimeout):
        await scratch.run(slow, statement_timeout_ms=50)
    assert scratch.retries.total == 0


async def test_statement_timeout_is_local_to_the_unit(
    scratch: Database, settings: Settings
) -> None:
    async def timeout(conn: AsyncConnection) -> str:
        return str(await conn.scalar(text("SHOW statement_timeout")))

    assert await scratch.run(timeout, statement_timeout_ms=750) == "750ms"
    default = await scratch.run(timeout)
    assert default == f"{settings.database_statement_timeout}ms" or default.endswith("s")


async def test_constraint_errors_are_not_retried(scratch: Database) -> None:
    calls = 0

    async def duplicate(conn: AsyncConnection) -> None:
        nonlocal calls
        calls += 1
        await conn.execute(text("INSERT INTO account VALUES (1, 0)"))

    with pytest.raises(UniqueViolation) as caught:
        await scratch.run(duplicate)
    assert calls == 1
    assert caught.value.constraint == "account_pkey"


async def test_a_failed_unit_leaves_nothing_behind(scratch: Database) -> None:
    async def half_done(conn: AsyncConnection) -> None:
        await conn.execute(text("UPDATE account SET balance = 0 WHERE id = 1"))
        raise RuntimeError("the handler broke")

    with pytest.raises(RuntimeError):
        await scratch.run(half_done)
    assert (
        await scratch.run(lambda c: c.scalar(text("SELECT balance FROM account WHERE id = 1")))
        == 100
    )


@pytest.mark.embedded
async def test_a_killed_backend_is_unavailability_and_not_rerun(
    scratch: Database, fresh_database_url: str
) -> None:
    """pg_terminate_backend mid-unit: whether a lost unit committed can be unknown, so the
    runner reports it instead of running the unit a second time."""
    killer = await asyncpg.connect(to_plain_url(fresh_database_url))
    calls = 0

    async def doomed(conn: AsyncConnection) -> None:
        nonlocal calls
        calls += 1
        pid = await conn.scalar(text("SELECT pg_backend_pid()"))
        await conn.execute(text("UPDATE account SET balance = 0 WHERE id = 1"))
        await killer.execute("SELECT pg_terminate_backend($1)", pid)
        await conn.execute(text("SELECT 1"))

    try:
        with pytest.raises(DatabaseUnavailable):
            await scratch.run(doomed, retry=FAST_RETRY)
    finally:
        await killer.close()
    assert calls == 1
    assert scratch.retries.total == 0
    balance = await scratch.run(
        lambda c: c.scalar(text("SELECT balance FROM account WHERE id = 1"))
    )
    assert balance == 100
