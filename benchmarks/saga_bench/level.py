"""One level: a fresh broker and database, the workload's services, the warm-up and the
measured closed loop, the workload's check; everything stopped and dropped on the way
out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import psutil

from benchmarks.saga_bench.constants import IDLE_TIMEOUT_MS, REPO_ROOT
from benchmarks.saga_bench.database import (
    backends_of,
    database_counters,
    free_connections,
    level_database,
)
from benchmarks.saga_bench.loop import Watcher, closed_loop, warm_up
from benchmarks.saga_bench.measure import CpuSnapshot, Measured, idle_cpu_percent, summarize
from benchmarks.saga_bench.options import Options, poll_interval, pool_for
from benchmarks.saga_bench.processes import (
    Services,
    broker_pid,
    peak_rss_mb,
    service_env,
    start_services,
)
from benchmarks.saga_bench.results import LevelResult
from benchmarks.saga_bench.topics import count_messages, end_offsets
from benchmarks.saga_bench.workload import Starter, Workload
from saga.coordinator import Coordinator
from saga.embedded import EmbeddedBroker
from saga.settings import Settings, load_settings, to_plain_url
from saga.store import Database


def driver_settings(
    url: str, pool: int, broker: EmbeddedBroker, prefix: str, options: Options
) -> Settings:
    overrides: dict[str, Any] = {
        "database_url": url,
        "database_pool_size": pool,
        "database_max_overflow": 0,
        "database_idle_timeout": IDLE_TIMEOUT_MS,
        "database_log_queries": False,
        "kafka_bootstrap_servers": broker.bootstrap_servers,
        "kafka_topic_prefix": prefix,
    }
    if options.fetch_max_wait_ms is not None:
        overrides["kafka_fetch_max_wait_ms"] = options.fetch_max_wait_ms
    if options.partitions is not None:
        overrides["kafka_topic_partitions"] = options.partitions
    return load_settings(env_dir=REPO_ROOT, **overrides)


async def measured_run(
    coordinator: Coordinator,
    watcher: Watcher,
    starts: Sequence[Starter],
    level: int,
    *,
    pids: dict[str, int | None],
    lookups: asyncpg.Connection,
    database_name: str,
    postmaster: int,
    bootstrap: str,
    prefix: str,
) -> Measured:
    """The closed loop over ``starts``, with every counter read before and after. The
    rows and the polls' total are the caller's to fill in."""
    messages_before = await end_offsets(bootstrap, prefix)
    polls_before = watcher.polls
    backends = await backends_of(lookups, database_name)
    cpu_before = CpuSnapshot.take(pids, postmaster, backends)
    started = time.perf_counter()
    ids, problems = await closed_loop(coordinator, watcher, starts, level)
    driver_seconds = time.perf_counter() - started
    backends = await backends_of(lookups, database_name)
    cpu_after = CpuSnapshot.take(pids, postmaster, backends)
    polls = watcher.polls - polls_before
    messages_after = await end_offsets(bootstrap, prefix)
    peak = {proc: peak_rss_mb(pid) if pid else None for proc, pid in pids.items()}
    counted = await count_messages(bootstrap, prefix, {str(saga_id) for saga_id in ids})
    return Measured(
        ids=ids,
        rows=[],
        problems=problems,
        driver_seconds=driver_seconds,
        polls=polls,
        polls_total=watcher.polls,
        messages_before=messages_before,
        messages_after=messages_after,
        messages_counted=counted,
        cpu_before=cpu_before,
        cpu_after=cpu_after,
        peak_rss=peak,
        pids=pids,
        own_statements=2,  # the two reads of the backends
    )


async def drive(
    level: int,
    workload: Workload,
    starts: Sequence[Starter],
    *,
    url: str,
    database_name: str,
    broker: EmbeddedBroker,
    prefix: str,
    pool: int,
    services: Services,
    options: Options,
) -> Measured:
    settings = driver_settings(url, pool, broker, prefix, options)
    database = Database.from_settings(settings, application_name="bench-driver")
    # One connection polls for finished sagas, another does every other look-up.
    conn = await asyncpg.connect(to_plain_url(url))
    lookups = await asyncpg.connect(
        to_plain_url(url), server_settings={"application_name": "bench-driver-lookups"}
    )
    own = 1
    postmaster = psutil.Process(await lookups.fetchval("SELECT pg_backend_pid()")).ppid()
    watcher = Watcher(
        conn,
        poll_interval(level, options),
        stall_after=options.stall_seconds,
        health=services.check_alive,
    )
    watching = asyncio.create_task(watcher.run())
    try:
        async with Coordinator(
            settings=settings, database=database, bootstrap_servers=broker.bootstrap_servers
        ) as coordinator:
            for definition in workload.definitions:
                await coordinator.register(definition)
            await warm_up(coordinator, watcher, starts[: options.warmup])
            pids: dict[str, int | None] = {
                **services.pids(),
                "driver": os.getpid(),
                "broker": broker_pid(broker),
            }
            measured = await measured_run(
                coordinator,
                watcher,
                starts[options.warmup :],
                level,
                pids=pids,
                lookups=lookups,
                database_name=database_name,
                postmaster=postmaster,
                bootstrap=broker.bootstrap_servers,
                prefix=prefix,
            )
        measured.rows = await lookups.fetch(
            "SELECT id, definition_name, status, started_at, finished_at, updated_at, error "
            "FROM shared.saga_instance WHERE id = ANY($1::uuid[])",
            measured.ids,
        )
        measured.own_statements += own + 1
        measured.polls_total = watcher.polls
        if level == 1 and options.idle_seconds > 0:
            watching.cancel()  # its polls are the benchmark's, not the stack's
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            quiet = {name: pid for name, pid in measured.pids.items() if name != "driver"}
            measured.idle_cpu_percent = await idle_cpu_percent(
                quiet, postmaster, options.idle_seconds
            )
        return measured
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watching
        await conn.close()
        await lookups.close()
        await database.dispose()


def run_level(
    level: int, count: int, workload: Workload, options: Options, admin_url: str
) -> LevelResult:
    """One level on a fresh broker and a fresh database; everything is stopped and
    dropped on the way out, whatever happens."""
    commands = workload.commands(level)
    if options.with_worker:
        commands["worker"] = ["saga", "run", "worker"]
    pool = pool_for(level, options, len(commands) + 1)  # and the driver's
    wanted = pool * (len(commands) + 1) + 4  # the driver's own connections, the check
    free = asyncio.run(free_connections(admin_url))
    if wanted > free:
        # A process refused a connection stops (the engine does not wait for one).
        print(
            f"  warning: the benchmark may open {wanted} connections, the server has "
            f"{free} free (others are using it); --pool lowers the pools",
            flush=True,
        )
    name = f"bench_sagas_{uuid.uuid4().hex[:8]}"
    prefix = f"bench.{uuid.uuid4().hex[:8]}"
    services = Services()
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker())
        url = stack.enter_context(level_database(admin_url, name, level, options))
        starts = workload.prepare(url, level, options.warmup + count)
        commits_before, rollbacks_before, own_before = asyncio.run(database_counters(url, name))
        stack.callback(services.stop)
        start_services(
            services,
            level,
            commands,
            service_env(url, broker.bootstrap_servers, prefix, pool, options),
            options,
        )
        measured = asyncio.run(
            drive(
                level,
                workload,
                starts,
                url=url,
                database_name=name,
                broker=broker,
                prefix=prefix,
                pool=pool,
                services=services,
                options=options,
            )
        )
        stops = services.stop()
        commits_after, rollbacks_after, _ = asyncio.run(database_counters(url, name))
        # Checked once the services are gone and the counters read: costs no figure.
        verdict = asyncio.run(workload.verify(url, measured.ids))
        measured.problems += verdict.problems
        # Less the benchmark's own statements: its polls, its look-ups, the first read.
        commits = (
            commits_after
            - commits_before
            - measured.polls_total
            - measured.own_statements
            - own_before
        )
        result = summarize(
            level,
            measured,
            warmup=options.warmup,
            pool=pool,
            commits=commits,
            rollbacks=rollbacks_after - rollbacks_before,
            stops=stops,
            logs=services.logs,
            expected_compensated=workload.expected_compensated(len(measured.ids)),
        )
        result.invariants = verdict.invariants
        result.idle_cpu_percent = measured.idle_cpu_percent
        result.poll_ms = poll_interval(level, options) * 1000
        return result
    raise AssertionError("unreachable")  # ExitStack does not swallow exceptions
