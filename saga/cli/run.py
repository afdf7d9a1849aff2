"""``saga run coordinator|participant|worker|all``: long-running engine processes, stopped
by SIGTERM or SIGINT.

Each serves ``/metrics``, ``/live`` and ``/ready`` on METRICS_PORT (:mod:`saga.health`).
On the signal it reports not ready, stops taking work, lets the batch in hand finish,
sends what is due in its outbox, records what it published and exits 0, all within
SHUTDOWN_TIMEOUT_SECONDS (else it exits 1). Whatever it had not finished is redelivered to
another member of its consumer group (or to itself when restarted): nothing is lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog

from saga.coordinator import Coordinator
from saga.errors import ConfigurationError
from saga.health import Health, serve_endpoints
from saga.logging import configure_logging
from saga.participant.journey import discover_journeys, journey_named
from saga.patience import UntilTheBrokerIsBack
from saga.runtime import MessagingRuntime
from saga.settings import Settings, load_settings
from saga.stack import RunningServices, running_services
from saga.store import Database
from saga.tracing import traced
from saga.transport.reachability import BrokerReachability
from saga.worker.scheduler import Worker, build_schedule, installed_jobs

log = structlog.get_logger("saga.cli")


def add_parser(commands: Any) -> None:
    run = commands.add_parser("run", help="run an engine process until SIGTERM")
    sub = run.add_subparsers(dest="process", required=True, metavar="PROCESS")
    coordinator = sub.add_parser("coordinator", help="drive sagas from their replies")
    coordinator.add_argument(
        "--concurrency", type=int, default=128, help="sagas handled at once (default 128)"
    )
    coordinator.set_defaults(handler=_coordinator)
    participant = sub.add_parser(
        "participant", help="serve one journey's step commands as its database role"
    )
    participant.add_argument(
        "--journey", required=True, help="the journey service to run (care, plan, ...)"
    )
    participant.add_argument(
        "--concurrency", type=int, default=64, help="commands handled at once (default 64)"
    )
    participant.set_defaults(handler=_participant)
    worker = sub.add_parser(
        "worker",
        help="time out stuck steps, clean up orphans, apply retention (several may run)",
    )
    worker.add_argument(
        "--once",
        action="store_true",
        help="run each job's batches once and exit (for cron or a one-off clean-up)",
    )
    worker.add_argument(
        "--job",
        action="append",
        metavar="NAME",
        help="run only this job (repeatable); default: every job not disabled",
    )
    worker.add_argument(
        "--list", action="store_true", help="print the jobs with their schedules and exit"
    )
    worker.set_defaults(handler=_worker)
    everything = sub.add_parser(
        "all",
        help="the coordinator, every installed journey's participant and the worker in one "
        "process (a small deployment; each journey still logs in as its own role)",
    )
    everything.set_defaults(handler=_all)


def _coordinator(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings)

    async def main() -> int:
        health = Health("coordinator")
        database = Database.from_settings(settings, application_name="saga-coordinator")
        coordinator = Coordinator(
            settings=settings, database=database, max_concurrency=args.concurrency
        )
        health.require("coordinator", lambda: _consuming(coordinator.runtime))
        try:
            async with _probes(settings, health):
                # The sagas the installed journey services start are known before any reply.
                for journey in discover_journeys().values():
                    for definition in journey.definitions:
                        await coordinator.register(definition)
                return await _serve(settings, health, coordinator.run, coordinator.stop)
        finally:
            await database.dispose()

    with traced(settings, "saga-coordinator"):
        return asyncio.run(main())


def _participant(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings)
    journey = journey_named(args.journey)
    if settings.database_url is None:
        raise ConfigurationError("`saga run participant` needs DATABASE_URL")

    async def main() -> int:
        health = Health(f"participant-{journey.name}")
        database = Database.from_settings(
            settings,
            url=journey.database_url(settings.database_url or ""),
            application_name=f"saga-participant-{journey.name}",
        )
        participant = journey.participant(
            settings=settings, database=database, max_concurrency=args.concurrency
        )
        health.require(journey.name, lambda: _consuming(participant.runtime))
        log.info(
            "participant_starting",
            journey=journey.name,
            database_role=journey.database_role,
            actions=sorted(participant.actions),
        )
        try:
            async with _probes(settings, health):
                return await _serve(settings, health, participant.run, participant.stop)
        finally:
            await database.dispose()

    with traced(settings, f"saga-{journey.name}"):
        return asyncio.run(main())


def _worker(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings)
    schedule = build_schedule(installed_jobs(list(discover_journeys().values())), settings)
    if args.job:
        unknown = sorted(set(args.job) - set(schedule))
        if unknown:
            raise ConfigurationError(
                f"no worker job named {', '.join(unknown)} (jobs: {', '.join(sorted(schedule))})"
            )
        schedule = {name: schedule[name] for name in args.job}
    if args.list:
        for name, scheduled in schedule.items():
            sends = " (sends through the broker)" if scheduled.job.sends else ""
            print(
                f"{name:<28} every {scheduled.interval:g} s, batch {scheduled.batch}{sends}: "
                f"{scheduled.job.description}"
            )
        return 0
    if settings.database_url is None:
        raise ConfigurationError("`saga run worker` needs DATABASE_URL")

    async def main() -> int:
        database = Database.from_settings(settings, application_name="saga-worker")
        try:
            worker = Worker(settings=settings, database=database)
            worker.schedule = schedule
            if args.once:
                try:
                    for name in schedule:
                        await worker.run_job(name)
                finally:
                    await worker.close()
                return 0
            health = Health("worker")
            health.require("worker", lambda: worker.running)
            sends = any(scheduled.job.sends for scheduled in schedule.values())
            async with _probes(settings, health, broker=sends):
                return await _serve(settings, health, worker.run, worker.stop)
        finally:
            await database.dispose()

    with traced(settings, "saga-worker"):
        return asyncio.run(main())


def _all(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings)
    if settings.database_url is None or settings.kafka_bootstrap_servers is None:
        raise ConfigurationError("`saga run all` needs DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS")
    database_url, bootstrap_servers = settings.database_url, settings.kafka_bootstrap_servers
    journeys = list(discover_journeys().values())

    async def main() -> int:
        health = Health("all")
        async with (
            _probes(settings, health),
            running_services(
                settings,
                database_url=database_url,
                bootstrap_servers=bootstrap_servers,
                journeys=journeys,
                patient=True,
            ) as services,
        ):
            worker = Worker(settings=settings, database=services.database, journeys=journeys)
            worker_stopped = asyncio.Event()
            health.require("coordinator and participants", services.ready)
            health.require("worker", lambda: worker.running)

            async def stop() -> None:
                # The worker first: it writes through the pools the services' stop closes.
                await worker.stop()
                await worker_stopped.wait()
                await services.stop()

            return await _serve(
                settings,
                health,
                lambda: _worker_beside(services, worker, worker_stopped),
                stop,
            )

    with traced(settings, "saga"):
        return asyncio.run(main())


async def _worker_beside(services: RunningServices, worker: Worker, stopped: asyncio.Event) -> None:
    """Run the worker until it is stopped; a service that fails meanwhile ends the process
    (its orchestrator restarts it) instead of leaving the others running without it."""
    running = asyncio.ensure_future(worker.run())
    try:
        while not running.done():
            failed = services.failed()
            if failed:
                name, error = failed[0]
                await worker.stop()
                await running
                raise ConfigurationError(f"{name} stopped: {error}") from error
            await asyncio.wait({running}, timeout=1.0)
        running.result()
    finally:
        stopped.set()


def _consuming(runtime: MessagingRuntime) -> bool:
    return runtime.consumer is not None and runtime.consumer.ready.is_set()


@contextlib.asynccontextmanager
async def _probes(
    settings: Settings, health: Health, *, broker: bool = True
) -> AsyncIterator[None]:
    """Answer /live and /ready (and serve /metrics) from the start: a process that is
    still connecting is alive but not ready. With ``broker`` (the process needs one),
    /ready also requires that the broker has answered within BROKER_UNREACHABLE_SECONDS."""
    async with contextlib.AsyncExitStack() as stack:
        if broker and settings.kafka_bootstrap_servers and settings.broker_unreachable_seconds:
            reachability = await stack.enter_async_context(
                BrokerReachability(settings.kafka_bootstrap_servers).watching()
            )
            limit = settings.broker_unreachable_seconds
            health.require("broker", lambda: reachability.unreachable_for() < limit)
            health.tell(
                "broker_unreachable_seconds", lambda: round(reachability.unreachable_for(), 1)
            )
        await stack.enter_async_context(_endpoints(settings, health))
        yield


@contextlib.asynccontextmanager
async def _endpoints(settings: Settings, health: Health) -> AsyncIterator[None]:
    if settings.metrics_port is not None:
        try:
            server = serve_endpoints(settings.metrics_port, health)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve /metrics, /live and /ready on METRICS_PORT="
                f"{settings.metrics_port}: {exc.strerror or exc}"
            ) from exc
        log.info(
            "endpoints_serving", port=server.server_port, paths=["/metrics", "/live", "/ready"]
        )
    beating = asyncio.ensure_future(health.heartbeat())
    try:
        yield
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


async def _serve(
    settings: Settings,
    health: Health,
    work: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
) -> int:
    """Run ``work()`` until it ends or a signal stops it, starting it again while the
    broker cannot be reached; the process's exit code: 0, or 1 when the shutdown ran out
    of time."""
    patient = UntilTheBrokerIsBack(health.process, work, stop)
    stopped = await until_signalled(
        patient.run(),
        patient.stop,
        timeout=settings.shutdown_timeout_seconds,
        on_signal=health.stopping,
    )
    return 0 if stopped else 1


async def until_signalled(
    work: Awaitable[None],
    stop: Callable[[], Awaitable[None]],
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - a shutdown budget, not a call timeout
    on_signal: Callable[[], None] | None = None,
) -> bool:
    """Run ``work`` until it ends or SIGTERM/SIGINT arrives; then call ``on_signal``, await
    ``stop()`` and the end of ``work``. Returns False when that took longer than
    ``timeout`` seconds: the work is then cancelled (what it held is redelivered)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    running = asyncio.ensure_future(work)
    signalled = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait([running, signalled], return_when=asyncio.FIRST_COMPLETED)
        if not signalled.done():
            await running
            return True
        log.info("stopping_on_signal", timeout_seconds=timeout)
        if on_signal is not None:
            on_signal()
        started = loop.time()
        shutdown = asyncio.ensure_future(_stop_then_wait(stop, running))
        done, _ = await asyncio.wait([shutdown], timeout=timeout)
        if not done:
            log.error("shutdown_timed_out", timeout_seconds=timeout)
            for task in (shutdown, running):
                task.cancel()
            await asyncio.wait([shutdown, running])
            return False
        shutdown.result()
        log.info("stopped", seconds=round(loop.time() - started, 3))
        return True
    finally:
        signalled.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await signalled
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _stop_then_wait(
    stop: Callable[[], Awaitable[None]], running: asyncio.Future[None]
) -> None:
    await stop()
    await running
