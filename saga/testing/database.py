"""Databases for tests, migrated to head, on the server ``DATABASE_URL`` names or, when it
is unset, on an embedded PostgreSQL started for them.

::

    async with migrated_database() as url:           # one database, made and dropped
        async with SagaTestEnvironment(settings=settings, database_url=url, ...) as env:
            ...

    async with MigratedTemplate() as template:       # one migration for many tests
        async with template.copy() as url:           # a test's own database, copied
            ...

Both also load the reference seeds the journeys look up (``seed_reference=False`` leaves
them out). A copy (``CREATE DATABASE ... TEMPLATE``) takes a fraction of the time a
migration does, so a suite migrates once and copies per test; that is what the pytest
plugin (:mod:`saga.testing.pytest_plugin`) does.

The server named by ``DATABASE_URL`` must let its user create databases; the URL's own
database is only used to connect and is never changed. The migrations also make the
journeys' roles, which are the server's, not a database's: a test server is meant for tests.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

from sqlalchemy.engine import make_url

from saga.embedded.postgres import EmbeddedPostgres
from saga.errors import UsageError
from saga.settings import Settings, load_settings, redact_url
from saga.store import admin
from saga.store.database import Database
from saga.store.seeding import seed_reference as load_reference_seeds

# Every database the kit makes starts so, which tells a stray one (left by a killed run)
# apart from the server's own.
NAME_PREFIX = "saga_test"


class _Server:
    """The server databases are made on: the configured one, or an embedded one that
    :meth:`stop` ends."""

    def __init__(self, settings: Settings) -> None:
        self._configured = settings.database_url
        self._embedded: EmbeddedPostgres | None = None
        self._admin_url: str | None = None

    @property
    def admin_url(self) -> str:
        """A URL that may create and drop databases on the server."""
        if self._admin_url is None:
            raise UsageError("the test database server is not started: use it inside `async with`")
        return self._admin_url

    async def start(self) -> None:
        if self._configured is not None:
            self._admin_url = self._configured
            return
        embedded = EmbeddedPostgres()
        await asyncio.to_thread(embedded.start)  # initdb and start take seconds
        self._embedded = embedded
        self._admin_url = embedded.url("postgres")

    async def stop(self) -> None:
        self._admin_url = None
        if self._embedded is not None:
            embedded, self._embedded = self._embedded, None
            await asyncio.to_thread(embedded.stop)

    async def create(self, *, template: str | None = None, kind: str = "db") -> str:
        """A new database (a copy of ``template`` when named); its URL."""
        name = f"{NAME_PREFIX}_{kind}_{uuid.uuid4().hex[:12]}"
        return await admin.create_database(self.admin_url, name, template=template)

    async def drop(self, url: str) -> None:
        await admin.drop_database(self.admin_url, database_name(url))


def database_name(url: str) -> str:
    """The database a URL names."""
    name = make_url(url).database
    if not name:
        raise UsageError(f"the URL {redact_url(url)} names no database")
    return name


def _settings_or_loaded(settings: Settings | None) -> Settings:
    if settings is None:
        return load_settings()
    if not isinstance(settings, Settings):
        raise UsageError(
            "settings must be a saga.Settings (from load_settings()), "
            f"got {type(settings).__name__}"
        )
    return settings


async def _migrate(url: str, settings: Settings, *, seed_reference: bool) -> None:
    # Imported here: Alembic costs a quarter of a second to import, and only a test that
    # makes a database needs it.
    from saga.store import migrate

    # Alembic's environment runs the migrations with asyncio.run, which cannot be called
    # from inside this event loop: it gets a thread of its own.
    await asyncio.to_thread(migrate.upgrade, url)
    if seed_reference:
        database = Database.from_settings(settings, url=url, application_name="saga-testing")
        try:
            await load_reference_seeds(database)
        finally:
            await database.dispose()


@asynccontextmanager
async def migrated_database(
    settings: Settings | None = None, *, seed_reference: bool = True
) -> AsyncIterator[str]:
    """The URL of a new database migrated to head (with the journeys' reference seeds
    unless ``seed_reference=False``), on the server ``settings.database_url`` names or, when
    it is unset, on an embedded server started for it. On the way out the database is
    dropped and the embedded server stopped. ``settings`` default to ``load_settings()``."""
    settings = _settings_or_loaded(settings)
    server = _Server(settings)
    await server.start()
    try:
        url = await server.create()
        try:
            await _migrate(url, settings, seed_reference=seed_reference)
            yield url
        finally:
            await server.drop(url)
    finally:
        await server.stop()


class MigratedTemplate:
    """A database migrated once (reference seeds included unless ``seed_reference=False``)
    that tests copy instead of migrating: on the server ``settings.database_url`` names, or
    on an embedded server it starts when that is unset. ``async with`` makes it, and drops
    it (and stops the embedded server) on the way out.

    It holds no connection between calls, so :meth:`open`, :meth:`copy` and :meth:`close`
    may each run in an event loop of their own (as the pytest plugin's fixtures do).
    """

    def __init__(self, settings: Settings | None = None, *, seed_reference: bool = True) -> None:
        self.settings = _settings_or_loaded(settings)
        self.seed_reference = seed_reference
        self._server = _Server(self.settings)
        self._name: str | None = None

    @property
    def name(self) -> str:
        """The template database's name. Nobody may stay connected to it: a copy fails
        while anyone is."""
        if self._name is None:
            raise UsageError("the template is not made yet: use it inside `async with`")
        return self._name

    async def open(self) -> None:
        """Start the embedded server if there is no configured one; make and migrate the
        template."""
        await self._server.start()
        try:
            url = await self._server.create(kind="template")
            self._name = database_name(url)
            await _migrate(url, self.settings, seed_reference=self.seed_reference)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Drop the template and stop the embedded server (copies still there go with it;
        on a configured server they stay until dropped)."""
        try:
            if self._name is not None:
                name, self._name = self._name, None
                await admin.drop_database(self._server.admin_url, name)
        finally:
            await self._server.stop()

    async def create_copy(self) -> str:
        """A new database copied from the template; its URL. :meth:`drop_copy` drops it."""
        return await self._server.create(template=self.name, kind="copy")

    async def drop_copy(self, url: str) -> None:
        """Drop a copy, disconnecting whoever is still on it."""
        name = database_name(url)
        if name == self._name:
            raise UsageError(f"{name} is the template itself, not a copy of it")
        await self._server.drop(url)

    @asynccontextmanager
    async def copy(self) -> AsyncIterator[str]:
        """The URL of a database of the caller's own, copied from the template and dropped
        on the way out."""
        url = await self.create_copy()
        try:
            yield url
        finally:
            await self.drop_copy(url)

    async def __aenter__(self) -> MigratedTemplate:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
