"""The benchmark's PostgreSQL: the server, each level's database (created, migrated,
dropped) and the counters read from it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import asyncpg

from benchmarks.saga_bench.constants import REPO_ROOT
from benchmarks.saga_bench.options import Options
from saga.settings import load_settings, to_plain_url
from saga.store import admin, migrate


@contextlib.contextmanager
def admin_server() -> Iterator[str]:
    """``DATABASE_URL``'s server, or an embedded one when it is unset."""
    settings = load_settings(env_dir=REPO_ROOT)
    if settings.database_url is not None:
        yield settings.database_url
        return
    from saga.embedded import EmbeddedPostgres

    with EmbeddedPostgres() as server:
        yield server.url("postgres")


@contextlib.contextmanager
def level_database(admin_url: str, name: str, level: int, options: Options) -> Iterator[str]:
    """Database ``name``, created and migrated, with ``--pg-set``'s settings; its URL.
    Dropped on the way out, whatever happens, unless ``--keep-database``."""
    url = asyncio.run(admin.create_database(admin_url, name))
    if options.keep_database:
        print(f"level {level}: keeping database {name}", flush=True)
    try:
        migrate.upgrade(url)
        for setting in options.pg_settings:
            key, value = setting.split("=", 1)
            asyncio.run(admin.execute_on(admin_url, f'ALTER DATABASE "{name}" SET {key} = {value}'))
        yield url
    finally:
        if not options.keep_database:
            asyncio.run(admin.drop_database(admin_url, name))


async def database_counters(url: str, name: str) -> tuple[int, int, int]:
    """(xact_commit, xact_rollback, statements this call ran) of database ``name``, once
    no other session is connected to it. PostgreSQL 15 counts lazily: a backend reports
    at most once a second, and here an idle session's 100 commits were still unreported
    13 s later; every backend reports all it has when it exits."""
    conn = await asyncpg.connect(to_plain_url(url))
    statements = 0
    try:
        deadline = time.monotonic() + 30
        while True:
            others = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            statements += 1
            if not others or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await conn.fetchrow(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1", name
        )
        statements += 2
        assert row is not None
        return int(row["xact_commit"]), int(row["xact_rollback"]), statements
    finally:
        await conn.close()


async def backends_of(conn: asyncpg.Connection, database: str) -> dict[int, str]:
    """Each backend on ``database``: its pid and the client it serves."""
    rows = await conn.fetch(
        "SELECT pid, coalesce(nullif(application_name, ''), 'bench-driver-poll') AS client "
        "FROM pg_stat_activity WHERE datname = $1",
        database,
    )
    return {int(row["pid"]): str(row["client"]) for row in rows}


async def server_version(admin_url: str) -> str:
    conn = await asyncpg.connect(to_plain_url(admin_url))
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


async def free_connections(admin_url: str) -> int:
    """Connections a client that is not a superuser can still open on the server."""
    conn = await asyncpg.connect(to_plain_url(admin_url))
    try:
        free = await conn.fetchval(
            "SELECT current_setting('max_connections')::int "
            "- current_setting('superuser_reserved_connections')::int "
            "- (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        )
        return int(free)
    finally:
        await conn.close()
