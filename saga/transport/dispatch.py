"""Dispatching a batch of records: concurrent across keys, in order within a key.

This is the half of consuming that every transport shares; the other half (fetching,
committing, group membership) is the adapter's. Every message about one saga carries the
saga's key, so running different keys at once is safe and running one key's records one
after another keeps each saga's history in order. :meth:`KeyedDispatch.settle` says which
offsets may be committed: per partition, up to the first record not settled (handled or
dead-lettered), so a crash or a rebalance redelivers instead of losing; the handlers are
idempotent, which makes the redelivery harmless.

What happens to a record the handler fails on depends on whose fault it is:

* :class:`~saga.errors.MessageRejected`: the message is bad. It is dead-lettered and the
  records behind it go on.
* a ``retriable`` :class:`~saga.errors.SagaError` (the database or the broker is down):
  the message is fine, so it is tried again, with growing pauses, until it succeeds or the
  consumer stops. Skipping it would lose a good message to a passing outage.
* anything else is a bug or an unknown: tried ``unexpected_error_attempts`` times in all,
  then dead-lettered with the error, so one bad record cannot stall its partition forever.

A record whose key or headers are not UTF-8, or whose value is over the size limit, is
dead-lettered without reaching the handler.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog

from saga.errors import ConfigurationError, MalformedMessage, MessageRejected, SagaError
from saga.transport.dead_letter import DeadLetterKind

if TYPE_CHECKING:
    from saga.transport.dead_letter import DeadLetters

log = structlog.get_logger("saga.transport")

Partition = TypeVar("Partition", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Incoming:
    """One consumed record, decoded: the key and headers as text, the value as bytes."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes | None
    headers: dict[str, str]
    timestamp_ms: int


Handler = Callable[[Incoming], Awaitable[None]]


class Record(Protocol):
    """A record as a transport stores it (the fields of aiokafka's ``ConsumerRecord``)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...
    @property
    def timestamp(self) -> int: ...


class _Abandoned(Exception):
    """A record was given up on because the consumer is stopping; it stays uncommitted."""


class KeyedDispatch:
    """Settles batches of records with ``handle`` for one consumer.

    ``processed``, ``dead_lettered`` and ``retried`` count records handled, records
    dead-lettered and retries made. :meth:`request_stop` makes every wait end early and
    bounds the batch in hand by its grace.
    """

    def __init__(
        self,
        *,
        handle: Handler,
        dead_letters: DeadLetters,
        group_id: str,
        max_message_bytes: int,
        max_concurrency: int = 64,
        unexpected_error_attempts: int = 3,
        retry_delay: float = 0.05,
        max_retry_delay: float = 2.0,
    ) -> None:
        if max_concurrency < 1 or unexpected_error_attempts < 1:
            raise ConfigurationError("max_concurrency and unexpected_error_attempts must be >= 1")
        if retry_delay <= 0 or max_retry_delay < retry_delay:
            raise ConfigurationError("retry delays must be > 0 with max_retry_delay >= retry_delay")
        self.group_id = group_id
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self._handle = handle
        self._dead_letters = dead_letters
        self._max_message_bytes = max_message_bytes
        self._unexpected_error_attempts = unexpected_error_attempts
        self._slots = asyncio.Semaphore(max_concurrency)
        self.stopping = asyncio.Event()
        self._grace = 10.0
        self.processed = 0
        self.dead_lettered = 0
        self.retried = 0

    def request_stop(self, grace: float) -> None:
        """Start no new record after the ones in hand; give those ``grace`` seconds."""
        self._grace = grace
        self.stopping.set()

    async def pause(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less if a stop is requested; True means it was."""
        try:
            async with asyncio.timeout(seconds):
                await self.stopping.wait()
        except TimeoutError:
            return False
        return True

    # -- one batch ------------------------------------------------------------------------

    async def settle(self, batch: Mapping[Partition, Sequence[Record]]) -> dict[Partition, int]:
        """Settle every record of ``batch`` (records of one partition in offset order), or
        as many as the grace allows once a stop is requested.

        Returns, per partition, the offset to commit: one past the last record of the
        unbroken run of settled records from the batch's start. Raises a failure that is
        neither the record's nor passing (a dead letter the transport refused for good).
        """
        settled: set[tuple[str, int, int]] = set()
        work = asyncio.create_task(self._settle_all(batch, settled))
        stopping = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                await asyncio.wait({work}, timeout=self._grace)
        finally:
            stopping.cancel()
            if not work.done():
                work.cancel()
                log.warning("batch_abandoned", group_id=self.group_id, settled=len(settled))
            await asyncio.wait({work})
        if not work.cancelled():
            work.result()
        return _committable(batch, settled)

    async def _settle_all(
        self, batch: Mapping[Any, Sequence[Record]], settled: set[tuple[str, int, int]]
    ) -> None:
        groups: dict[bytes, list[Record]] = {}
        loners: list[list[Record]] = []
        for records in batch.values():
            for record in records:
                if record.key is None:
                    loners.append([record])
                else:
                    groups.setdefault(record.key, []).append(record)
        tasks = [
            asyncio.create_task(self._settle_group(group, settled))
            for group in [*groups.values(), *loners]
        ]
        if not tasks:
            return
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            # Read every outcome, so that no failure is reported as never retrieved.
            failures = [task.exception() for task in tasks if not task.cancelled()]
        for failure in failures:
            if failure is not None:
                raise failure

    async def _settle_group(
        self, records: list[Record], settled: set[tuple[str, int, int]]
    ) -> None:
        async with self._slots:
            for record in records:
                try:
                    await self._settle(record)
                except _Abandoned:
                    return  # the records behind it stay unsettled, so uncommitted
                settled.add((record.topic, record.partition, record.offset))

    # -- one record -----------------------------------------------------------------------

    async def _settle(self, record: Record) -> None:
        """Handle ``record`` or dead-letter it; return only when one of the two is done."""
        try:
            incoming = _decode(record, errors="strict")
        except UnicodeDecodeError as exc:
            lossy = _decode(record, errors="backslashreplace")
            reason = f"the key or a header is not valid UTF-8: {exc}"
            await self._dead_letter(lossy, reason, DeadLetterKind.MALFORMED)
            return
        size = len(record.value or b"")
        if size > self._max_message_bytes:
            reason = f"value of {size} bytes exceeds the limit of {self._max_message_bytes} bytes"
            await self._dead_letter(incoming, reason, DeadLetterKind.OVERSIZE)
            return
        await self._handle_with_retries(incoming)

    async def _handle_with_retries(self, incoming: Incoming) -> None:
        unexpected = 0
        delay = self.retry_delay
        while True:
            try:
                await self._handle(incoming)
            except MessageRejected as exc:
                kind = (
                    DeadLetterKind.MALFORMED
                    if isinstance(exc, MalformedMessage)
                    else DeadLetterKind.REJECTED
                )
                await self._dead_letter(incoming, exc.reason, kind)
                return
            except Exception as exc:
                if not (isinstance(exc, SagaError) and exc.retriable):
                    unexpected += 1
                    if unexpected >= self._unexpected_error_attempts:
                        _log_record(incoming).exception("record_failed", attempts=unexpected)
                        reason = f"unexpected {type(exc).__name__}: {exc}"
                        await self._dead_letter(incoming, reason, DeadLetterKind.EXHAUSTED)
                        return
                _log_record(incoming).warning(
                    "record_retrying", reason=f"{type(exc).__name__}: {exc}", delay=delay
                )
            else:
                self.processed += 1
                return
            self.retried += 1
            if await self.pause(delay):
                raise _Abandoned
            delay = min(delay * 2, self.max_retry_delay)

    async def _dead_letter(self, incoming: Incoming, reason: str, kind: DeadLetterKind) -> None:
        """Dead-letter ``incoming``, waiting out a broker outage: the record must not be
        committed before its dead letter is safely stored."""
        delay = self.retry_delay
        while True:
            try:
                await self._dead_letters.send(incoming, reason, kind=kind)
            except SagaError as exc:
                if not exc.retriable:
                    raise
                _log_record(incoming).warning("dead_letter_retrying", reason=str(exc))
            else:
                self.dead_lettered += 1
                return
            if await self.pause(delay):
                raise _Abandoned
            delay = min(delay * 2, self.max_retry_delay)


def _committable(
    batch: Mapping[Partition, Sequence[Record]], settled: set[tuple[str, int, int]]
) -> dict[Partition, int]:
    """Per partition, up to the first record not settled: a later record being done must
    not carry an earlier unfinished one past the committed offset."""
    offsets: dict[Partition, int] = {}
    for partition, records in batch.items():
        for record in records:
            if (record.topic, record.partition, record.offset) not in settled:
                break
            offsets[partition] = record.offset + 1
    return offsets


def _decode(record: Record, *, errors: str) -> Incoming:
    return Incoming(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key.decode("utf-8", errors) if record.key is not None else None,
        value=record.value,
        headers={name: (value or b"").decode("utf-8", errors) for name, value in record.headers},
        timestamp_ms=record.timestamp,
    )


def _log_record(incoming: Incoming) -> Any:
    return log.bind(
        topic=incoming.topic,
        partition=incoming.partition,
        offset=incoming.offset,
        key=incoming.key,
    )
