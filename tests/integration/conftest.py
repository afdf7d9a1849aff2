"""Fixtures for the integration tests: scratch databases and per-test saga environments."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from saga.settings import Settings, load_settings
from saga.store import Database, admin, migrate
from saga.store.seeding import seed_reference
from tests.conftest import REPO_ROOT, create_database, drop_database, drop_owner_role


@pytest.fixture
async def scratch(settings: Settings, fresh_database_url: str) -> AsyncIterator[Database]:
    """A Database on an empty database with two accounts of 100 each."""
    db = Database.from_settings(settings, url=fresh_database_url, application_name="tests")

    async def create(conn: AsyncConnection) -> None:
        await conn.execute(text("CREATE TABLE account (id int PRIMARY KEY, balance int NOT NULL)"))
        await conn.execute(text("INSERT INTO account VALUES (1, 100), (2, 100)"))

    await db.run(create)
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture(scope="session")
def template_database_name(admin_database_url: str) -> Iterator[str]:
    """A migrated database holding the reference seeds (no samples), which nobody
    connects to: copying it is faster than migrating."""
    url = create_database(admin_database_url, prefix="austa_test_template")
    try:
        migrate.upgrade(url)
        asyncio.run(_seed_reference(url))
        name = make_url(url).database
        assert name is not None
        yield name
    finally:
        drop_database(admin_database_url, url)


async def _seed_reference(url: str) -> None:
    database = Database.from_settings(load_settings(env_dir=REPO_ROOT), url=url)
    try:
        await seed_reference(database)
    finally:
        await database.dispose()


@dataclass(frozen=True)
class SagaEnvironment:
    """A migrated database and a topic prefix of one test's own, on the shared broker."""

    settings: Settings
    database: Database
    database_url: str
    bootstrap: str

    def process_environment(self) -> dict[str, str]:
        """The environment that points an engine process (``saga run ...``, an example)
        at this test's database, broker and topics."""
        return {
            **os.environ,
            "APP_ENV": "test",
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_TOPIC_PREFIX": self.settings.kafka_topic_prefix,
            "KAFKA_TOPIC_PARTITIONS": str(self.settings.kafka_topic_partitions),
            "KAFKA_SESSION_TIMEOUT_MS": str(self.settings.kafka_session_timeout_ms),
            "KAFKA_HEARTBEAT_INTERVAL_MS": str(self.settings.kafka_heartbeat_interval_ms),
            "DATABASE_POOL_SIZE": "8",
            "LOG_LEVEL": "WARNING",
        }


@contextmanager
def engine_process(
    env: SagaEnvironment,
    *argv: str,
    environ: Mapping[str, str] | None = None,
    output: BinaryIO | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m saga *argv`` (``"run", "coordinator"``, ...) as a process of its own
    pointed at ``env`` (``environ`` adds to its environment); killed on the way out unless
    it has ended by then. With ``output``, its stdout and stderr both go to that file
    (a pipe nobody reads would block a process that logs a lot)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "saga", *argv],
        cwd=REPO_ROOT,
        env={**env.process_environment(), **(environ or {})},
        stdout=subprocess.DEVNULL if output is None else output,
        stderr=subprocess.PIPE if output is None else output,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


async def open_saga_environment(
    settings: Settings, admin_url: str, template: str, bootstrap: str, name: str
) -> SagaEnvironment:
    """A database ``name`` copied from ``template``, topics of its own on ``bootstrap``;
    the caller disposes ``database`` and drops the database."""
    url = await admin.create_database(admin_url, name, template=template)
    # On the embedded broker a dead group member is noticed sooner; Kafka itself refuses
    # session timeouts under its 6 s floor.
    embedded = settings.kafka_bootstrap_servers is None
    own = load_settings(
        env_dir=REPO_ROOT,
        kafka_topic_prefix=f"test.{uuid.uuid4().hex[:10]}",
        kafka_topic_partitions=4,
        database_pool_size=12,
        database_max_overflow=4,
        kafka_session_timeout_ms=2000 if embedded else 6000,
        kafka_heartbeat_interval_ms=500 if embedded else 2000,
    )
    database = Database.from_settings(own, url=url, application_name="tests")
    return SagaEnvironment(own, database, url, bootstrap)


@pytest.fixture
async def saga_env(
    settings: Settings,
    admin_database_url: str,
    template_database_name: str,
    kafka_bootstrap_servers: str,
) -> AsyncIterator[SagaEnvironment]:
    name = f"austa_test_saga_{uuid.uuid4().hex[:12]}"
    env = await open_saga_environment(
        settings, admin_database_url, template_database_name, kafka_bootstrap_servers, name
    )
    try:
        yield env
    finally:
        await env.database.dispose()
        await admin.drop_database(admin_database_url, name)


@pytest.fixture
def owner(saga_env: SagaEnvironment) -> Database:
    """The database owner of ``saga_env``: builds scenes and reads results."""
    return saga_env.database


@pytest.fixture
async def kit_database(
    settings: Settings, admin_database_url: str, template_database_name: str
) -> AsyncIterator[str]:
    """A migrated database of this test's own, copied from the template."""
    name = f"austa_test_kit_{uuid.uuid4().hex[:12]}"
    url = await admin.create_database(admin_database_url, name, template=template_database_name)
    try:
        yield url
    finally:
        await admin.drop_database(admin_database_url, name)


@dataclass(frozen=True)
class OwnedDatabase:
    """A database owned by a role with CREATEROLE and nothing more (no superuser), the
    way a deployment's migration owner is made (docs/production.md, "Roles")."""

    owner: str
    owner_url: str
    """Logged in as the owner (the test server trusts local logins)."""
    admin_url: str
    """The same database as the test server's superuser: builds scenes, reads results."""

    def url_as(self, role: str) -> str:
        return make_url(self.owner_url).set(username=role).render_as_string(hide_password=False)


_ADMIN_OF_THE_ENGINES_ROLES = r"""
DO $$
DECLARE
    engine_role text;
BEGIN
    IF current_setting('server_version_num')::int >= 160000 THEN
        FOR engine_role IN
            SELECT rolname FROM pg_roles
            WHERE rolname LIKE 'austa\_%' AND rolname NOT LIKE 'austa\_test\_%' AND NOT rolsuper
        LOOP
            EXECUTE format('GRANT %I TO {owner} WITH ADMIN OPTION', engine_role);
        END LOOP;
    END IF;
END $$
"""


@pytest.fixture
async def owned_database(admin_database_url: str) -> AsyncIterator[OwnedDatabase]:
    """An empty database whose owner is a fresh CREATEROLE, NOSUPERUSER login of its own;
    both are dropped afterwards."""
    suffix = uuid.uuid4().hex[:10]
    role, name = f"austa_test_owner_{suffix}", f"austa_test_owned_{suffix}"
    await admin.execute_on(
        admin_database_url, f"CREATE ROLE {role} LOGIN CREATEROLE NOSUPERUSER NOCREATEDB"
    )
    # The engine's roles are the cluster's, made by earlier tests as the superuser. In a
    # fresh cluster the owner makes them, and from PostgreSQL 16 on that is what lets a
    # CREATEROLE owner alter and grant them (ADMIN OPTION): give it that, as it would have.
    await admin.execute_on(admin_database_url, _ADMIN_OF_THE_ENGINES_ROLES.format(owner=role))
    try:
        await admin.execute_on(admin_database_url, f"CREATE DATABASE {name} OWNER {role}")
        admin_url = admin.with_database(admin_database_url, name)
        owner_url = make_url(admin_url).set(username=role).render_as_string(hide_password=False)
        try:
            yield OwnedDatabase(role, owner_url, admin_url)
        finally:
            await admin.drop_database(admin_database_url, name)
    finally:
        # Memberships it was given (austa_table_owner) go with it; it owns nothing else.
        await drop_owner_role(admin_database_url, role)
