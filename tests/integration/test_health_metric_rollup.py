"""The health metrics' daily rollup and retention on plain PostgreSQL (no TimescaleDB):
the worker refreshes ``health_journey.health_metric_daily`` from the readings, the health
journey reads it as its own role, and partition maintenance detaches or drops the months
past HEALTH_METRICS_RETENTION_MONTHS as HEALTH_METRICS_RETENTION_MODE says.

Expected rollups are computed here from the raw rows, in Python, not by the database.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from journeys.health.maintenance import REFRESH_METRIC_DAILY
from journeys.health.rollup import DailyMetric, daily_metrics
from journeys.health.service import SERVICE as HEALTH
from journeys.shared.payload import OPERATOR_ZONE
from journeys.world import create_user
from saga import Row
from saga.participant.journey import discover_journeys
from saga.settings import PartitionExpiry
from saga.store import Database
from saga.store.driver import DriverConnection
from saga.worker.job import Job, lock_key
from saga.worker.jobs.partitions import PARTITION_MAINTENANCE
from saga.worker.scheduler import JobReport, Worker
from tests.conftest import REPO_ROOT
from tests.integration.conftest import SagaEnvironment
from tests.integration.journey_steps import role_database

pytestmark = pytest.mark.integration

METRICS = "health_journey.health_metric"
ROLLUP = "health_journey.health_metric_daily"
TEN_PLACES = Decimal("1e-10")


async def fetch(db: Database, query: str, *args: Any) -> list[Row]:
    return await db.run_driver(lambda conn: conn.fetch(query, *args))


async def fetchval(db: Database, query: str, *args: Any) -> Any:
    return await db.run_driver(lambda conn: conn.fetchval(query, *args))


async def record(
    db: Database,
    user: uuid.UUID,
    metric_type: str,
    unit: str,
    readings: Sequence[tuple[datetime, str]],
    *,
    deleted: bool = False,
) -> None:
    await db.run_driver(
        lambda conn: conn.executemany(
            f"INSERT INTO {METRICS} (user_id, metric_type, value, unit, recorded_at, "
            "deleted_at) VALUES ($1, $2, $3, $4, $5, CASE WHEN $6 THEN now() END)",
            [(user, metric_type, Decimal(v), unit, at, deleted) for at, v in readings],
        )
    )


async def run_job(env: SagaEnvironment, job: Job, **settings: Any) -> JobReport:
    worker = Worker(
        settings=env.settings.model_copy(update=settings),
        database=env.database,
        journeys=list(discover_journeys().values()),
        jobs=[job],
        bootstrap_servers=env.bootstrap,
    )
    try:
        return await worker.run_job(job.name)
    finally:
        await worker.close()


def expected_rollup(rows: Sequence[Row]) -> dict[tuple[Any, str, date], tuple[Any, ...]]:
    """(user, type, member's day) -> (readings, min, max, avg to ten places, sum), from
    the live readings among ``rows``."""
    days: dict[tuple[Any, str, date], list[Decimal]] = defaultdict(list)
    for row in rows:
        if row["deleted_at"] is None:
            day = row["recorded_at"].astimezone(OPERATOR_ZONE).date()
            days[(row["user_id"], row["metric_type"], day)].append(row["value"])
    return {
        key: (
            len(values),
            min(values),
            max(values),
            (sum(values, Decimal(0)) / len(values)).quantize(TEN_PLACES),
            sum(values, Decimal(0)),
        )
        for key, values in days.items()
    }


async def rollup_of(db: Database, users: Sequence[uuid.UUID]) -> dict[Any, tuple[Any, ...]]:
    rows = await fetch(
        db,
        f"SELECT user_id, metric_type, (day AT TIME ZONE 'America/Sao_Paulo')::date AS day, "
        f"readings, min_value, max_value, avg_value, sum_value FROM {ROLLUP} "
        "WHERE user_id = ANY($1::uuid[])",
        list(users),
    )
    return {
        (r["user_id"], r["metric_type"], r["day"]): (
            r["readings"],
            r["min_value"],
            r["max_value"],
            r["avg_value"].quantize(TEN_PLACES),
            r["sum_value"],
        )
        for r in rows
    }


async def raw_rows(db: Database, users: Sequence[uuid.UUID]) -> list[Row]:
    return await fetch(
        db,
        f"SELECT user_id, metric_type, value, recorded_at, deleted_at FROM {METRICS} "
        "WHERE user_id = ANY($1::uuid[])",
        list(users),
    )


@asynccontextmanager
async def health_role(env: SagaEnvironment) -> AsyncIterator[Database]:
    async with role_database(env, HEALTH) as db:
        yield db


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


async def test_the_worker_refreshes_the_daily_rollup_the_journey_reads(
    saga_env: SagaEnvironment,
) -> None:
    owner = saga_env.database
    ana = await owner.run_driver(create_user)
    bruno = await owner.run_driver(create_user)
    today: date = await fetchval(owner, "SELECT (now() AT TIME ZONE 'UTC')::date")
    first, second = today - timedelta(days=3), today - timedelta(days=2)
    await record(
        owner,
        ana,
        "heart_rate",
        "bpm",
        [
            (at(first, 12), "70.00"),
            (at(first, 18, 30), "81.50"),
            # 01:30 UTC is 22:30 the evening before in São Paulo: the member's first day.
            (at(second, 1, 30), "64.25"),
            (at(second, 15), "90.00"),
            (at(second, 16), "91.00"),
            (at(second, 17), "92.00"),
        ],
    )
    # Undone by a compensation: not a reading the member has.
    await record(owner, ana, "heart_rate", "bpm", [(at(second, 18), "250.00")], deleted=True)
    await record(owner, ana, "steps", "steps", [(at(first, 20), "8000"), (at(first, 21), "433")])
    await record(owner, bruno, "heart_rate", "bpm", [(at(first, 12), "60.00")])

    assert await rollup_of(owner, [ana, bruno]) == {}  # not refreshed yet
    report = await run_job(saga_env, REFRESH_METRIC_DAILY)
    assert (report.claimed, report.counts) == (1, {"refreshed": 1})

    expected = expected_rollup(await raw_rows(owner, [ana, bruno]))
    assert await rollup_of(owner, [ana, bruno]) == expected
    assert expected[(ana, "heart_rate", first)][0] == 3  # two that day, one the night after
    assert expected[(ana, "heart_rate", second)][0] == 3  # the deleted one left out

    async with health_role(saga_env) as health:
        days = await health.run_driver(
            lambda conn: daily_metrics(conn, ana, "heart_rate", first, second)
        )
        assert [
            (d.day, d.readings, d.min_value, d.max_value, d.avg_value.quantize(TEN_PLACES))
            for d in days
        ] == [(day, *expected[(ana, "heart_rate", day)][:4]) for day in (first, second)]
        only_second = await health.run_driver(
            lambda conn: daily_metrics(conn, ana, "heart_rate", second, today)
        )
        assert [d.day for d in only_second] == [second]
        assert isinstance(only_second[0], DailyMetric)
        with pytest.raises(ValueError, match="unknown metric type 'pulse'"):
            await health.run_driver(lambda conn: daily_metrics(conn, ana, "pulse", first, today))
        with pytest.raises(ValueError, match="is after until"):
            await health.run_driver(lambda conn: daily_metrics(conn, ana, "steps", today, first))

    privileges = await fetch(
        owner,
        "SELECT p, has_table_privilege('austa_health_journey', $1, p) AS granted "
        "FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) p",
        ROLLUP,
    )
    assert {r["p"]: r["granted"] for r in privileges} == {
        "SELECT": True,
        "INSERT": False,
        "UPDATE": False,
        "DELETE": False,
    }

    # Another worker holds the job's lock: this one skips its turn and changes nothing.
    await record(owner, bruno, "heart_rate", "bpm", [(at(second, 12), "61.00")])
    locked, release = asyncio.Event(), asyncio.Event()

    async def hold_lock(conn: DriverConnection) -> None:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(REFRESH_METRIC_DAILY.name))
        locked.set()
        await release.wait()

    holder = asyncio.create_task(owner.run_driver(hold_lock))
    await locked.wait()
    try:
        skipped = await run_job(saga_env, REFRESH_METRIC_DAILY)
    finally:
        release.set()
        await holder
    assert (skipped.claimed, sum(skipped.counts.values())) == (0, 0)
    assert await rollup_of(owner, [ana, bruno]) == expected

    await run_job(saga_env, REFRESH_METRIC_DAILY)
    assert await rollup_of(owner, [ana, bruno]) == expected_rollup(
        await raw_rows(owner, [ana, bruno])
    )
    assert (bruno, "heart_rate", second) in await rollup_of(owner, [bruno])


async def partitions_of(db: Database) -> set[str]:
    rows = await fetch(
        db,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::regclass",
        METRICS,
    )
    return {row["relname"] for row in rows}


async def month_start(db: Database, offset: int) -> date:
    """The first day of the month ``offset`` months from this one (UTC)."""
    value: date = await fetchval(
        db,
        "SELECT (date_trunc('month', now() AT TIME ZONE 'UTC') "
        "+ make_interval(months => $1))::date",
        offset,
    )
    return value


def partition_name(month: date) -> str:
    return f"health_metric_p{month:%Y%m}"


async def test_readings_past_retention_are_detached_then_dropped(
    saga_env: SagaEnvironment,
) -> None:
    owner = saga_env.database
    member = await owner.run_driver(create_user)
    await fetchval(owner, "SELECT shared.create_monthly_partitions($1::regclass, 4, 0)", METRICS)
    months = {offset: await month_start(owner, offset) for offset in range(-4, 1)}
    # One reading in the middle of each month, this one and the four before it.
    await record(
        owner,
        member,
        "weight",
        "kg",
        [(at(m.replace(day=10), 12), f"{80 + offset}.00") for offset, m in months.items()],
    )
    await run_job(saga_env, REFRESH_METRIC_DAILY)
    all_days = {m.replace(day=10) for m in months.values()}
    assert {key[2] for key in await rollup_of(owner, [member])} == all_days

    # Unset, the default: every month is kept.
    before = await partitions_of(owner)
    kept = await run_job(saga_env, PARTITION_MAINTENANCE)
    assert kept.counts["detached"] == 0
    assert await partitions_of(owner) == before
    assert {partition_name(m) for m in months.values()} <= before

    # Two months: a month's partition goes once it ended two months ago or more, so
    # the months three and four back go; two back ended less than two months ago.
    detached = await run_job(saga_env, PARTITION_MAINTENANCE, health_metrics_retention_months=2)
    expired = {partition_name(months[-4]), partition_name(months[-3])}
    assert detached.counts["detached"] == 2
    assert "dropped" not in detached.counts
    assert await partitions_of(owner) == before - expired
    for name in expired:
        # Kept as a table of its own, with its reading, for an operator to archive.
        assert await fetchval(owner, f"SELECT count(*) FROM health_journey.{name}") == 1
    remaining = await raw_rows(owner, [member])
    assert {r["recorded_at"].date() for r in remaining} == {
        months[o].replace(day=10) for o in (-2, -1, 0)
    }
    # The plain rollup is computed from the attached months: it follows at its refresh.
    await run_job(saga_env, REFRESH_METRIC_DAILY)
    assert await rollup_of(owner, [member]) == expected_rollup(remaining)

    # One month, dropped: the month two back goes with its reading; the months detached
    # before are no longer the table's and are left alone.
    dropped = await run_job(
        saga_env,
        PARTITION_MAINTENANCE,
        health_metrics_retention_months=1,
        health_metrics_retention_mode=PartitionExpiry.DROP,
    )
    assert (dropped.counts["detached"], dropped.counts["dropped"]) == (0, 1)
    gone = partition_name(months[-2])
    assert await fetchval(owner, "SELECT to_regclass($1)", f"health_journey.{gone}") is None
    assert await partitions_of(owner) == before - expired - {gone}
    for name in expired:
        assert await fetchval(owner, "SELECT to_regclass($1) IS NOT NULL", f"health_journey.{name}")
    assert {r["recorded_at"].date() for r in await raw_rows(owner, [member])} == {
        months[o].replace(day=10) for o in (-1, 0)
    }


async def test_saga_run_worker_once_applies_the_settings_without_a_broker(
    saga_env: SagaEnvironment,
) -> None:
    owner = saga_env.database
    member = await owner.run_driver(create_user)
    await fetchval(owner, "SELECT shared.create_monthly_partitions($1::regclass, 3, 0)", METRICS)
    old, recent = await month_start(owner, -3), await month_start(owner, 0)
    await record(owner, member, "steps", "steps", [(at(old, 12), "1000"), (at(recent, 12), "2000")])
    environment = {
        **saga_env.process_environment(),
        "KAFKA_BOOTSTRAP_SERVERS": "",
        "HEALTH_METRICS_RETENTION_MONTHS": "2",
        "HEALTH_METRICS_RETENTION_MODE": "drop",
    }

    def worker(job: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "saga", "run", "worker", "--once", "--job", job],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env=environment,
            check=False,
        )

    maintained = await asyncio.to_thread(worker, "partition_maintenance")
    assert maintained.returncode == 0, maintained.stderr
    name = f"health_journey.{partition_name(old)}"
    assert await fetchval(owner, "SELECT to_regclass($1)", name) is None
    refreshed = await asyncio.to_thread(worker, REFRESH_METRIC_DAILY.name)
    assert refreshed.returncode == 0, refreshed.stderr
    assert await rollup_of(owner, [member]) == {
        (member, "steps", recent): (1, Decimal(2000), Decimal(2000), Decimal(2000), Decimal(2000))
    }
