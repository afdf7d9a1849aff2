"""The reliability harness: a mixed load of the three cross-journey sagas over real
processes (a coordinator, the four journey services, the worker) on a broker of its own
and a database of its own, while faults strike; then the faults stop, the system drains,
the invariant check runs, and a :class:`Report` says what happened.

The short form runs in the test suite (tests/integration/test_reliability.py), the long
form from ``python -m benchmarks.reliability``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog
from sqlalchemy.engine import make_url

from benchmarks.reliability.faults import (
    BackendTerminator,
    Contention,
    DeadLetterCounter,
    Duplicator,
    PoisonInjector,
)
from benchmarks.reliability.load import FINISHED, prepare_mix
from benchmarks.reliability.process_faults import BrokerRestarter, PoolStarver, ProcessKiller
from benchmarks.reliability.processes import REPO_ROOT, Fleet, log_events
from benchmarks.reliability.report import Report
from benchmarks.reliability.reviews import Reviewer
from benchmarks.saga_bench.workload import Starter
from journeys.invariants import check_invariants
from saga.coordinator import Coordinator
from saga.embedded import EmbeddedBroker
from saga.errors import DatabaseUnavailable
from saga.outbox import RelaySettings
from saga.participant.journey import discover_journeys
from saga.settings import Settings, load_settings, to_plain_url
from saga.store import Database
from saga.transport import Topics

log = structlog.get_logger("reliability")
T = TypeVar("T")

COORDINATORS = ("coordinator",)
WORKERS = ("worker",)
BURST = 5  # sagas started together; bursts are spaced to keep to the rate


@dataclass(frozen=True)
class Faults:
    """Seconds between strikes of each fault kind (None: that kind is off)."""

    kill: float | None = 8.0
    broker_restart: float | None = 30.0
    broker_restart_first: float = 6.0
    pool_exhaustion: float | None = 20.0
    pool_exhaustion_window: float = 4.0
    backend_termination: float | None = 3.0
    contention: float | None = 0.5
    poison: float | None = 2.0
    duplicate_delivery: bool = True
    reorder_delay: float = 2.0


@dataclass(frozen=True)
class RunSettings:
    sagas: int
    rate: float = 30.0
    """Sagas started per second, while fewer than ``max_in_flight`` are unfinished."""
    max_in_flight: int = 300
    seed: int = 20261125
    faults: Faults = field(default_factory=Faults)
    drain_timeout: float = 300.0
    partitions: int = 4


class Injector(Protocol):
    injected: Counter[str]

    async def run(self, stop: asyncio.Event) -> None: ...


async def run_reliability(
    run: RunSettings, *, database_url: str, admin_url: str, logs: Path
) -> Report:
    """One run on the (migrated, seeded, otherwise empty) database at ``database_url``;
    process output goes to files under ``logs``."""
    started = time.monotonic()
    draw = random.Random(run.seed)
    with EmbeddedBroker() as broker:
        settings = load_settings(
            env_dir=REPO_ROOT,
            app_env="test",
            database_url=database_url,
            kafka_bootstrap_servers=broker.bootstrap_servers,
            kafka_topic_prefix=f"reliability.{uuid.uuid4().hex[:8]}",
            kafka_topic_partitions=run.partitions,
            kafka_session_timeout_ms=2000,
            kafka_heartbeat_interval_ms=500,
            database_pool_size=8,
        )
        fleet = Fleet(process_environment(settings), logs)
        try:
            return await _run(run, settings, fleet, broker, admin_url, draw, started)
        finally:
            fleet.stop_all()


def process_environment(settings: Settings) -> dict[str, str]:
    """What every engine process of the run is started with."""
    return {
        **os.environ,
        "APP_ENV": "test",
        "DATABASE_URL": settings.database_url or "",
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers or "",
        "KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
        "KAFKA_TOPIC_PARTITIONS": str(settings.kafka_topic_partitions),
        "KAFKA_SESSION_TIMEOUT_MS": str(settings.kafka_session_timeout_ms),
        "KAFKA_HEARTBEAT_INTERVAL_MS": str(settings.kafka_heartbeat_interval_ms),
        "DATABASE_POOL_SIZE": "8",
        "SHUTDOWN_TIMEOUT_SECONDS": "20",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
    }


async def _run(
    run: RunSettings,
    settings: Settings,
    fleet: Fleet,
    broker: EmbeddedBroker,
    admin_url: str,
    draw: random.Random,
    started: float,
) -> Report:
    journeys = sorted(discover_journeys())
    for name in COORDINATORS:
        fleet.add(name, "run", "coordinator")
    for journey in journeys:
        fleet.add(journey, "run", "participant", "--journey", journey)
    for name in WORKERS:
        fleet.add(name, "run", "worker")
    for name in fleet.processes:
        fleet.start(name)
    await fleet.wait_ready()
    # The harness's own pool: the load, the reviews, the polls and the final check.
    database = Database.from_settings(settings, application_name="reliability-harness")
    reviewer = Reviewer(database)
    starting = await prepare_mix(settings.database_url or "", run.sagas, reviewer)

    locks = {name: asyncio.Lock() for name in fleet.processes}
    injectors = build_injectors(run, settings, fleet, broker, admin_url, draw, locks, journeys)
    stop = asyncio.Event()
    # The dead-letter topic is read until the end, after the faults have stopped.
    dead_letters = DeadLetterCounter(
        settings.kafka_bootstrap_servers or "",
        Topics.from_settings(settings).dead_letter,
        session_timeout_ms=settings.kafka_session_timeout_ms,
    )
    counting_stop = asyncio.Event()
    counting = asyncio.create_task(dead_letters.run(counting_stop))
    ids: list[uuid.UUID] = []
    crashes: Counter[str] = Counter()
    try:
        async with _starter(settings, database) as coordinator:
            tasks = [asyncio.create_task(injector.run(stop)) for injector in injectors]
            await _joined(dead_letters, *injectors)
            watching = asyncio.create_task(_restart_crashed(fleet, locks, crashes, stop))
            load_started = time.monotonic()
            await start_load(coordinator, database, starting, ids, run)
            load_seconds = time.monotonic() - load_started
            stop.set()
            # Each injector ends its fault in hand (a killed process started again, a
            # starved one back to normal): from here on, nothing strikes.
            await asyncio.gather(*tasks)
            last_fault = time.monotonic()
            await watching
            for name in fleet.processes:
                if not fleet.running(name):
                    fleet.start(name)
            await fleet.wait_ready(within=120)
            drain_seconds = await drain(database, ids, last_fault, run.drain_timeout)
            await reviewer.finish()
        report = await check_invariants(database, saga_ids=ids, allow_parked=True)
        unfinished = await count_unfinished(database, ids)
        evidence = await evidence_from(injectors)
        evidence.update(await children_by_status(database, ids))
    finally:
        await database.dispose()
        # Letters written just before the drain ended are still on their way.
        await asyncio.sleep(2.0)
        counting_stop.set()
        await counting
    await stop_fleet(fleet)
    faults: Counter[str] = Counter()
    for injector in injectors:
        faults.update(injector.injected)
    evidence.update(evidence_from_logs(fleet))
    evidence.update({f"review {what}": n for what, n in reviewer.outcomes.items()})
    return Report(
        settings=asdict(run),
        sagas=len(ids),
        by_status=report.sagas_by_status,
        parked_reasons=dict(Counter(reason for _, reason in report.parked)),
        faults=dict(faults),
        dead_letters=dict(dead_letters.by_kind),
        effects=dict(report.effect_problems()),
        violations=report.violations,
        unfinished=unfinished,
        crashes=dict(crashes),
        load_seconds=load_seconds,
        drain_seconds=drain_seconds,
        total_seconds=time.monotonic() - started,
        evidence=dict(evidence),
    )


def build_injectors(
    run: RunSettings,
    settings: Settings,
    fleet: Fleet,
    broker: EmbeddedBroker,
    admin_url: str,
    draw: random.Random,
    locks: dict[str, asyncio.Lock],
    journeys: Sequence[str],
) -> list[Injector]:
    faults = run.faults
    found: list[Injector] = []
    if faults.kill is not None:
        found.append(
            ProcessKiller(
                fleet,
                coordinators=COORDINATORS,
                participants=journeys,
                workers=WORKERS,
                every=faults.kill,
                draw=random.Random(draw.random()),
                locks=locks,
            )
        )
    if faults.broker_restart is not None:
        found.append(
            BrokerRestarter(
                broker,
                every=faults.broker_restart,
                draw=random.Random(draw.random()),
                first=faults.broker_restart_first,
            )
        )
    if faults.pool_exhaustion is not None:
        found.append(
            PoolStarver(
                fleet,
                participants=journeys,
                every=faults.pool_exhaustion,
                window=faults.pool_exhaustion_window,
                draw=random.Random(draw.random()),
                locks=locks,
            )
        )
    topics = Topics.from_settings(settings)
    flowing = [*(topics.commands(journey) for journey in journeys), topics.replies]
    bootstrap = settings.kafka_bootstrap_servers or ""
    if faults.duplicate_delivery:
        found.append(
            Duplicator(
                bootstrap,
                flowing,
                draw=random.Random(draw.random()),
                reply_delay=(0.0, faults.reorder_delay),
                session_timeout_ms=settings.kafka_session_timeout_ms,
            )
        )
    if faults.poison is not None:
        found.append(
            PoisonInjector(
                bootstrap,
                flowing,
                settings.kafka_max_message_bytes,
                draw=random.Random(draw.random()),
                every=faults.poison,
            )
        )
    database_url = settings.database_url or ""
    if faults.backend_termination is not None:
        found.append(
            BackendTerminator(
                admin_url,
                make_url(database_url).database or "",
                draw=random.Random(draw.random()),
                every=faults.backend_termination,
            )
        )
    if faults.contention is not None:
        found.append(
            Contention(
                to_plain_url(database_url),
                draw=random.Random(draw.random()),
                every=faults.contention,
            )
        )
    return found


@contextlib.asynccontextmanager
async def _starter(settings: Settings, database: Database) -> AsyncIterator[Coordinator]:
    """A coordinator that only starts sagas (the fleet's coordinator drives them); its
    relay re-sends a start whose publish failed (the broker down) within a second."""
    async with Coordinator(
        settings=settings,
        database=database,
        relay=RelaySettings(interval=0.2, grace=1.0, lease=5.0),
    ) as coordinator:
        yield coordinator


async def start_load(
    coordinator: Coordinator,
    database: Database,
    starting: Sequence[Starter],
    ids: list[uuid.UUID],
    run: RunSettings,
) -> None:
    """Start every saga at ``run.rate`` a second in bursts, holding back while
    ``max_in_flight`` are unfinished (so a stalled system is not buried)."""
    pace = BURST / run.rate
    for first in range(0, len(starting), BURST):
        began = time.monotonic()
        while (  # noqa: ASYNC110 - polls the database
            await patiently(lambda: count_in_flight(database), "in flight") >= run.max_in_flight
        ):
            await asyncio.sleep(0.2)
        burst = starting[first : first + BURST]
        ids.extend(
            await asyncio.gather(
                *(patiently(functools.partial(start, coordinator), "start") for start in burst)
            )
        )
        await asyncio.sleep(max(0.0, pace - (time.monotonic() - began)))


async def patiently(call: Callable[[], Awaitable[T]], what: str) -> T:
    """``call()``, again while the database cannot be reached (the server's connection
    slots can run out while the faults restart processes): the harness must outlast what
    it does to the system. Starting a saga again is safe here because the harness's own
    connections are never terminated (the terminator picks ``saga-*`` ones only), so a
    start that failed never reached its commit."""
    deadline = time.monotonic() + 120
    while True:
        try:
            return await call()
        except DatabaseUnavailable as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("harness_database_unavailable", what=what, error=str(exc))
            await asyncio.sleep(0.5)


async def count_in_flight(database: Database) -> int:
    found = await database.run_driver(
        lambda conn: conn.fetchval(
            "SELECT count(*) FROM shared.saga_instance WHERE status IN ('running', 'compensating')"
        ),
        transaction=False,
        name="reliability.in_flight",
    )
    return int(found)


async def count_unfinished(database: Database, ids: Sequence[uuid.UUID]) -> int:
    found = await database.run_driver(
        lambda conn: conn.fetchval(
            # A parent waiting on a parked child waits for an operator, as parked does.
            "SELECT count(*) FROM shared.saga_instance i WHERE i.id = ANY($1::uuid[]) "
            "AND i.status::text <> ALL($2::text[]) AND NOT EXISTS ("
            "SELECT 1 FROM shared.saga_instance c WHERE c.parent_id = i.id "
            "AND c.id = (i.shape_state ->> 'child_id')::uuid AND c.status = 'parked')",
            list(ids),
            [*FINISHED, "parked"],
        ),
        transaction=False,
        name="reliability.unfinished",
    )
    return int(found)


async def children_by_status(database: Database, ids: Sequence[uuid.UUID]) -> dict[str, int]:
    """The child sagas the run's sagas started, by status: the load starts only parents,
    so this is what the report has to say of children (whose parents' coordinators the
    faults killed like any other)."""
    rows = await database.run_driver(
        lambda conn: conn.fetch(
            "SELECT status::text AS status, count(*) AS n FROM shared.saga_instance "
            "WHERE parent_id = ANY($1::uuid[]) GROUP BY status",
            list(ids),
        ),
        transaction=False,
        name="reliability.children",
    )
    return {f"child sagas {row['status']}": int(row["n"]) for row in rows}


async def drain(
    database: Database, ids: Sequence[uuid.UUID], last_fault: float, within: float
) -> float | None:
    """Seconds from the last fault until no saga is left running or compensating (None
    if that did not happen ``within`` seconds)."""
    deadline = time.monotonic() + within
    while await patiently(lambda: count_unfinished(database, ids), "unfinished") > 0:
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.25)
    return time.monotonic() - last_fault


async def _restart_crashed(
    fleet: Fleet, locks: dict[str, asyncio.Lock], crashes: Counter[str], stop: asyncio.Event
) -> None:
    """A process that exits while no fault holds it crashed by itself: counted (each is
    a bug the report shows) and restarted, so the run goes on."""
    while not stop.is_set():
        for name, lock in locks.items():
            if not lock.locked() and not fleet.running(name):
                crashes[name] += 1
                log.error("process_crashed", process=name)
                fleet.start(name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def stop_fleet(fleet: Fleet) -> None:
    """SIGTERM every process, participants last so replies in flight are answered."""
    order = [*WORKERS, *COORDINATORS]
    order += [name for name in fleet.processes if name not in order]
    for name in order:
        if fleet.running(name):
            await fleet.terminate(name, within=60)


async def _joined(*readers: Any, within: float = 30.0) -> None:
    """Until every injector that consumes (the duplicator, the dead-letter counter) has
    its partitions, so none misses the first messages of the load."""
    for reader in readers:
        ready = getattr(reader, "ready", None)
        if isinstance(ready, asyncio.Event):
            await asyncio.wait_for(ready.wait(), within)


async def evidence_from(injectors: Sequence[Injector]) -> Counter[str]:
    """What the database faults caused: the participants' serialization and deadlock
    re-runs, as the step log recorded them."""
    found: Counter[str] = Counter()
    for injector in injectors:
        if isinstance(injector, Contention):
            retries = await injector.participant_retries()
            await injector.close()
            found.update({f"participant_retries_{state}": n for state, n in retries.items()})
    return found


def evidence_from_logs(fleet: Fleet) -> dict[str, int]:
    """Signs in the processes' logs that the faults bit: commands retried for want of a
    pooled connection, units re-run after a lost connection or a conflict."""
    found: Counter[str] = Counter()
    for engine in fleet.processes.values():
        for event in log_events(engine.output_text()):
            name = event.get("event")
            if name in LOGGED_EVIDENCE:
                found[LOGGED_EVIDENCE[name]] += 1
    return dict(found)


# Log events that show a fault bit, and what the report calls them.
LOGGED_EVIDENCE = {
    "database_pool_exhausted": "units_waiting_out_an_exhausted_pool",
    "batch_abandoned": "batches_abandoned_at_a_stop",
    "child_end_found_by_check": "child_ends_lost_and_found_by_the_parents_look",
    "child_asked_again_to_compensate": "children_asked_again_to_compensate",
}
