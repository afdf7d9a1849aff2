"""Fixtures: a PostgreSQL server and a Kafka-protocol broker for the whole run.

The server is the one ``DATABASE_URL`` names (CI points it at the machine's PostgreSQL)
or, when it is unset, a throw-away embedded server. Either way each test that asks gets a
database of its own, created for it and dropped after it. The broker is the one
``KAFKA_BOOTSTRAP_SERVERS`` names or an embedded Tansu broker on a free port.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog
from sqlalchemy.engine import make_url

from saga.settings import Settings, load_settings
from saga.store import Database, admin, migrate

REPO_ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("APP_ENV", "test")


def create_database(admin_url: str, prefix: str = "austa_test") -> str:
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    return asyncio.run(admin.create_database(admin_url, name))


def drop_database(admin_url: str, url: str) -> None:
    name = make_url(url).database
    assert name is not None
    asyncio.run(admin.drop_database(admin_url, name))


class _LoopErrors(logging.Handler):
    """Collects what asyncio reports through its logger: a task that died with nobody
    awaiting it, a callback that raised."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if not _asyncpg_cancelled_tls_probe(message):
            self.messages.append(message)


def _asyncpg_cancelled_tls_probe(message: str) -> bool:
    """asyncpg's own future for the SSL probe of a connection attempt (sslmode prefer),
    left unretrieved when the attempt is cancelled by its connect timeout: a known asyncpg
    bug (MagicStack/asyncpg#1211, #1310). The timeout itself reaches the engine, which
    retries the unit (``DatabaseUnavailable``); only this log line is left, on a loaded
    machine. Nothing of ours makes a bare future with that error."""
    return (
        message.startswith("Future exception was never retrieved")
        and "future: <Future finished exception=ConnectionError("
        "'unexpected connection_lost() call')>"
        in message
    )


@pytest.fixture(autouse=True)
def fail_on_unhandled_loop_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """A background task that failed unobserved fails the test that started it. Set up
    before, so torn down after, the test's event loop."""
    handler = _LoopErrors()
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addHandler(handler)
    try:
        yield
        # "exception was never retrieved" is reported when a task is freed. A full
        # collection costs ~0.1 s, so pure unit tests, which start no tasks, skip it.
        if "integration" in request.keywords or inspect.iscoroutinefunction(request.function):
            gc.collect()
    finally:
        asyncio_logger.removeHandler(handler)
    if handler.messages:
        pytest.fail("unhandled errors in the event loop:\n" + "\n".join(handler.messages))


_GRANTS_BY_THE_ROLE_REVOKED = """
DO $$
DECLARE
    membership record;
BEGIN
    IF current_setting('server_version_num')::int >= 160000 THEN
        FOR membership IN
            SELECT a.roleid::regrole::text AS granted, a.member::regrole::text AS member
            FROM pg_auth_members a
            WHERE a.grantor = '{owner}'::regrole
        LOOP
            EXECUTE format(
                'REVOKE %s FROM %s GRANTED BY {owner} CASCADE',
                membership.granted, membership.member
            );
        END LOOP;
    END IF;
END $$
"""


async def drop_owner_role(admin_url: str, role: str) -> None:
    """Drop a test's migration owner. What it granted (the worker into
    austa_table_owner) holds it back from PostgreSQL 16 on, where each grant belongs to
    its grantor: that goes first."""
    await admin.execute_on(admin_url, _GRANTS_BY_THE_ROLE_REVOKED.format(owner=role))
    await admin.execute_on(admin_url, f'DROP ROLE IF EXISTS "{role}"')


@pytest.fixture(autouse=True)
def logging_restored() -> Iterator[None]:
    """``saga`` configures logging for its process (``configure_logging``, a command's
    quieter aiokafka): a command run in this process must not leave it configured for the
    tests after it, writing to a capture that is closed by then."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    aiokafka_level = logging.getLogger("aiokafka").level
    try:
        yield
    finally:
        structlog.configure(**config)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        logging.getLogger("aiokafka").setLevel(aiokafka_level)
        logging.captureWarnings(False)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings(env_dir=REPO_ROOT)


@pytest.fixture(scope="session")
def admin_database_url(settings: Settings) -> Iterator[str]:
    """A URL on the test server with the right to create databases."""
    if settings.database_url is not None:
        yield admin.with_database(settings.database_url, "postgres")
        return
    from saga.embedded import EmbeddedPostgres

    with EmbeddedPostgres() as server:
        yield server.url("postgres")


@pytest.fixture
def fresh_database_url(admin_database_url: str) -> Iterator[str]:
    """An empty database of this test's own."""
    url = create_database(admin_database_url)
    try:
        yield url
    finally:
        drop_database(admin_database_url, url)


@pytest.fixture(scope="session")
def migrated_database_url(admin_database_url: str) -> Iterator[str]:
    """A database migrated to head, shared by the run: treat its schema as read-only."""
    url = create_database(admin_database_url, prefix="austa_test_migrated")
    try:
        migrate.upgrade(url)
        yield url
    finally:
        drop_database(admin_database_url, url)


@pytest.fixture
async def database(settings: Settings, migrated_database_url: str) -> AsyncIterator[Database]:
    """The engine's :class:`Database` on the migrated database."""
    db = Database.from_settings(settings, url=migrated_database_url, application_name="tests")
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture(scope="session")
def kafka_bootstrap_servers(settings: Settings) -> Iterator[str]:
    if settings.kafka_bootstrap_servers is not None:
        yield settings.kafka_bootstrap_servers
        return
    from saga.embedded import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers
