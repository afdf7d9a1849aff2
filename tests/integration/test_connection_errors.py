"""What a handler sees when a statement fails: the engine's error, raised by the statement
itself (so the handler can catch it and refuse), chained to the driver's error, and the
retry of conflicts still working through the translated types."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from saga import (
    CheckViolation,
    Connection,
    Database,
    DatabaseError,
    IsolationLevel,
    RetryPolicy,
    StepRefused,
    UniqueViolation,
)

pytestmark = pytest.mark.integration

FAST_RETRY = RetryPolicy(max_attempts=5, initial_delay=0.001, max_delay=0.01)


async def test_a_duplicate_key_is_a_unique_violation_raised_by_the_statement(
    scratch: Database,
) -> None:
    seen: list[BaseException] = []

    async def insert_twice(conn: Connection) -> None:
        try:
            await conn.execute("INSERT INTO account VALUES (1, 5)")
        except UniqueViolation as exc:
            seen.append(exc)
            raise StepRefused("account taken") from None

    with pytest.raises(StepRefused, match="account taken"):
        await scratch.run_driver(insert_twice)
    [error] = seen
    assert isinstance(error, UniqueViolation)
    assert error.sqlstate == "23505"
    assert error.constraint == "account_pkey"
    assert isinstance(error.__cause__, asyncpg.UniqueViolationError)


@pytest.mark.parametrize("method", ["execute", "fetch", "fetchrow", "fetchval"])
async def test_every_statement_method_translates(scratch: Database, method: str) -> None:
    async def unit(conn: Connection) -> None:
        await conn.execute(
            "ALTER TABLE account ADD CONSTRAINT account_positive CHECK (balance >= 0)"
        )
        await getattr(conn, method)("UPDATE account SET balance = -1 WHERE id = $1", 1)

    with pytest.raises(CheckViolation) as caught:
        await scratch.run_driver(unit)
    assert caught.value.constraint == "account_positive"


async def test_executemany_translates(scratch: Database) -> None:
    async def unit(conn: Connection) -> None:
        await conn.executemany("INSERT INTO account VALUES ($1, 0)", [(3,), (3,)])

    with pytest.raises(UniqueViolation):
        await scratch.run_driver(unit)


async def test_a_syntax_error_is_a_database_error_naming_the_problem(scratch: Database) -> None:
    async def unit(conn: Connection) -> None:
        await conn.execute("SELEC 1")

    with pytest.raises(DatabaseError, match="syntax error") as caught:
        await scratch.run_driver(unit)
    assert caught.value.sqlstate == "42601"


async def test_a_serialization_failure_is_still_retried_whole(scratch: Database) -> None:
    both_read = asyncio.Barrier(2)
    attempts = {1: 0, 2: 0}

    def withdraw(account: int) -> Callable[[Connection], Awaitable[bool]]:
        async def unit(conn: Connection) -> bool:
            attempts[account] += 1
            total = await conn.fetchval("SELECT sum(balance) FROM account")
            if attempts[account] == 1:
                await both_read.wait()
            if total - 150 < 0:
                return False
            await conn.execute("UPDATE account SET balance = balance - 150 WHERE id = $1", account)
            return True

        return unit

    serializable = IsolationLevel.SERIALIZABLE
    results = await asyncio.gather(
        scratch.run_driver(withdraw(1), isolation=serializable, retry=FAST_RETRY),
        scratch.run_driver(withdraw(2), isolation=serializable, retry=FAST_RETRY),
    )
    assert sorted(results) == [False, True]
    assert scratch.retries.by_sqlstate["40001"] >= 1
