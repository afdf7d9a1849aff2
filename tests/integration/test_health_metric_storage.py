"""Which storage the health migration gives the metrics, migrated as a non-superuser owner.

The server is an embedded PostgreSQL of this module's own, whatever DATABASE_URL says: its
``extension_control_path`` (PostgreSQL 18) lets a scratch folder offer a stand-in
``timescaledb`` extension, so the server reports TimescaleDB as available without it being
installed. The stand-in behaves as the real one does where the migration's choice depends
on it: without the loader preloaded (whose own setting ``timescaledb.disable_load`` then
does not exist) creating it ends the connection, as the real loader's FATAL does; with it,
``create_hypertable`` records the call on the table's comment.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from saga.embedded import EmbeddedPostgres
from saga.settings import to_plain_url
from saga.store import admin, migrate
from tests.conftest import drop_owner_role

pytestmark = [pytest.mark.integration, pytest.mark.embedded]

STAND_IN_VERSION = "0.0.0-standin"

# Run as the bootstrap superuser (the extension is trusted), like the real script.
STAND_IN_SCRIPT = """
DO $standin$
BEGIN
    IF current_setting('timescaledb.disable_load', true) IS NULL THEN
        -- The real loader: FATAL "extension timescaledb must be preloaded".
        PERFORM pg_terminate_backend(pg_backend_pid());
    END IF;
END $standin$;

CREATE FUNCTION create_hypertable(
    relation regclass, time_column_name name, chunk_time_interval interval DEFAULT NULL
) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format(
        'COMMENT ON TABLE %s IS %L', relation,
        format('stand-in hypertable on %s every %s', time_column_name, chunk_time_interval)
    );
END $fn$;
"""


@dataclass(frozen=True)
class Server:
    superuser_url: str


@pytest.fixture(scope="module")
def stand_in_folder() -> Iterator[Path]:
    # The server runs as an OS user of its own: the folder must be readable by anyone.
    folder = Path(tempfile.mkdtemp(prefix="austa-fake-timescaledb-"))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def server(stand_in_folder: Path) -> Iterator[Server]:
    with EmbeddedPostgres() as pg:
        # PostgreSQL 18 looks in <element>/extension; either reading of the path is covered.
        path = f"$system:{stand_in_folder}:{stand_in_folder / 'extension'}"
        for sql in (
            f"ALTER SYSTEM SET extension_control_path = '{path}'",
            "SELECT pg_reload_conf()",
        ):
            asyncio.run(admin.execute_on(pg.url("postgres"), sql))
        yield Server(pg.url("postgres"))


def offer_stand_in(folder: Path, *, trusted: bool) -> None:
    extension = folder / "extension"
    extension.mkdir(mode=0o755, exist_ok=True)
    control = extension / "timescaledb.control"
    control.write_text(
        f"default_version = '{STAND_IN_VERSION}'\n"
        "relocatable = false\n"
        "schema = public\n"
        f"trusted = {'true' if trusted else 'false'}\n"
    )
    script = extension / f"timescaledb--{STAND_IN_VERSION}.sql"
    script.write_text(STAND_IN_SCRIPT)
    for made in (control, script):
        made.chmod(0o644)


@contextlib.asynccontextmanager
async def owned_database(server: Server, *, preloaded: bool, created: bool) -> AsyncIterator[str]:
    """A database owned by a role that may create databases and nothing more (no
    superuser, no pg_read_all_settings), as a managed service hands one out."""
    suffix = uuid.uuid4().hex[:8]
    role, name = f"austa_metric_owner_{suffix}", f"austa_metric_storage_{suffix}"
    await admin.execute_on(server.superuser_url, f"CREATE ROLE {role} LOGIN CREATEDB CREATEROLE")
    try:
        await admin.execute_on(server.superuser_url, f"CREATE DATABASE {name} OWNER {role}")
        superuser_url = admin.with_database(server.superuser_url, name)
        try:
            if preloaded:
                # What the loader's preloading shows every session: its own setting.
                await admin.execute_on(
                    superuser_url, f"ALTER DATABASE {name} SET timescaledb.disable_load = 'off'"
                )
            if created:
                await admin.execute_on(superuser_url, "CREATE EXTENSION timescaledb")
            yield str(make_url(superuser_url).set(username=role).render_as_string(False))
        finally:
            await admin.drop_database(server.superuser_url, name)
    finally:
        await drop_owner_role(server.superuser_url, role)


@dataclass(frozen=True)
class Storage:
    relkind: str
    comment: str | None
    extension: bool
    superuser: bool
    partitions: int


async def storage_of(url: str) -> Storage:
    conn = await asyncpg.connect(to_plain_url(url))
    try:
        row = await conn.fetchrow(
            """
            SELECT c.relkind::text AS relkind,
                   obj_description(c.oid, 'pg_class') AS comment,
                   EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb') AS extension,
                   (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser,
                   (SELECT count(*) FROM pg_inherits WHERE inhparent = c.oid) AS partitions
            FROM pg_class c
            WHERE c.oid = 'health_journey.health_metric'::regclass
            """
        )
    finally:
        await conn.close()
    assert row is not None
    return Storage(**dict(row))


@pytest.mark.parametrize(
    ("preloaded", "trusted", "created", "hypertable"),
    [
        pytest.param(False, True, False, False, id="available-not-preloaded"),
        pytest.param(True, True, False, True, id="preloaded-owner-creates-it"),
        pytest.param(True, False, False, False, id="preloaded-owner-may-not-create-it"),
        pytest.param(True, False, True, True, id="created-by-a-superuser"),
    ],
)
async def test_the_metric_storage_follows_what_the_owner_may_do(
    server: Server,
    stand_in_folder: Path,
    preloaded: bool,
    trusted: bool,
    created: bool,
    hypertable: bool,
) -> None:
    offer_stand_in(stand_in_folder, trusted=trusted)
    async with owned_database(server, preloaded=preloaded, created=created) as url:
        await asyncio.to_thread(migrate.upgrade, url)
        storage = await storage_of(url)

    assert storage.superuser is False
    if hypertable:
        assert storage == Storage(
            relkind="r",
            comment="stand-in hypertable on recorded_at every 7 days",
            extension=True,
            superuser=False,
            partitions=0,
        )
    else:
        assert (storage.relkind, storage.extension) == ("p", False)
        assert storage.comment is None
        # Months ahead plus the DEFAULT partition.
        assert storage.partitions >= 2


async def test_the_stand_in_ends_the_connection_without_the_loader(
    server: Server, stand_in_folder: Path
) -> None:
    """What the migration must never try: the stand-in is as unforgiving as the real one."""
    offer_stand_in(stand_in_folder, trusted=True)
    async with owned_database(server, preloaded=False, created=False) as url:
        conn = await asyncpg.connect(to_plain_url(url))
        try:
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
                await conn.execute("CREATE EXTENSION timescaledb")
        finally:
            await conn.close()
