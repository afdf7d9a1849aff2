"""An in-process broker with Kafka's semantics, for tests that want no network.

Topics have partitions; a record goes to the partition its key hashes to (a stable CRC-32,
so one key always lands on one partition), and each partition is an append-only log.
Consumer groups hand their members partitions, rebalance when a member joins, leaves or
crashes (its ``run()`` ends for any reason, cancellation included), and remember per
partition the offset committed last: a new owner starts from there, so what was handled and
not committed is delivered again, as on Kafka.

Faults a test may inject: :attr:`InMemoryBroker.deliver_twice` stores every message twice
(a producer's retry after a lost acknowledgement does that on Kafka),
:meth:`InMemoryBroker.publish` stores a raw record (a key that is not UTF-8, say) the
engine's senders cannot make, :meth:`InMemoryBroker.set_available` makes the broker
unreachable and back, and :meth:`InMemoryBroker.lose_everything` forgets every topic,
record and offset, as a broker without storage does when it restarts.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from saga.errors import BrokerUnavailable, ConfigurationError, MessageRejected
from saga.transport.message import OutgoingMessage

TopicPartition = tuple[str, int]

# Kafka's default message.max.bytes: the broker's own limit, above any sender's.
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One record of a partition's log (the fields the dispatch reads)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    timestamp: int


@dataclass(eq=False)
class GroupMember:
    """One consumer in a group, as the broker sees it."""

    member_id: str
    group: _Group
    topics: frozenset[str]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    generation: int = 0
    """The group generation the consumer adopted; behind the group's after a rebalance."""
    assignment: tuple[TopicPartition, ...] = ()
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    # Where the next fetch starts among the assigned partitions, so none is starved.
    turn: int = 0


@dataclass(eq=False)
class _Group:
    group_id: str
    members: list[GroupMember] = field(default_factory=list)
    generation: int = 0
    committed: dict[TopicPartition, int] = field(default_factory=dict)


class InMemoryBroker:
    """Topics, logs, consumer groups and committed offsets, all in this process.

    ``max_message_bytes`` is the broker's own limit on a record (key, value and headers);
    a larger one is refused with :class:`~saga.errors.MessageRejected`, as Kafka refuses
    it. ``auto_create_topics`` makes a send to an unknown topic create it with
    ``default_partitions`` partitions; without it such a send fails with
    :class:`~saga.errors.BrokerUnavailable` (production Kafka has auto-creation off).
    """

    def __init__(
        self,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        auto_create_topics: bool = False,
        default_partitions: int = 4,
        deliver_twice: bool = False,
    ) -> None:
        if max_message_bytes < 1 or default_partitions < 1:
            raise ConfigurationError("max_message_bytes and default_partitions must be >= 1")
        self.max_message_bytes = max_message_bytes
        self.auto_create_topics = auto_create_topics
        self.default_partitions = default_partitions
        self.deliver_twice = deliver_twice
        """Store every message twice, at two offsets: a duplicate the engine must absorb."""
        self._logs: dict[str, list[list[StoredRecord]]] = {}
        self._groups: dict[str, _Group] = {}
        self._round_robin = itertools.count()
        self._member_ids = itertools.count(1)
        self._available = True

    def __repr__(self) -> str:
        return f"InMemoryBroker(topics={sorted(self._logs)})"

    # -- topics ---------------------------------------------------------------------------

    def create_topic(self, name: str, partitions: int | None = None) -> None:
        """Create ``name`` unless it exists (an existing topic keeps its partition count)."""
        self._require_available()
        count = self.default_partitions if partitions is None else partitions
        if not name or count < 1:
            raise ConfigurationError(
                f"a topic needs a name and at least one partition, got {name!r} with {count}"
            )
        if name in self._logs:
            return
        self._logs[name] = [[] for _ in range(count)]
        for group in self._groups.values():
            if any(name in member.topics for member in group.members):
                self._rebalance(group)

    def topics(self) -> dict[str, int]:
        """Every topic and its partition count."""
        return {name: len(partitions) for name, partitions in self._logs.items()}

    def records(self, topic: str) -> list[StoredRecord]:
        """Every record of ``topic``, partition by partition, in offset order."""
        return [record for log in self._logs.get(topic, []) for record in log]

    def committed(self, group_id: str) -> dict[TopicPartition, int]:
        """The offsets ``group_id`` committed last, by (topic, partition)."""
        group = self._groups.get(group_id)
        return dict(group.committed) if group is not None else {}

    # -- faults ---------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._available

    def set_available(self, available: bool) -> None:
        """Make every send, topic creation and fetch fail or wait (``False``) until called
        again with ``True``; what the broker holds is kept."""
        self._available = available
        self._wake_everyone()

    def lose_everything(self) -> None:
        """Forget every topic, record and committed offset; every group rebalances."""
        self._logs.clear()
        for group in self._groups.values():
            group.committed.clear()
            self._rebalance(group)

    # -- producing ------------------------------------------------------------------------

    def append(self, message: OutgoingMessage) -> StoredRecord:
        """Store ``message`` on its key's partition; raises as a Kafka producer's send
        would: :class:`MessageRejected` over the size limit, :class:`BrokerUnavailable`
        for an unknown topic or an unavailable broker."""
        headers = tuple((name, value.encode()) for name, value in message.headers.items())
        return self.publish(message.topic, message.value, key=message.key.encode(), headers=headers)

    def publish(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes | None]] = (),
    ) -> StoredRecord:
        """Store a raw record, as any Kafka client could (a key that is not UTF-8, no key,
        a header without a value); returns it (the first copy if :attr:`deliver_twice`)."""
        self._require_available()
        size = len(key or b"") + len(value or b"") + _headers_size(headers)
        if size > self.max_message_bytes:
            raise MessageRejected(
                f"a message of {size} bytes to {topic} is over the size limit: the broker "
                f"takes at most {self.max_message_bytes} bytes"
            )
        partitions = self._partitions_for_send(topic)
        number = self._partition_of(key, len(partitions))
        log = partitions[number]
        stamp = int(time.time() * 1000)
        first: StoredRecord | None = None
        for _ in range(2 if self.deliver_twice else 1):
            record = StoredRecord(topic, number, len(log), key, value, tuple(headers), stamp)
            log.append(record)
            first = first or record
        self._wake_owners(topic, number)
        assert first is not None
        return first

    def _partitions_for_send(self, topic: str) -> list[list[StoredRecord]]:
        if topic not in self._logs:
            if not self.auto_create_topics:
                raise BrokerUnavailable(f"the in-memory broker has no topic {topic!r}")
            self.create_topic(topic)
        return self._logs[topic]

    def _partition_of(self, key: bytes | None, partitions: int) -> int:
        if key is None:
            return next(self._round_robin) % partitions
        return zlib.crc32(key) % partitions

    # -- consumer groups (for InMemoryConsumer) -------------------------------------------

    def join(self, group_id: str, topics: Sequence[str], client_id: str) -> GroupMember:
        """Add a member to ``group_id`` (made if new) and rebalance the group."""
        group = self._groups.setdefault(group_id, _Group(group_id))
        member = GroupMember(f"{client_id}-{next(self._member_ids)}", group, frozenset(topics))
        group.members.append(member)
        self._rebalance(group)
        return member

    def leave(self, member: GroupMember) -> None:
        """Take ``member`` out of its group; the others share its partitions from the
        offsets last committed, so what it did not commit is delivered again."""
        group = member.group
        if member in group.members:
            group.members.remove(member)
            self._rebalance(group)

    async def fetch(
        self, member: GroupMember, max_records: int
    ) -> dict[TopicPartition, list[StoredRecord]]:
        """Records past ``member``'s positions, at most ``max_records``, moving the
        positions past them. Waits for records; returns nothing when the group rebalanced
        (``member.generation`` is behind) or ``member.wake`` was set from outside."""
        member.wake.clear()
        batch = self._take(member, max_records)
        if not batch and member.generation == member.group.generation:
            await member.wake.wait()
            batch = self._take(member, max_records)
        return batch

    def commit(
        self, member: GroupMember, generation: int, offsets: Mapping[TopicPartition, int]
    ) -> bool:
        """Commit ``offsets`` fetched under ``generation``; refused (``False``) when the
        group has rebalanced since, as Kafka answers a commit from an old generation."""
        group = member.group
        if generation != group.generation or member not in group.members:
            return False
        owned = set(member.assignment)
        for partition, offset in offsets.items():
            if partition in owned:
                group.committed[partition] = offset
        return True

    def _take(
        self, member: GroupMember, max_records: int
    ) -> dict[TopicPartition, list[StoredRecord]]:
        if not self._available or member.generation != member.group.generation:
            return {}
        batch: dict[TopicPartition, list[StoredRecord]] = {}
        room = max_records
        assignment = member.assignment
        count = len(assignment)
        for n in range(count):
            if room <= 0:
                break
            partition = assignment[(member.turn + n) % count]
            log = self._logs[partition[0]][partition[1]]
            start = member.positions[partition]
            records = log[start : start + room]
            if records:
                batch[partition] = records
                member.positions[partition] = start + len(records)
                room -= len(records)
        member.turn += 1
        return batch

    def _rebalance(self, group: _Group) -> None:
        """A new generation: every subscribed partition goes to one member, round-robin,
        each starting from the offset committed last."""
        group.generation += 1
        for member in group.members:
            member.assignment = ()
        for topic in sorted({topic for member in group.members for topic in member.topics}):
            subscribers = [member for member in group.members if topic in member.topics]
            for number in range(len(self._logs.get(topic, []))):
                owner = subscribers[number % len(subscribers)]
                owner.assignment = (*owner.assignment, (topic, number))
        for member in group.members:
            member.positions = {
                partition: group.committed.get(partition, 0) for partition in member.assignment
            }
            member.wake.set()

    def _wake_owners(self, topic: str, partition: int) -> None:
        for group in self._groups.values():
            for member in group.members:
                if (topic, partition) in member.assignment:
                    member.wake.set()

    def _wake_everyone(self) -> None:
        for group in self._groups.values():
            for member in group.members:
                member.wake.set()

    def _require_available(self) -> None:
        if not self._available:
            raise BrokerUnavailable("the in-memory broker is unavailable")


def _headers_size(headers: Sequence[tuple[str, bytes | None]]) -> int:
    return sum(len(name.encode()) + len(value or b"") for name, value in headers)
