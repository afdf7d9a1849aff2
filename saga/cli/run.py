"""``saga run coordinator``: a long-running engine process, stopped by SIGTERM or SIGINT.

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
from saga.logging import configure_logging
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


def _coordinator(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings)

    async def main() -> None:
        database = Database.from_settings(settings, application_name="saga-coordinator")
        coordinator = Coordinator(
            settings=settings, database=database, max_concurrency=args.concurrency
        )
        try:
            await until_signalled(coordinator.run(), coordinator.stop)
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
