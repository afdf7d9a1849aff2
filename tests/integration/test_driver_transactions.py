"""``Database.run_driver``: the same guarantees as ``run`` on the asyncpg connection,
against real PostgreSQL conflicts and faults."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from saga.errors import (
    CheckViolation,
    ConnectFailed,
    DatabaseError,
    DatabaseUnavailable,
    PoolExhausted,
    RetriesExhausted,
    SerializationConflict,
    StatementTimeout,
)
from saga.retry import RetryPolicy
from saga.settings import Settings, load_settings, to_plain_url
from saga.store import Database, IsolationLevel
from saga.store.database import DriverUnitOfWork
from saga.store.driver import DriverConnection
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

FAST_RETRY = RetryPolicy(max_attempts=5, initial_delay=0.001, max_delay=0.01)


async def balance(db: Database, account: int) -> int:
    async def read(conn: DriverConnection) -> int:
        return int(await conn.fetchval("SELECT balance FROM account WHERE id = $1", account))

    return await db.run_driver(read)


@pytest.mark.parametrize("level", list(IsolationLevel))
async def test_unit_runs_at_the_requested_isolation_level(
    scratch: Database, level: IsolationLevel
) -> None:
    async def show(conn: DriverConnection) -> str:
        return str(await conn.fetchval("SHOW transaction_isolation"))

    assert await scratch.run_driver(show, isolation=level) == level.value.lower()


async def test_write_skew_is_retried_until_consistent(scratch: Database) -> None:
    both_read = asyncio.Barrier(2)
    attempts = {1: 0, 2: 0}

    def withdraw(account: int) -> DriverUnitOfWork[bool]:
        async def unit(conn: DriverConnection) -> bool:
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
        scratch.run_driver(withdraw(1), isolation=serializable, retry=FAST_RETRY, name="w"),
        scratch.run_driver(withdraw(2), isolation=serializable, retry=FAST_RETRY, name="w"),
    )
    assert sorted(results) == [False, True]
    assert scratch.retries.by_sqlstate["40001"] >= 1
    assert await balance(scratch, 1) + await balance(scratch, 2) == 50


async def test_gives_up_after_the_limit(scratch: Database, fresh_database_url: str) -> None:
    other = await asyncpg.connect(to_plain_url(fresh_database_url))
    calls = 0

    async def always_loses(conn: DriverConnection) -> None:
        nonlocal calls
        calls += 1
        await conn.fetchval("SELECT balance FROM account WHERE id = 1")
        await other.execute("UPDATE account SET balance = balance + 1 WHERE id = 1")
        await conn.execute("UPDATE account SET balance = balance - 1 WHERE id = 1")

    policy = RetryPolicy(max_attempts=3, initial_delay=0.001, max_delay=0.002)
    try:
        with pytest.raises(RetriesExhausted) as caught:
            await scratch.run_driver(
                always_loses, isolation=IsolationLevel.REPEATABLE_READ, retry=policy
            )
    finally:
        await other.close()
    assert calls == 3
    assert isinstance(caught.value.last, SerializationConflict)


async def test_constraint_errors_are_translated_and_not_retried(scratch: Database) -> None:
    calls = 0

    async def overdraw(conn: DriverConnection) -> None:
        nonlocal calls
        calls += 1
        await conn.execute(
            "ALTER TABLE account ADD CONSTRAINT account_positive CHECK (balance >= 0)"
        )
        await conn.execute("UPDATE account SET balance = -1 WHERE id = 1")

    with pytest.raises(CheckViolation) as caught:
        await scratch.run_driver(overdraw)
    assert calls == 1
    assert caught.value.constraint == "account_positive"


@pytest.mark.embedded
async def test_a_killed_backend_is_unavailability_and_rolls_back(
    scratch: Database, fresh_database_url: str
) -> None:
    killer = await asyncpg.connect(to_plain_url(fresh_database_url))
    calls = 0

    async def doomed(conn: DriverConnection) -> None:
        nonlocal calls
        calls += 1
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await conn.execute("UPDATE account SET balance = 0 WHERE id = 1")
        await killer.execute("SELECT pg_terminate_backend($1)", pid)
        await conn.execute("SELECT 1")

    try:
        with pytest.raises(DatabaseUnavailable):
            await scratch.run_driver(doomed, retry=FAST_RETRY)
    finally:
        await killer.close()
    assert calls == 1
    assert await balance(scratch, 1) == 100


async def test_local_statement_timeout(scratch: Database) -> None:
    async def slow(conn: DriverConnection) -> None:
        await conn.execute("SELECT pg_sleep(2)")

    with pytest.raises(StatementTimeout):
        await scratch.run_driver(slow, statement_timeout_ms=50)


async def test_a_failed_unit_leaves_nothing_behind(scratch: Database) -> None:
    async def half_done(conn: DriverConnection) -> None:
        await conn.execute("UPDATE account SET balance = 0 WHERE id = 1")
        raise RuntimeError("the handler broke")

    with pytest.raises(RuntimeError):
        await scratch.run_driver(half_done)
    assert await balance(scratch, 1) == 100


async def test_every_statement_is_counted_and_slow_ones_logged(scratch: Database) -> None:
    scratch.queries.threshold_ms = 20
    before = scratch.queries.queries

    async def mixed(conn: DriverConnection) -> int:
        await conn.executemany("INSERT INTO account VALUES ($1, $2)", [(10, 1), (11, 2), (12, 3)])
        rows = await conn.fetch("SELECT id FROM account WHERE id >= $1 ORDER BY id", 10)
        row = await conn.fetchrow("SELECT balance FROM account WHERE id = $1", 12)
        assert row is not None
        await conn.execute("SELECT pg_sleep(0.05)")
        return len(rows) + int(row["balance"])

    with capture_logs() as logs:
        assert await scratch.run_driver(mixed) == 6
    assert scratch.queries.queries - before == 4
    slow = [entry for entry in logs if entry["event"] == "slow_query"]
    assert [entry["statement"] for entry in slow] == ["SELECT pg_sleep(0.05)"]


@pytest.mark.embedded
async def test_a_full_pool_is_waited_out_not_surfaced(
    settings: Settings, fresh_database_url: str
) -> None:
    small = load_settings(
        env_dir=REPO_ROOT,
        database_pool_size=1,
        database_max_overflow=0,
        database_connection_timeout=100,
    )
    db = Database.from_settings(small, url=fresh_database_url, application_name="tests")
    db.retry = RetryPolicy(max_attempts=20, initial_delay=0.01, max_delay=0.05)
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold(conn: DriverConnection) -> None:
        holding.set()
        await release.wait()

    try:
        holder = asyncio.create_task(db.run_driver(hold))
        await holding.wait()
        waiter = asyncio.create_task(db.run_driver(lambda conn: conn.fetchval("SELECT 42")))
        await asyncio.sleep(0.35)  # several checkout timeouts of 100 ms
        release.set()
        assert await waiter == 42
        await holder
        assert sum(db.retries.pool_exhausted.values()) >= 2
        assert db.retries.total == 0  # not counted as conflicts

        # A pool that stays full past the policy's attempts surfaces as such.
        release.clear()
        holding.clear()
        holder = asyncio.create_task(db.run_driver(hold))
        await holding.wait()
        with pytest.raises(PoolExhausted, match="no database connection free in time"):
            await db.run_driver(
                lambda conn: conn.fetchval("SELECT 1"),
                retry=RetryPolicy(max_attempts=2, initial_delay=0.001, max_delay=0.001),
            )
        release.set()
        await holder
    finally:
        release.set()
        await db.dispose()


class FlakyDoor:
    """A TCP port in front of the test's PostgreSQL that leaves its first ``silent``
    connections unanswered (a server too busy to accept in time) and pipes the others
    through."""

    def __init__(self, database_url: str, silent: int) -> None:
        self._target = make_url(database_url)
        self._silent = silent
        self.opened = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        user = self._target.username or "postgres"
        return f"postgresql://{user}@127.0.0.1:{port}/{self._target.database}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Closed sockets end every pipe and every wait; asyncio's server reports a
        # cancelled handler as an error, so none is cancelled.
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        try:
            if self.opened <= self._silent:
                await reader.read()  # until the client gives up
                return
            host = self._target.query.get("host") or self._target.host or "127.0.0.1"
            port = self._target.port or 5432
            if str(host).startswith("/"):
                up_reader, up_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
            else:
                up_reader, up_writer = await asyncio.open_connection(str(host), port)
            self._writers.append(up_writer)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            writer.close()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def test_a_connection_that_cannot_be_opened_in_time_is_tried_again(
    fresh_database_url: str,
) -> None:
    quick = load_settings(env_dir=REPO_ROOT, database_connection_timeout=200)
    async with FlakyDoor(fresh_database_url, silent=2) as url:
        db = Database.from_settings(quick, url=url, application_name="tests")
        try:
            with capture_logs() as logs:
                assert await db.run_driver(lambda conn: conn.fetchval("SELECT 42")) == 42
        finally:
            await db.dispose()
    assert sum(db.retries.connect_failed.values()) == 2
    assert db.retries.total == 0  # not counted as conflicts
    failed = [entry for entry in logs if entry["event"] == "database_connect_failed"]
    assert [entry["transaction_attempt"] for entry in failed] == [2, 3]


async def test_a_server_that_never_answers_surfaces_after_the_policys_attempts(
    fresh_database_url: str,
) -> None:
    quick = load_settings(env_dir=REPO_ROOT, database_connection_timeout=100)
    async with FlakyDoor(fresh_database_url, silent=1000) as url:
        db = Database.from_settings(quick, url=url, application_name="tests")
        try:
            with pytest.raises(ConnectFailed, match="could not connect"):
                await db.run_driver(
                    lambda conn: conn.fetchval("SELECT 1"),
                    retry=RetryPolicy(max_attempts=3, initial_delay=0.001, max_delay=0.001),
                )
        finally:
            await db.dispose()
    assert sum(db.retries.connect_failed.values()) == 2


async def test_a_database_that_does_not_exist_is_not_tried_again(
    settings: Settings, fresh_database_url: str
) -> None:
    missing = make_url(fresh_database_url).set(database="austa_no_such_database")
    db = Database.from_settings(
        settings, url=missing.render_as_string(hide_password=False), application_name="tests"
    )
    try:
        with pytest.raises(DatabaseError, match="does not exist") as raised:
            await db.run_driver(lambda conn: conn.fetchval("SELECT 1"))
    finally:
        await db.dispose()
    assert not isinstance(raised.value, DatabaseUnavailable)
    assert sum(db.retries.connect_failed.values()) == 0
