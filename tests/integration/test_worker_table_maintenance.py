"""The table maintenance job against the real PostgreSQL: it vacuums a churning table
whose autovacuum is off, exports what it watches, reports a bloated index and, when
allowed, rebuilds it concurrently.

Dead tuples are made by deleting rows; the deleting session asks for its statistics to
be flushed (``pg_stat_force_next_flush``) so the job sees them at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from saga import Database, Row
from saga.participant.journey import JourneyService, discover_journeys
from saga.settings import to_plain_url
from saga.store import roles
from saga.worker.job import lock_key
from saga.worker.jobs.vacuum import TABLE_MAINTENANCE, watched_tables
from saga.worker.scheduler import JobReport, Worker
from tests.integration.conftest import SagaEnvironment

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
CHURN = "care_journey.test_churn"
CHURN_INDEX = "care_journey.test_churn_pkey"
ROWS = 100_000


async def fetchrow(env: SagaEnvironment, query: str, *args: Any) -> Row:
    row = await env.database.run_driver(lambda conn: conn.fetchrow(query, *args), name="test")
    assert row is not None
    return row


async def execute(env: SagaEnvironment, query: str, *args: Any) -> str:
    return await env.database.run_driver(lambda conn: conn.execute(query, *args), name="test")


async def delete_and_flush(env: SagaEnvironment, delete: str) -> None:
    """Delete rows, and have this session's statistics flushed when it commits."""

    async def unit(conn: Any) -> None:
        await conn.execute(delete)
        await conn.execute("SELECT pg_stat_force_next_flush()")

    await env.database.run_driver(unit, name="test")


async def table_stats(env: SagaEnvironment, table: str) -> Row:
    return await fetchrow(
        env,
        "SELECT n_dead_tup, n_live_tup, last_vacuum, last_analyze "
        "FROM pg_stat_user_tables WHERE relid = $1::regclass",
        table,
    )


async def index_file(env: SagaEnvironment) -> tuple[int, int]:
    """The churn index's relfilenode and size in bytes."""
    row = await fetchrow(
        env,
        "SELECT relfilenode, pg_relation_size(oid) AS size FROM pg_class WHERE oid = $1::regclass",
        CHURN_INDEX,
    )
    return row["relfilenode"], row["size"]


def with_churn_table() -> list[JourneyService]:
    care = discover_journeys()["care"]
    return [dataclasses.replace(care, churning_tables=(*care.churning_tables, CHURN))]


async def run_job(
    env: SagaEnvironment, *, database: Database | None = None, **settings: Any
) -> JobReport:
    worker = Worker(
        settings=env.settings.model_copy(update=settings),
        database=database or env.database,
        journeys=with_churn_table(),
        jobs=[TABLE_MAINTENANCE],
        bootstrap_servers=env.bootstrap,
    )
    try:
        return await worker.run_job(TABLE_MAINTENANCE.name)
    finally:
        await worker.close()


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_vacuums_reports_bloat_and_reindexes_only_when_enabled(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await execute(
        env,
        f"CREATE TABLE {CHURN} (id bigint PRIMARY KEY, note text NOT NULL) "
        "WITH (autovacuum_enabled = false)",
    )
    await execute(
        env,
        f"INSERT INTO {CHURN} SELECT n, 'row ' || n FROM generate_series(1, {ROWS}) AS n",
    )
    # Nine rows in ten deleted: the index keeps its pages with a tenth of its entries.
    await delete_and_flush(env, f"DELETE FROM {CHURN} WHERE id % 10 <> 0")
    before = await table_stats(env, CHURN)
    assert before["n_dead_tup"] == ROWS * 9 // 10
    assert before["last_vacuum"] is None
    settings: dict[str, Any] = {
        "vacuum_dead_tuples_threshold": 1000,
        "index_bloat_threshold_percent": 50.0,
    }

    # Another worker holding the job's lock: this one does nothing at all.
    holder = await asyncpg.connect(to_plain_url(env.database_url))
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", lock_key(TABLE_MAINTENANCE.name))
        skipped = await run_job(env, **settings)
    finally:
        await holder.close()
    assert (skipped.claimed, sum(skipped.counts.values())) == (0, 0)
    assert (await table_stats(env, CHURN))["last_vacuum"] is None

    file_before = await index_file(env)
    with capture_logs() as logs:
        report = await run_job(env, **settings)
    after = await table_stats(env, CHURN)
    assert after["last_vacuum"] is not None
    assert after["last_analyze"] is not None
    assert (after["n_dead_tup"], after["n_live_tup"]) == (0, ROWS // 10)
    assert report.counts["vacuumed"] >= 1
    vacuumed = [e for e in logs if e["event"] == "table_vacuumed" and e["table"] == CHURN]
    assert [(e["reason"], e["dead_tuples"]) for e in vacuumed] == [
        ("autovacuum_off", ROWS * 9 // 10)
    ]
    assert gauge("saga_table_dead_tuples", table=CHURN) == 0
    assert gauge("saga_table_live_tuples", table=CHURN) == ROWS // 10
    assert gauge("saga_table_autovacuum_enabled", table=CHURN) == 0
    assert gauge("saga_table_last_vacuum_timestamp_seconds", table=CHURN) == pytest.approx(
        after["last_vacuum"].timestamp()
    )
    assert gauge("saga_table_last_analyze_timestamp_seconds", table=CHURN) == pytest.approx(
        after["last_analyze"].timestamp()
    )

    # The index is reported, not rebuilt: REINDEX_CONCURRENTLY_ENABLED is off.
    ratio = gauge("saga_index_bloat_ratio", table=CHURN, index=CHURN_INDEX)
    assert ratio is not None
    assert ratio > 0.8
    assert gauge("saga_index_size_bytes", table=CHURN, index=CHURN_INDEX) == file_before[1]
    alerts = [e for e in logs if e["event"] == "index_bloat_high" and e["index"] == CHURN_INDEX]
    assert len(alerts) == 1
    assert (alerts[0]["log_level"], alerts[0]["alert"]) == ("warning", "index_bloat")
    assert "reindexed" not in report.counts
    assert await index_file(env) == file_before

    with capture_logs() as logs:
        rebuilt = await run_job(env, reindex_concurrently_enabled=True, **settings)
    assert rebuilt.counts["reindexed"] == 1
    relfilenode, size = await index_file(env)
    assert relfilenode != file_before[0]
    assert size < file_before[1] / 4
    done = [e for e in logs if e["event"] == "index_reindexed"]
    assert [(e["index"], e["size_bytes_after"]) for e in done] == [(CHURN_INDEX, size)]
    valid = await fetchrow(
        env, "SELECT indisvalid FROM pg_index WHERE indexrelid = $1::regclass", CHURN_INDEX
    )
    assert valid["indisvalid"]

    with capture_logs() as logs:
        await run_job(env, reindex_concurrently_enabled=True, **settings)
    assert not [e for e in logs if e["event"] == "index_bloat_high" and e["index"] == CHURN_INDEX]
    ratio = gauge("saga_index_bloat_ratio", table=CHURN, index=CHURN_INDEX)
    assert ratio is not None
    assert ratio < 0.5
    assert await index_file(env) == (relfilenode, size)


async def test_a_role_that_does_not_own_the_table_watches_it_but_says_it_may_not_vacuum(
    saga_env: SagaEnvironment,
) -> None:
    """As the worker's own role (least privilege): PostgreSQL 15 would skip the VACUUM of
    a table it does not own with a mere warning, so the job says so instead of claiming a
    vacuum, and leaves the index alone."""
    env = saga_env
    await execute(
        env,
        f"CREATE TABLE {CHURN} (id bigint PRIMARY KEY, note text NOT NULL) "
        "WITH (autovacuum_enabled = false)",
    )
    await execute(
        env, f"INSERT INTO {CHURN} SELECT n, 'row ' || n FROM generate_series(1, {ROWS}) AS n"
    )
    await delete_and_flush(env, f"DELETE FROM {CHURN} WHERE id % 10 <> 0")
    await execute(env, f"ANALYZE {CHURN}")  # the bloat estimate reads its statistics
    url = make_url(env.database_url).set(username=roles.WORKER_ROLE)
    worker_database = Database.from_settings(
        env.settings, url=url.render_as_string(hide_password=False), application_name="tests"
    )
    settings: dict[str, Any] = {
        "vacuum_dead_tuples_threshold": 1000,
        "index_bloat_threshold_percent": 50.0,
        "reindex_concurrently_enabled": True,
    }
    file_before = await index_file(env)
    try:
        with capture_logs() as logs:
            report = await run_job(env, database=worker_database, **settings)
    finally:
        await worker_database.dispose()

    refused = [e for e in logs if e["event"] == "table_vacuum_not_permitted"]
    assert [(e["table"], e["reason"]) for e in refused if e["table"] == CHURN] == [
        (CHURN, "autovacuum_off")
    ]
    not_rebuilt = [e for e in logs if e["event"] == "index_reindex_not_permitted"]
    assert [e["index"] for e in not_rebuilt if e["table"] == CHURN] == [CHURN_INDEX]
    assert report.counts["not_permitted"] >= 2
    assert "reindexed" not in report.counts
    assert not [e for e in logs if e["event"] == "table_vacuumed" and e["table"] == CHURN]
    # Still watched: its figures are exported as for any other.
    assert gauge("saga_table_dead_tuples", table=CHURN) == ROWS * 9 // 10
    assert (await table_stats(env, CHURN))["last_vacuum"] is None
    assert await index_file(env) == file_before


async def test_every_churning_table_is_watched_and_exported(saga_env: SagaEnvironment) -> None:
    env = saga_env
    journeys = list(discover_journeys().values())
    names = watched_tables(journeys)
    assert {"shared.saga_step_log", "care_journey.care_inbox", "plan_journey.plan_outbox"} <= set(
        names
    )
    assert {"care_journey.care_appointment", "gamification.gamification_points_ledger"} <= set(
        names
    )
    worker = Worker(
        settings=env.settings,
        database=env.database,
        journeys=journeys,
        jobs=[TABLE_MAINTENANCE],
        bootstrap_servers=env.bootstrap,
    )
    try:
        with capture_logs() as logs:
            report = await worker.run_job(TABLE_MAINTENANCE.name)
    finally:
        await worker.close()
    assert [e for e in logs if e["event"] == "table_maintenance_skipped"] == []
    assert report.counts["tables_watched"] == len(names)
    for name in names:
        assert gauge("saga_table_dead_tuples", table=name) is not None, name


async def test_runs_from_the_command_line_without_a_broker(saga_env: SagaEnvironment) -> None:
    """Cron runs the job alone; it needs the database only."""
    env = saga_env
    outbox = "care_journey.care_outbox"
    await execute(env, f"ALTER TABLE {outbox} SET (autovacuum_enabled = false)")
    await execute(
        env,
        f"INSERT INTO {outbox} (message_id, topic, message_key, payload) "
        "SELECT gen_random_uuid(), 't', 'k', '{}' FROM generate_series(1, 2000)",
    )
    await delete_and_flush(env, f"DELETE FROM {outbox}")
    assert (await table_stats(env, outbox))["n_dead_tup"] == 2000
    no_broker = {
        **env.process_environment(),
        "KAFKA_BOOTSTRAP_SERVERS": "",
        "LOG_LEVEL": "WARNING",
        "VACUUM_DEAD_TUPLES_THRESHOLD": "1000",
    }
    ran = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "saga", "run", "worker", "--once", "--job", "table_maintenance"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=no_broker,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    after = await table_stats(env, outbox)
    assert after["last_vacuum"] is not None
    assert after["n_dead_tup"] == 0
