"""Server-level administration: create and drop whole databases.

The demo makes its database on the embedded server; the tests and benchmarks make a
throw-away database per run. These are plain-protocol statements (CREATE DATABASE cannot
run inside a transaction), so they go over a short-lived asyncpg connection.
"""

from __future__ import annotations

import asyncpg
from sqlalchemy.engine import make_url

from saga.settings import to_plain_url
from saga.store.errors import database_errors


def with_database(url: str, database: str) -> str:
    """``url`` pointed at another database on the same server (libpq form)."""
    rendered = make_url(to_plain_url(url)).set(database=database)
    return rendered.render_as_string(hide_password=False)


async def execute_on(url: str, sql: str) -> None:
    """Run ``sql`` (one or more statements, no parameters) outside any transaction."""
    with database_errors():
        conn = await asyncpg.connect(to_plain_url(url))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()


async def create_database(admin_url: str, name: str, *, template: str | None = None) -> str:
    """Create database ``name`` on ``admin_url``'s server and return a URL for it; a copy
    of ``template`` (which nobody may be connected to) when one is named."""
    copy = f' TEMPLATE "{template}"' if template else ""
    await execute_on(admin_url, f'CREATE DATABASE "{name}"{copy}')
    return with_database(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name``, disconnecting whoever is still on it."""
    await execute_on(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
