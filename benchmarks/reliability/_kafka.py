"""What the broker-side injectors share: which topic is which, a producer, and a consumer
group member that outlives the broker."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from benchmarks.reliability.kinds import COPY_HEADER, FAULT_DEFINITION, FAULT_KIND_HEADER
from saga.transport.topics import Topics

log = structlog.get_logger("benchmarks.reliability")

# pydantic writes compact JSON, so an envelope of the fault definition contains this.
_FAULT_ENVELOPE = f'"definition":"{FAULT_DEFINITION}"'.encode()

# Large enough for a record at twice the engine's default limit: the oversize poison.
FETCH_BYTES = 4 * 1024 * 1024
REQUEST_TIMEOUT_MS = 10_000
# A topic lost with the broker reappears in a client's metadata within this long.
_METADATA_MAX_AGE_MS = 1000
MAX_RECONNECT_DELAY = 2.0


# -- topics ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Role:
    """What a topic is to the engine: a journey's command topic or the replies topic."""

    topics: Topics
    journey: str | None
    """The journey of a command topic; None for the replies topic."""

    @property
    def replies(self) -> bool:
        return self.journey is None


def topic_role(topic: str) -> Role:
    """``<prefix>.<journey>.commands`` or ``<prefix>.replies`` (see saga.transport.topics);
    anything else is refused, since the injectors must know what they write to."""
    if topic.endswith(".replies"):
        return Role(Topics(topic.removesuffix(".replies")), None)
    prefix, _, rest = topic.rpartition(".")
    if rest == "commands" and "." in prefix:
        prefix, _, journey = prefix.rpartition(".")
        if Topics(prefix).commands(journey) == topic:
            return Role(Topics(prefix), journey)
    raise ValueError(f"{topic!r} is neither a journey's command topic nor the replies topic")


# -- small helpers ----------------------------------------------------------------------------


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop`` is set; True when it is."""
    try:
        async with asyncio.timeout(max(seconds, 0.0)):
            await stop.wait()
    except TimeoutError:
        return False
    return True


def seeded_uuid(draw: random.Random) -> uuid.UUID:
    """A fresh-looking uuid that the seed reproduces."""
    return uuid.UUID(int=draw.getrandbits(128), version=4)


def is_fault(record: Any) -> bool:
    """A record an injector wrote, or the engine's answer to one."""
    names = {name for name, _ in record.headers}
    if COPY_HEADER in names or FAULT_KIND_HEADER in names:
        return True
    return record.value is not None and _FAULT_ENVELOPE in record.value


def new_producer(bootstrap: str, client_id: str, max_request_size: int) -> Any:
    # Idempotence off: Tansu mishandles it (see saga.transport.producer).
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=False,
        max_request_size=max_request_size,
        request_timeout_ms=REQUEST_TIMEOUT_MS,
    )


async def started(producer: Any, stop: asyncio.Event | None = None) -> bool:
    """Start ``producer``, trying again while the broker is down; False if ``stop`` came
    first."""
    delay = 0.1
    while True:
        try:
            await producer.start()
        except KafkaError as exc:
            log.warning("fault_producer_waiting", reason=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                await producer.stop()
            if stop is None:
                raise
            if await pause(stop, delay):
                return False
            delay = min(delay * 2, MAX_RECONNECT_DELAY)
        else:
            return True


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ready: asyncio.Event) -> None:
        self._ready = ready

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if assigned:
            self._ready.set()


class GroupReader:
    """A member of a consumer group of its own that outlives the broker: any Kafka error
    closes the client and a new one joins again (a restarted broker has forgotten the
    group and its offsets, so the new member reads the topics from their start, which is
    all the restarted broker holds). Offsets are committed after each batch is handled."""

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        group_id: str,
        handle: Callable[[list[Any]], Awaitable[None]],
        *,
        session_timeout_ms: int,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.group_id = group_id
        self._handle = handle
        self._session_timeout_ms = session_timeout_ms
        self._fresh = asyncio.Event()
        self.ready = asyncio.Event()
        self.reconnects = 0

    def reconnect(self) -> None:
        """Close the client after the batch in hand and join again with a new one."""
        self._fresh.set()

    async def run(self, stop: asyncio.Event) -> None:
        delay = 0.1
        while not stop.is_set():
            self._fresh.clear()
            consumer = self._new_consumer()
            failed = False
            try:
                await consumer.start()
                delay = 0.1
                await self._consume(consumer, stop)
            except KafkaError as exc:
                failed = True
                log.warning(
                    "fault_reader_reconnecting",
                    group_id=self.group_id,
                    reason=f"{type(exc).__name__}: {exc}",
                )
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await consumer.stop()
            if stop.is_set():
                return
            self.reconnects += 1
            if failed:
                if await pause(stop, delay):
                    return
                delay = min(delay * 2, MAX_RECONNECT_DELAY)

    def _new_consumer(self) -> Any:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            client_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=FETCH_BYTES,
            metadata_max_age_ms=_METADATA_MAX_AGE_MS,
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=max(self._session_timeout_ms // 4, 100),
            request_timeout_ms=max(REQUEST_TIMEOUT_MS, self._session_timeout_ms + 1000),
        )
        consumer.subscribe(self.topics, listener=_Listener(self.ready))
        return consumer

    async def _consume(self, consumer: Any, stop: asyncio.Event) -> None:
        while not stop.is_set() and not self._fresh.is_set():
            batch: dict[Any, list[Any]] = await consumer.getmany(timeout_ms=100)
            if not batch:
                continue
            for records in batch.values():
                await self._handle(records)
            assigned = consumer.assignment()
            offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
            offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
            if offsets:
                try:
                    await consumer.commit(offsets)
                except KafkaError as exc:
                    # Uncommitted records come back to a later member; the readers
                    # handle a record seen twice (see each one).
                    log.warning("fault_reader_commit_failed", reason=str(exc))
