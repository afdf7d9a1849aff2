"""``saga run coordinator|participant``: long-running engine processes, stopped by SIGTERM
or SIGINT.

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
from saga.participant.journey import discover_journeys, journey_named
from saga.settings import load_settings
from saga.store import Database

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


def _coordinator(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings)

    async def main() -> None:
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
