"""``saga signal SAGA_ID EVENT``: deliver a signal to a saga waiting for an event.

The signal is stored and applied in one transaction (``Coordinator.signal``): a saga
waiting for ``EVENT`` moves on at once, and one that has not reached its wait yet keeps
the signal for it. Who sent it (``--actor``, default ``$SAGA_ACTOR`` or the login name)
and why (``--reason``) are recorded with it and in the step log. ``--signal-id`` makes a
retried command idempotent: the same id again changes nothing and reports the first.
A finished saga, or one that never waits for ``EVENT``, refuses it (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from typing import Any

from saga.cli.act import _actor, _settings
from saga.coordinator import Coordinator
from saga.coordinator.signals import SignalReceipt
from saga.errors import ConfigurationError
from saga.operator.filters import parse_saga_id
from saga.operator.render import print_json
from saga.settings import Settings
from saga.store import Database


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "signal",
        help="deliver a signal to a saga that waits (or will wait) for an event",
        description="Deliver the signal EVENT to a saga: applied at once when it waits for "
        "it, kept for its wait otherwise; refused for a finished saga or an event it "
        "never waits for.",
    )
    parser.add_argument("saga_id", metavar="SAGA_ID", help="the saga to signal")
    parser.add_argument("event", metavar="EVENT", help="the event the saga waits for")
    parser.add_argument(
        "--data",
        default="{}",
        metavar="JSON",
        help="the signal's payload as a JSON object (lands in the saga's context under "
        "the wait's name)",
    )
    parser.add_argument(
        "--actor", default=None, help="who sends it (default: $SAGA_ACTOR, else your login name)"
    )
    parser.add_argument("--reason", default=None, help="why: recorded with the signal")
    parser.add_argument(
        "--signal-id",
        default=None,
        help="the signal's id, to make a retried command idempotent (default: a new one)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    saga_id = parse_saga_id(args.saga_id)
    event = args.event.strip()
    if not event:
        raise ConfigurationError("EVENT must not be empty")
    data = _data(args.data)
    actor = _actor(args.actor)
    reason = args.reason.strip() if args.reason else None
    signal_id = args.signal_id.strip() if args.signal_id else str(uuid.uuid4())
    if not signal_id:
        raise ConfigurationError("--signal-id must not be empty")
    settings = _settings()
    receipt = asyncio.run(_signal(settings, saga_id, event, data, signal_id, actor, reason))
    if args.json:
        print_json(
            {
                "saga_id": str(receipt.saga_id),
                "event": receipt.event,
                "signal_id": receipt.signal_id,
                "outcome": receipt.outcome.value,
                "repeated": receipt.repeated,
                "status": None if receipt.status is None else receipt.status.value,
            }
        )
    else:
        print(_describe(receipt))
    return 0


async def _signal(
    settings: Settings,
    saga_id: uuid.UUID,
    event: str,
    data: dict[str, Any],
    signal_id: str,
    actor: str,
    reason: str | None,
) -> SignalReceipt:
    database = Database.from_settings(settings, application_name="saga-cli")
    coordinator = Coordinator(settings=settings, database=database, name="saga-cli")
    try:
        return await coordinator.signal(
            saga_id, event, data, signal_id=signal_id, actor=actor, reason=reason
        )
    finally:
        await coordinator.stop()
        await database.dispose()


def _describe(receipt: SignalReceipt) -> str:
    said = f"signal {receipt.event!r} ({receipt.signal_id}) for saga {receipt.saga_id}"
    if receipt.repeated:
        return f"{said}: sent before, {receipt.outcome.value}; nothing changed"
    if receipt.status is not None:
        return f"{said}: {receipt.outcome.value}; the saga is now {receipt.status.value}"
    return f"{said}: {receipt.outcome.value} until the saga reaches its wait"


def _data(given: str) -> dict[str, Any]:
    try:
        value = json.loads(given)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"--data is not valid JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(value, dict):
        raise ConfigurationError(f"--data must be a JSON object, got {type(value).__name__}")
    return value
