"""Running the worker's jobs, each on its own schedule, until stopped.

::

    worker = Worker(settings=settings, database=database)
    await worker.run()          # every job on its schedule, until stop()
    await worker.run_job("step_timeouts")  # or one job's batches now (tests, --once)

A job runs one batch per call; a full batch is followed by the next at once (up to
WORKER_MAX_BATCHES_PER_RUN, so one backlog cannot starve the other jobs), a short one ends
the run until the job's interval has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from saga import metrics
from saga.coordinator.service import COORDINATOR_OUTBOX
from saga.errors import ConfigurationError, SagaError
from saga.operator.waiting_monitor import WaitingMonitor
from saga.outbox import OutboxMonitor, OutboxPublisher
from saga.participant.journey import JourneyService, discover_journeys
from saga.runtime import resolve_transport
from saga.settings import Settings, parse_schedule
from saga.store.database import Database
from saga.transport.port import MessageSender, Transport
from saga.worker.definitions import DefinitionCache
from saga.worker.job import Job, JobContext

log = structlog.get_logger("saga.worker")


@dataclass(frozen=True, slots=True)
class ScheduledJob:
    job: Job
    interval: float
    batch: int


@dataclass(slots=True)
class JobReport:
    """What one run of a job (its batches back to back) did."""

    job: str
    batches: int = 0
    claimed: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def build_schedule(jobs: Sequence[Job], settings: Settings) -> dict[str, ScheduledJob]:
    """The jobs to run, with WORKER_SCHEDULE's overrides applied and WORKER_DISABLED_JOBS
    left out; a name in either that no job has is a configuration error."""
    by_name: dict[str, Job] = {}
    for job in jobs:
        if job.name in by_name:
            raise ConfigurationError(f"two worker jobs are named {job.name!r}")
        by_name[job.name] = job
    overrides = parse_schedule(settings.worker_schedule)
    disabled = {name.strip() for name in settings.worker_disabled_jobs.split(",") if name.strip()}
    for variable, names in (("WORKER_SCHEDULE", overrides), ("WORKER_DISABLED_JOBS", disabled)):
        unknown = sorted(set(names) - set(by_name))
        if unknown:
            raise ConfigurationError(
                f"{variable} names no job called {', '.join(unknown)} "
                f"(jobs: {', '.join(sorted(by_name))})"
            )
    schedule = {}
    for name, job in by_name.items():
        if name in disabled:
            continue
        interval, batch = overrides.get(name, (job.interval, None))
        schedule[name] = ScheduledJob(job, interval, batch or job.batch)
    return schedule


def installed_jobs(journeys: Sequence[JourneyService]) -> list[Job]:
    """The engine's jobs and every installed journey's own."""
    from saga.worker.jobs import ENGINE_JOBS

    return [*ENGINE_JOBS, *(job for journey in journeys for job in journey.maintenance)]


class Worker:
    def __init__(
        self,
        *,
        settings: Settings,
        database: Database,
        journeys: Sequence[JourneyService] | None = None,
        jobs: Sequence[Job] | None = None,
        bootstrap_servers: str | None = None,
        name: str = "worker",
        transport: Transport | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.journeys = list(discover_journeys().values() if journeys is None else journeys)
        self.schedule = build_schedule(
            installed_jobs(self.journeys) if jobs is None else jobs, settings
        )
        self._broker = (bootstrap_servers, transport)
        self._name = name
        # Connected at start, and only when a scheduled job sends (Job.sends).
        self.producer: MessageSender | None = None
        self.publisher: OutboxPublisher | None = None
        # The worker re-sends every outbox's forgotten rows, so it watches them all.
        self.monitor = OutboxMonitor(
            database,
            list(
                dict.fromkeys(
                    [COORDINATOR_OUTBOX, *(journey.tables.outbox for journey in self.journeys)]
                )
            ),
        )
        self.waiting = WaitingMonitor(database)
        self.definitions = DefinitionCache(database)
        self._stopping = asyncio.Event()
        self._started = False

    async def start(self) -> None:
        if not self._started:
            self._connect()
            if self.producer is not None:
                await self.producer.start()
            self._started = True

    def _connect(self) -> None:
        sending = sorted(name for name, s in self.schedule.items() if s.job.sends)
        if not sending or self.producer is not None:
            return
        bootstrap_servers, transport = self._broker
        try:
            self.producer = resolve_transport(self.settings, bootstrap_servers, transport).sender(
                client_id=f"{self.settings.kafka_client_id}-{self._name}"
            )
        except ConfigurationError as exc:
            which = (
                f"the job {sending[0]} sends"
                if len(sending) == 1
                else (f"the jobs {', '.join(sending)} send")
            )
            raise ConfigurationError(
                f"{exc}; {which} through the broker (without one, run only the jobs that "
                "need just the database: --job NAME, see --list)"
            ) from None
        self.publisher = OutboxPublisher(self.database, self.producer, COORDINATOR_OUTBOX)

    @property
    def running(self) -> bool:
        """Its jobs are running and it has not been asked to stop."""
        return self._started and not self._stopping.is_set()

    async def stop(self) -> None:
        """Let each job finish the batch in hand, record what was published, disconnect."""
        self._stopping.set()

    async def close(self) -> None:
        if self._started:
            try:
                if self.publisher is not None:
                    await self.publisher.close()
            finally:
                if self.producer is not None:
                    await self.producer.stop()
            self._started = False

    async def run(self) -> None:
        """Run every scheduled job until :meth:`stop`."""
        await self.start()
        log.info(
            "worker_started",
            jobs={name: f"{s.interval:g}s/{s.batch}" for name, s in self.schedule.items()},
        )
        try:
            async with asyncio.TaskGroup() as group:
                for name in self.schedule:
                    group.create_task(self._loop(name), name=f"worker-{name}")
                sampling = group.create_task(self.monitor.run(), name="worker-outbox-monitor")
                counting = group.create_task(self.waiting.run(), name="worker-waiting-monitor")
                # The jobs end when stop() is called; the samplers run until they have.
                await self._stopping.wait()
                sampling.cancel()
                counting.cancel()
        finally:
            await self.close()
            log.info("worker_stopped")

    async def run_job(self, name: str) -> JobReport:
        """Run one job's batches now: until one is not full, or WORKER_MAX_BATCHES_PER_RUN."""
        if name not in self.schedule:
            raise ConfigurationError(
                f"no worker job named {name!r} is scheduled "
                f"(jobs: {', '.join(sorted(self.schedule))})"
            )
        await self.start()
        scheduled = self.schedule[name]
        report = JobReport(name)
        context = JobContext(
            settings=self.settings,
            database=self.database,
            journeys=self.journeys,
            batch=scheduled.batch,
            publisher=self.publisher,
            producer=self.producer,
            definitions=self.definitions,
        )
        started = time.perf_counter()
        metrics.JOB_RUNS.labels(name).inc()
        try:
            with structlog.contextvars.bound_contextvars(job=name):
                while report.batches < self.settings.worker_max_batches_per_run:
                    result = await scheduled.job.run(context)
                    # What the batch committed to the coordinator's outbox goes out now.
                    if self.publisher is not None:
                        await self.publisher.flush()
                    report.batches += 1
                    report.claimed += result.claimed
                    report.counts.update(result.counts)
                    if (
                        result.claimed < scheduled.batch
                        or not scheduled.job.repeat_when_full
                        or self._stopping.is_set()
                    ):
                        break
        finally:
            report.seconds = time.perf_counter() - started
            metrics.JOB_SECONDS.labels(name).observe(report.seconds)
            for what, count in report.counts.items():
                metrics.JOB_ROWS.labels(name, what).inc(count)
        if report.claimed or any(report.counts.values()):
            log.info(
                "job_ran",
                job=name,
                batches=report.batches,
                claimed=report.claimed,
                seconds=round(report.seconds, 3),
                **{what: count for what, count in sorted(report.counts.items())},
            )
        return report

    async def _loop(self, name: str) -> None:
        interval = self.schedule[name].interval
        while not self._stopping.is_set():
            try:
                await self.run_job(name)
            except SagaError as exc:
                metrics.JOB_FAILURES.labels(name).inc()
                level = log.warning if exc.retriable else log.error
                level("job_failed", job=name, error=str(exc), error_type=type(exc).__name__)
            except Exception:
                # One job's bug must not stop the others: it is logged, counted, and
                # tried again at its next turn.
                metrics.JOB_FAILURES.labels(name).inc()
                log.exception("job_crashed", job=name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
