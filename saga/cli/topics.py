"""``saga topics list|describe|create|add-partitions``: the engine's Kafka topics, managed
without Kafka's shell tools.

Each command talks to ``KAFKA_BOOTSTRAP_SERVERS`` and prints a table (``--json``: one JSON
document). Bad input is refused before the broker is asked anything. The Kafka client is
imported only when a command runs, so that ``saga --help`` stays quick.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeVar

from saga.errors import ConfigurationError
from saga.logging import configure_logging
from saga.operator.render import print_json, print_table
from saga.settings import Settings, load_settings

if TYPE_CHECKING:
    from saga.transport.topic_admin import TopicAdmin, TopicDescription

T = TypeVar("T")

MAX_PARTITIONS = 1024
"""As ``KAFKA_TOPIC_PARTITIONS``: more is almost surely a typo."""


def add_parser(commands: Any) -> None:
    topics = commands.add_parser(
        "topics",
        help="list, describe, create or grow the engine's Kafka topics",
        description="The engine's topics (named KAFKA_TOPIC_PREFIX.*) on KAFKA_BOOTSTRAP_SERVERS.",
    )
    sub = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")

    listing = sub.add_parser(
        "list",
        help="the engine's topics with their partitions and replicas",
        description="Topics named KAFKA_TOPIC_PREFIX.* (--all: every topic), with their "
        "partition count, replication factor and partitions short of in-sync replicas.",
    )
    listing.add_argument("--all", action="store_true", help="every topic, not only the engine's")
    _json_flag(listing)
    listing.set_defaults(handler=_list)

    describe = sub.add_parser(
        "describe",
        help="one topic's partitions (leader, replicas, ISR) and configuration",
        description="One topic's partitions with their leader, replicas and in-sync "
        "replicas (broker ids), and its configuration when the broker gives it.",
    )
    describe.add_argument("topic", metavar="TOPIC", help="the topic's full name")
    _json_flag(describe)
    describe.set_defaults(handler=_describe)

    create = sub.add_parser(
        "create",
        help="create the engine's topics as its processes would; safe to run again",
        description="Create the replies and dead-letter topics and a commands topic per "
        "journey (every installed journey, or those named by --journey) with "
        "KAFKA_TOPIC_PARTITIONS partitions and KAFKA_TOPIC_REPLICATION_FACTOR replicas. "
        "Topics that exist are left as they are.",
    )
    create.add_argument(
        "--journey",
        action="append",
        metavar="NAME",
        help="the journeys to make a commands topic for (repeatable or comma-separated; "
        "default: every installed journey)",
    )
    _json_flag(create)
    create.set_defaults(handler=_create)

    grow = sub.add_parser(
        "add-partitions",
        help="grow a topic to more partitions (Kafka cannot shrink one)",
        description="Grow TOPIC to N partitions. A topic with N already is left as it is; "
        "fewer is refused. New partitions change which partition a key goes to: a saga's "
        "messages sent before and after may be handled out of order (the engine's "
        "consumers tolerate it; a quiet moment keeps it rare).",
    )
    grow.add_argument("topic", metavar="TOPIC", help="the topic's full name")
    grow.add_argument(
        "--to", required=True, metavar="N", help=f"the partition count wanted, 1..{MAX_PARTITIONS}"
    )
    _json_flag(grow)
    grow.set_defaults(handler=_add_partitions)


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def parse_partition_count(text: str) -> int:
    """``--to``'s value, or a one-line error saying what was wrong."""
    stripped = text.strip()
    if not stripped.isdigit() or not 1 <= int(stripped) <= MAX_PARTITIONS:
        raise ConfigurationError(
            f"--to: expected a partition count 1..{MAX_PARTITIONS}, got {text!r}"
        )
    return int(stripped)


def parse_journeys(values: list[str] | None) -> list[str] | None:
    """``--journey`` values (repeated, comma-separated or both), or ``None`` if not given."""
    if values is None:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if not names:
        raise ConfigurationError("--journey: expected at least one journey name")
    return sorted(set(names))


# --- running a command --------------------------------------------------------------------


def _run(work: Callable[[TopicAdmin, Settings], Awaitable[T]]) -> T:
    settings = load_settings()
    configure_logging(settings)
    servers = settings.kafka_bootstrap_servers
    if not servers:
        raise ConfigurationError(
            "saga topics needs KAFKA_BOOTSTRAP_SERVERS (the broker whose topics to manage)"
        )
    from saga.transport.topic_admin import TopicAdmin

    # Every failure ends as one line saying what went wrong; aiokafka's own log lines
    # about the same failure would only repeat it, less clearly.
    aiokafka = logging.getLogger("aiokafka")
    level = aiokafka.level
    aiokafka.setLevel(logging.CRITICAL)

    async def main() -> T:
        async with TopicAdmin(servers, client_id=f"{settings.kafka_client_id}-cli") as admin:
            return await work(admin, settings)

    try:
        return asyncio.run(main())
    finally:
        aiokafka.setLevel(level)  # a caller in the same process gets its logs back


# --- saga topics list ---------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    async def work(admin: TopicAdmin, settings: Settings) -> list[dict[str, Any]]:
        prefix = None if args.all else settings.kafka_topic_prefix
        return [asdict(summary) for summary in await admin.summaries(prefix=prefix)]

    rows = _run(work)
    if args.json:
        print_json({"topics": rows})
    elif rows:
        print_table(rows, ["topic", "partitions", "replication", "under_replicated"])
    else:
        print("no topics" if args.all else "no engine topics: `saga topics create` makes them")
    return 0


# --- saga topics describe -----------------------------------------------------------------


def _describe(args: argparse.Namespace) -> int:
    from saga.transport.topic_admin import check_topic_name

    topic = check_topic_name(args.topic)

    async def work(admin: TopicAdmin, _settings: Settings) -> TopicDescription:
        return await admin.describe(topic)

    described = _run(work)
    if args.json:
        print_json(
            {
                "topic": described.topic,
                "replication": described.replication,
                "partitions": [asdict(p) for p in described.partitions],
                "config": None
                if described.config is None
                else [asdict(entry) for entry in described.config],
            }
        )
        return 0
    _print_description(described)
    return 0


def _print_description(described: TopicDescription) -> None:
    print(
        f"topic {described.topic}: {len(described.partitions)} partitions, "
        f"replication {described.replication}"
    )
    print()
    print_table(
        [{**asdict(p), "offline": p.offline or None} for p in described.partitions],
        ["partition", "leader", "replicas", "isr", "offline", "error"],
    )
    print()
    if described.config is None:
        print("config: the broker does not describe topic configurations")
    elif not described.config:
        print("config: none reported")
    else:
        rows = [
            {**asdict(entry), "value": "(sensitive)" if entry.sensitive else entry.value}
            for entry in described.config
        ]
        print_table(rows, ["name", "value", "source"])


# --- saga topics create -------------------------------------------------------------------


def _create(args: argparse.Namespace) -> int:
    from saga.transport.topic_admin import check_topic_name
    from saga.transport.topics import Topics

    journeys = parse_journeys(args.journey)
    for journey in journeys or []:
        check_topic_name(journey, what="journey")

    async def work(admin: TopicAdmin, settings: Settings) -> list[dict[str, Any]]:
        topics = Topics.from_settings(settings)
        names = [topics.replies, topics.dead_letter]
        names += [topics.commands(journey) for journey in journeys or _installed_journeys()]
        created = await admin.create(
            names,
            partitions=settings.kafka_topic_partitions,
            replication_factor=settings.kafka_topic_replication_factor,
        )
        return [asdict(creation) for creation in created]

    rows = _run(work)
    if args.json:
        print_json({"topics": rows})
        return 0
    print_table(
        [{**row, "created": "created" if row["created"] else "existed"} for row in rows],
        ["topic", "created", "partitions"],
    )
    made = sum(row["created"] for row in rows)
    print(f"{made} created, {len(rows) - made} existed already (left as they were)")
    return 0


def _installed_journeys() -> list[str]:
    from saga.participant.journey import discover_journeys

    return sorted(discover_journeys())


# --- saga topics add-partitions -----------------------------------------------------------


def _add_partitions(args: argparse.Namespace) -> int:
    from saga.transport.topic_admin import PartitionChange, check_topic_name

    topic = check_topic_name(args.topic)
    wanted = parse_partition_count(args.to)

    async def work(admin: TopicAdmin, _settings: Settings) -> PartitionChange:
        return await admin.add_partitions(topic, to=wanted)

    change = _run(work)
    if args.json:
        print_json({**asdict(change), "changed": change.changed})
    elif change.changed:
        print(f"topic {topic}: {change.before} → {change.after} partitions")
    else:
        print(f"topic {topic} has {change.before} partitions already; nothing changed")
    return 0
