"""``saga retry|compensate|skip|abort``: an operator's hand on one saga, or on every saga
``saga ls`` would list with the same filters.

One saga (by id) is acted on at once (``--dry-run`` only shows what would happen). The
bulk form selects with the filters and is a dry run unless ``--execute`` is given. Each
saga is acted on in its own short transaction; one the action does not apply to is
reported and left as it is. Who acted (``--actor``, default ``$SAGA_ACTOR`` or the login
name) and why (``--reason``) are written to the step log.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from saga.coordinator.service import COORDINATOR_OUTBOX
from saga.errors import BrokerUnavailable, ConfigurationError
from saga.logging import configure_logging
from saga.operator.actions import ActionOutcome, ActionRequest, SagaActions
from saga.operator.decisions import Action, ActionRefused, Operator
from saga.operator.filters import (
    SagaFilter,
    add_filter_arguments,
    filter_from_args,
    parse_count,
    parse_saga_id,
    select_sagas,
)
from saga.operator.render import print_json, print_table
from saga.outbox import OutboxPublisher
from saga.settings import Settings, load_settings
from saga.store import Database
from saga.transport import Producer, Topics

EXIT_REFUSED = 1
BULK_LIMIT_DEFAULT = 100
BULK_LIMIT_MAX = 1000


def add_parser(commands: Any) -> None:
    for action in Action:
        parser = commands.add_parser(
            action.value,
            help=action.description,
            description=f"{action.description}. With a saga id, act on it now; with filters "
            "instead, act on every saga they select (a dry run unless --execute).",
        )
        parser.add_argument("saga_id", nargs="?", metavar="SAGA_ID", help="the saga to act on")
        parser.add_argument(
            "--reason", required=True, help="why: written to the step log with your name"
        )
        parser.add_argument(
            "--actor",
            default=None,
            help="who acts (default: $SAGA_ACTOR, else your login name)",
        )
        if action is Action.SKIP:
            parser.add_argument(
                "--step",
                required=True,
                help="the current step's (or wait's, or child saga's) name or index to skip",
            )
            parser.add_argument(
                "--result",
                default="{}",
                metavar="JSON",
                help="the step's result as a JSON object (merged into the saga's context)",
            )
        add_filter_arguments(parser)
        parser.add_argument(
            "--execute",
            action="store_true",
            help="bulk form: act (without it the bulk form only shows what it would do)",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="with a saga id: only show what would happen"
        )
        parser.add_argument(
            "--limit",
            default=str(BULK_LIMIT_DEFAULT),
            help=f"bulk form: the most sagas to act on (default {BULK_LIMIT_DEFAULT}, "
            f"at most {BULK_LIMIT_MAX})",
        )
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        parser.set_defaults(handler=_run, action=action)


def _run(args: argparse.Namespace) -> int:
    action: Action = args.action
    request = ActionRequest(
        action,
        Operator(_actor(args.actor), _reason(args.reason)),
        step=getattr(args, "step", None),
        result=_result(getattr(args, "result", "{}")),
    )
    saga_filter = filter_from_args(args)
    if args.saga_id is not None:
        if not saga_filter.is_empty():
            raise ConfigurationError("give a saga id or filters, not both")
        saga_id = parse_saga_id(args.saga_id)
        settings = _settings()
        outcome = asyncio.run(_one(settings, saga_id, request, dry_run=args.dry_run))
        if outcome.refused is not None:
            raise ActionRefused(f"cannot {action.value} saga {saga_id}: {outcome.refused}")
        _print([outcome], as_json=args.json, dry_run=args.dry_run)
        return 0
    if saga_filter.is_empty():
        raise ConfigurationError(
            f"give the id of the saga to {action.value}, or filters (--status, --definition, "
            "...) to select several"
        )
    limit = parse_count(args.limit, "--limit", low=1, high=BULK_LIMIT_MAX)
    settings = _settings()
    dry_run = not args.execute
    outcomes = asyncio.run(_many(settings, saga_filter, request, limit, dry_run=dry_run))
    _print(outcomes, as_json=args.json, dry_run=dry_run)
    return EXIT_REFUSED if any(o.refused is not None for o in outcomes) else 0


async def _one(
    settings: Settings, saga_id: uuid.UUID, request: ActionRequest, *, dry_run: bool
) -> ActionOutcome:
    async with _actions(settings, publish=not dry_run) as actions:
        return await actions.apply(saga_id, request, dry_run=dry_run)


async def _many(
    settings: Settings,
    saga_filter: SagaFilter,
    request: ActionRequest,
    limit: int,
    *,
    dry_run: bool,
) -> list[ActionOutcome]:
    async with _actions(settings, publish=not dry_run) as actions:
        listed = await actions.database.run_driver(
            lambda conn: select_sagas(conn, saga_filter, limit=limit),
            transaction=False,
            name="operator.select",
        )
        return [await actions.apply(saga.id, request, dry_run=dry_run) for saga in listed]


@asynccontextmanager
async def _actions(settings: Settings, *, publish: bool) -> AsyncIterator[SagaActions]:
    database = Database.from_settings(settings, application_name="saga-cli")
    producer = await _producer(settings) if publish else None
    publisher = (
        None if producer is None else OutboxPublisher(database, producer, COORDINATOR_OUTBOX)
    )
    try:
        yield SagaActions(database, Topics.from_settings(settings), publisher)
    finally:
        if publisher is not None:
            await publisher.close()
        if producer is not None:
            await producer.stop()
        await database.dispose()


async def _producer(settings: Settings) -> Producer | None:
    """A producer to send the action's command at once; without a broker the command
    waits in the outbox for the coordinator's relay, which is only slower."""
    if not settings.kafka_bootstrap_servers:
        _note("KAFKA_BOOTSTRAP_SERVERS is not set: the coordinator's relay will send commands")
        return None
    producer = Producer.from_settings(settings, client_id=f"{settings.kafka_client_id}-cli")
    try:
        await producer.start()
    except BrokerUnavailable as exc:
        _note(f"{exc}: the coordinator's relay will send commands")
        return None
    return producer


def _print(outcomes: Sequence[ActionOutcome], *, as_json: bool, dry_run: bool) -> None:
    if as_json:
        print_json({"dry_run": dry_run, "sagas": [o.as_dict() for o in outcomes]})
        return
    rows = [_row(outcome, dry_run) for outcome in outcomes]
    print_table(rows, ["saga_id", "definition", "before", "result", "command"])
    applied = sum(o.applied for o in outcomes)
    refused = sum(o.refused is not None for o in outcomes)
    if dry_run:
        print(
            f"dry run: {len(outcomes) - refused} would change, {refused} would not; "
            "nothing was written (--execute acts)"
        )
    else:
        print(f"{applied} changed, {refused} left as they were")
    for outcome in outcomes:
        for note in outcome.notes:
            print(f"saga {outcome.saga_id}: {note}")


def _row(outcome: ActionOutcome, dry_run: bool) -> Mapping[str, Any]:
    if outcome.refused is not None:
        result = f"not applicable: {outcome.refused}"
    else:
        result = f"{'would be ' if dry_run else ''}{outcome.after}"
    return {
        "saga_id": str(outcome.saga_id),
        "definition": outcome.definition,
        "before": outcome.before,
        "result": result,
        "command": outcome.command,
    }


def _settings() -> Settings:
    settings = load_settings()
    configure_logging(settings)
    return settings


def _actor(given: str | None) -> str:
    actor = (given or os.environ.get("SAGA_ACTOR") or _login()).strip()
    if not actor:
        raise ConfigurationError("--actor must not be empty")
    return actor


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _reason(given: str) -> str:
    reason = given.strip()
    if not reason:
        raise ConfigurationError("--reason must say why (it is written to the step log)")
    return reason


def _result(given: str) -> dict[str, Any]:
    try:
        value = json.loads(given)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"--result is not valid JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(value, dict):
        raise ConfigurationError(f"--result must be a JSON object, got {type(value).__name__}")
    return value


def _note(text: str) -> None:
    print(f"saga: note: {text}", file=sys.stderr)
