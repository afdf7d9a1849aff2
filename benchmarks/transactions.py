"""How many short transactions per second the database layer commits, and what it costs
over raw asyncpg.

Each transaction is the shape of a saga transition: insert a step-log-like row, update an
instance-like row (optimistic version bump), insert an outbox-like row, commit. It runs
three ways, at several concurrency levels, each worker on its own rows: through
``Database.run`` (SQLAlchemy Core), through ``Database.run_driver`` (the asyncpg connection
from the same pool, with the same retries, translation and slow-query log), and through a
bare asyncpg pool as the floor.

    python -m benchmarks.transactions                       # embedded PostgreSQL
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python -m benchmarks.transactions

It creates a scratch database, prints a table, writes JSON to benchmarks/results/ and drops
the database. The figures are this machine's; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from saga.settings import load_settings, to_plain_url
from saga.store import Database, admin
from saga.store.driver import DriverConnection

SCHEMA = """
CREATE TABLE bench_instance (id uuid PRIMARY KEY, version int NOT NULL, step int NOT NULL);
CREATE TABLE bench_step_log (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(), instance_id uuid NOT NULL,
    step int NOT NULL, payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE bench_outbox (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(), instance_id uuid NOT NULL,
    payload jsonb NOT NULL, published_at timestamptz);
"""
LOG = "INSERT INTO bench_step_log (instance_id, step, payload) VALUES ($1, $2, $3)"
BUMP = "UPDATE bench_instance SET version = version + 1, step = $2 WHERE id = $1"
OUTBOX = "INSERT INTO bench_outbox (instance_id, payload) VALUES ($1, $2)"
PAYLOAD = json.dumps({"saga": "book_appointment", "step": "authorize", "amount_cents": 25000})


@dataclass
class Result:
    driver: str
    concurrency: int
    transactions: int
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(
    url: str,
    concurrency: int,
    per_worker: int,
    transaction: Callable[[uuid.UUID, int], Awaitable[None]],
) -> tuple[float, list[float]]:
    """``concurrency`` workers, each advancing an instance row of its own ``per_worker``
    times; returns the wall time and each transaction's latency in milliseconds."""
    latencies: list[float] = []

    async def worker(instance: uuid.UUID) -> None:
        for step in range(per_worker):
            started = time.perf_counter()
            await transaction(instance, step)
            latencies.append((time.perf_counter() - started) * 1000)

    instances = await seed_instances(url, concurrency)
    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in instances))
    return time.perf_counter() - started, latencies


async def seed_instances(url: str, count: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    conn = await asyncpg.connect(to_plain_url(url))
    try:
        await conn.executemany("INSERT INTO bench_instance VALUES ($1, 1, 0)", [(i,) for i in ids])
    finally:
        await conn.close()
    return ids


async def run_saga_layer(url: str, concurrency: int, per_worker: int) -> Result:
    settings = load_settings(database_pool_size=concurrency, database_log_queries=False)
    database = Database.from_settings(settings, url=url, application_name="bench")
    log = text(LOG.replace("$1", ":i").replace("$2", ":s").replace("$3", "CAST(:p AS jsonb)"))
    bump = text(BUMP.replace("$1", ":i").replace("$2", ":s"))
    outbox = text(OUTBOX.replace("$1", ":i").replace("$2", "CAST(:p AS jsonb)"))

    async def transaction(instance: uuid.UUID, step: int) -> None:
        async def unit(conn: AsyncConnection) -> None:
            await conn.execute(log, {"i": instance, "s": step, "p": PAYLOAD})
            await conn.execute(bump, {"i": instance, "s": step})
            await conn.execute(outbox, {"i": instance, "p": PAYLOAD})

        await database.run(unit, name="transition")

    try:
        await drive(url, concurrency, 20, transaction)  # warm the pool and statement caches
        seconds, latencies = await drive(url, concurrency, per_worker, transaction)
    finally:
        await database.dispose()
    return summarize("saga.store run (SQLAlchemy Core)", concurrency, seconds, latencies)


async def run_driver_layer(url: str, concurrency: int, per_worker: int) -> Result:
    settings = load_settings(database_pool_size=concurrency, database_log_queries=False)
    database = Database.from_settings(settings, url=url, application_name="bench")

    async def transaction(instance: uuid.UUID, step: int) -> None:
        async def unit(conn: DriverConnection) -> None:
            await conn.execute(LOG, instance, step, PAYLOAD)
            await conn.execute(BUMP, instance, step)
            await conn.execute(OUTBOX, instance, PAYLOAD)

        await database.run_driver(unit, name="transition")

    try:
        await drive(url, concurrency, 20, transaction)
        seconds, latencies = await drive(url, concurrency, per_worker, transaction)
    finally:
        await database.dispose()
    return summarize("saga.store run_driver (asyncpg)", concurrency, seconds, latencies)


async def run_asyncpg(url: str, concurrency: int, per_worker: int) -> Result:
    pool = await asyncpg.create_pool(to_plain_url(url), min_size=concurrency, max_size=concurrency)

    async def transaction(instance: uuid.UUID, step: int) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(LOG, instance, step, PAYLOAD)
            await conn.execute(BUMP, instance, step)
            await conn.execute(OUTBOX, instance, PAYLOAD)

    try:
        await drive(url, concurrency, 20, transaction)
        seconds, latencies = await drive(url, concurrency, per_worker, transaction)
    finally:
        await pool.close()
    return summarize("raw asyncpg pool", concurrency, seconds, latencies)


def summarize(driver: str, concurrency: int, seconds: float, latencies: list[float]) -> Result:
    return Result(
        driver=driver,
        concurrency=concurrency,
        transactions=len(latencies),
        seconds=round(seconds, 3),
        per_second=round(len(latencies) / seconds, 1),
        p50_ms=round(statistics.median(latencies), 2),
        p99_ms=round(percentile(latencies, 0.99), 2),
    )


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    settings = load_settings()
    with contextlib.ExitStack() as stack:
        if settings.database_url is None:
            from saga.embedded import EmbeddedPostgres

            admin_url = stack.enter_context(EmbeddedPostgres()).url("postgres")
        else:
            admin_url = settings.database_url
        name = f"bench_{uuid.uuid4().hex[:8]}"
        url = asyncio.run(admin.create_database(admin_url, name))
        try:
            asyncio.run(admin.execute_on(url, SCHEMA))
            yield url
        finally:
            asyncio.run(admin.drop_database(admin_url, name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--transactions", type=int, default=4000, help="per concurrency level")
    args = parser.parse_args()
    results: list[Result] = []
    with scratch_database() as url:
        for concurrency in args.concurrency:
            per_worker = max(1, args.transactions // concurrency)
            for runner in (run_asyncpg, run_driver_layer, run_saga_layer):
                results.append(asyncio.run(runner(url, concurrency, per_worker)))
    header = f"{'path':34} {'conc':>5} {'tx':>6} {'tx/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.driver:34} {r.concurrency:>5} {r.transactions:>6} {r.per_second:>8} "
            f"{r.p50_ms:>8} {r.p99_ms:>8}"
        )
    out = Path(__file__).parent / "results" / "transactions.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps([asdict(r) for r in results], indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
