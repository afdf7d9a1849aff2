"""``saga run coordinator|participant|worker``: long-running engine processes, stopped by
SIGTERM or SIGINT.

On the signal it stops taking replies, lets the batch in hand finish, records what it
published and exits 0; whatever it had not finished is redelivered to another member of
its consumer group (or to itself when restarted).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

import structlog

from saga.coordinator import Coordinator
from saga.errors import ConfigurationError
from saga.logging import configure_logging
from saga.metrics import serve_metrics
from saga.participant.journey import discover_journeys, journey_named
from saga.settings import Settings, load_settings
from saga.store import Database
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


def _coordinator(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings)

    async def main() -> None:
        _serve_metrics(settings)
        database = Database.from_settings(settings, application_name="saga-coordinator")
        coordinator = Coordinator(
            settings=settings, database=database, max_concurrency=args.concurrency
        )
        try:
            # The sagas the installed journey services start are known before any reply.
            for journey in discover_journeys().values():
                for definition in journey.definitions:
                    await coordinator.register(definition)
            await until_signalled(coordinator.run(), coordinator.stop)
        finally:
            await database.dispose()

    asyncio.run(main())
    return 0


def _participant(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings)
    journey = journey_named(args.journey)
    if settings.database_url is None:
        raise ConfigurationError("`saga run participant` needs DATABASE_URL")

    async def main() -> None:
        _serve_metrics(settings)
        database = Database.from_settings(
            settings,
            url=journey.database_url(settings.database_url or ""),
            application_name=f"saga-participant-{journey.name}",
        )
        participant = journey.participant(
            settings=settings, database=database, max_concurrency=args.concurrency
        )
        log.info(
            "participant_starting",
            journey=journey.name,
            database_role=journey.database_role,
            actions=sorted(participant.actions),
        )
        try:
            await until_signalled(participant.run(), participant.stop)
        finally:
            await database.dispose()

    asyncio.run(main())
    return 0


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
            print(
                f"{name:<28} every {scheduled.interval:g} s, batch {scheduled.batch}: "
                f"{scheduled.job.description}"
            )
        return 0
    if settings.database_url is None:
        raise ConfigurationError("`saga run worker` needs DATABASE_URL")

    async def main() -> None:
        _serve_metrics(settings)
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
                return
            await until_signalled(worker.run(), worker.stop)
        finally:
            await database.dispose()

    asyncio.run(main())
    return 0


def _serve_metrics(settings: Settings) -> None:
    if settings.metrics_port is not None:
        port = serve_metrics(settings.metrics_port)
        log.info("metrics_serving", port=port, path="/metrics")


async def until_signalled(work: Any, stop: Any) -> None:
    """Run ``work`` until it ends or SIGTERM/SIGINT arrives; then await ``stop()``."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    running = asyncio.ensure_future(work)
    signalled = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait([running, signalled], return_when=asyncio.FIRST_COMPLETED)
        if signalled.done():
            log.info("stopping_on_signal")
            await stop()
        await running
    finally:
        signalled.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await signalled
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
