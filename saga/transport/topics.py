"""Topic names, and creating the topics before anything produces to them.

Names live in one place so that the coordinator and every participant agree on them
without sharing anything but the prefix setting. Topics are created explicitly, with the
partition count the settings ask for, because production Kafka has auto-creation off and a
broker that auto-creates would pick its own partition count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from saga.errors import BrokerUnavailable, ConfigurationError
from saga.settings import Settings

log = structlog.get_logger("saga.transport")

_POLL_INTERVAL_S = 0.05


@dataclass(frozen=True)
class Topics:
    """The engine's topic names under one prefix (``KAFKA_TOPIC_PREFIX``)."""

    prefix: str

    def commands(self, journey: str) -> str:
        """Where the coordinator sends one journey's step commands; a topic per journey
        lets each journey's participants scale and fail on their own."""
        return f"{self.prefix}.{journey}.commands"

    @property
    def replies(self) -> str:
        """Where every participant answers the coordinator."""
        return f"{self.prefix}.replies"

    @property
    def dead_letter(self) -> str:
        """Where messages that cannot be handled are parked for a person to look at."""
        return f"{self.prefix}.dead-letter"

    @classmethod
    def from_settings(cls, settings: Settings) -> Topics:
        return cls(prefix=settings.kafka_topic_prefix)


async def ensure_topics(
    bootstrap_servers: str,
    names: Iterable[str],
    *,
    partitions: int,
    client_id: str = "austa-saga",
    replication_factor: int = 1,
    max_wait: float = 30.0,
) -> None:
    """Create whichever of ``names`` do not exist yet, then wait until the broker's metadata
    lists them all.

    Safe to call from every process at start-up: a topic that exists already, or that
    another process creates first, is left as it is (its partition count included). The
    wait matters because a consumer subscribing to a topic the metadata does not show yet
    gets no partitions for it until its next metadata refresh.

    Raises :class:`BrokerUnavailable` when the broker cannot be reached or the topics do
    not appear within ``max_wait`` seconds, and :class:`ConfigurationError` when the broker
    refuses a topic for good (an invalid name or replication factor, say).
    """
    wanted = sorted(set(names))
    if not wanted:
        return
    deadline = time.monotonic() + max_wait
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id=client_id)
    try:
        await admin.start()
        missing = [name for name in wanted if name not in await _listed(admin)]
        if missing:
            log.info("topics_creating", topics=missing, partitions=partitions)
        while missing:
            missing = await _create(admin, missing, partitions, replication_factor)
            if missing:
                await _pause_until(deadline, f"could not create topics {missing}")
        while not set(wanted) <= await _listed(admin):
            await _pause_until(deadline, f"topics {wanted} did not appear in the metadata")
    except KafkaError as exc:
        raise BrokerUnavailable(
            f"could not ensure topics on {bootstrap_servers}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        await admin.close()


async def _create(
    admin: AIOKafkaAdminClient, names: list[str], partitions: int, replication_factor: int
) -> list[str]:
    """Ask for ``names``; return those worth asking for again (a retriable refusal)."""
    response: Any = await admin.create_topics(
        [NewTopic(name, partitions, replication_factor) for name in names]
    )
    again: list[str] = []
    for name, code, *message in response.topic_errors:
        if code == 0:
            continue
        error = for_code(code)
        if error is TopicAlreadyExistsError:
            continue  # created meanwhile by another process, or by an auto-creating broker
        if error.retriable:
            again.append(name)
            continue
        detail = message[0] if message and message[0] else error.__name__
        raise ConfigurationError(f"the broker refused to create topic {name!r}: {detail}")
    return again


async def _listed(admin: AIOKafkaAdminClient) -> set[str]:
    """Topics the metadata shows with every partition led. A metadata request naming the
    topics is avoided on purpose: a broker with auto-creation on would create them."""
    described: list[dict[str, Any]] = await admin.describe_topics()
    return {
        topic["topic"]
        for topic in described
        if topic["error_code"] == 0
        and topic["partitions"]
        and all(partition["error_code"] == 0 for partition in topic["partitions"])
    }


async def _pause_until(deadline: float, problem: str) -> None:
    if time.monotonic() >= deadline:
        raise BrokerUnavailable(problem)
    await asyncio.sleep(_POLL_INTERVAL_S)
