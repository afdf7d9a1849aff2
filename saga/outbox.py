"""Publishing outbox rows: right after commit by the process that wrote them, and by a
relay that sweeps whatever a crash or a broker outage left unpublished.

The hot path never waits on the database to record a publication: acknowledged message
ids are collected and marked published in one statement per interval (0.1 s: each mark is
a commit, and at load one statement then covers dozens of rows). A row whose
mark was lost is re-sent by the relay later, which is harmless, because every receiver
deduplicates by message id.

Each publisher also samples its outbox every few seconds (:class:`OutboxMonitor`: one
index-only query) into ``saga_outbox_backlog`` and
``saga_outbox_oldest_unpublished_seconds``, and times every acknowledged row into
``saga_outbox_publish_lag_seconds``.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from saga import metrics
from saga.errors import SagaError
from saga.store import outbox as store
from saga.store.database import Database
from saga.store.driver import DriverConnection
from saga.store.outbox import PendingMessage
from saga.transport.message import OutgoingMessage
from saga.transport.port import MessageSender

log = structlog.get_logger("saga.outbox")


@dataclass(frozen=True, slots=True)
class RelaySettings:
    interval: float = 1.0
    """Seconds between sweeps."""
    grace: float = 5.0
    """Seconds a row stays the committing process's to publish before the relay takes it."""
    lease: float = 30.0
    """Seconds a claimed row is hidden from other relays while this one publishes it."""
    batch: int = 500


# Seconds between samples of an outbox's backlog: often enough for an alert, and one
# index-only query each time.
SAMPLE_INTERVAL = 5.0


class OutboxMonitor:
    """Samples the backlog of some outboxes on its own timer, never on the hot path."""

    def __init__(
        self, database: Database, tables: Sequence[str], *, interval: float = SAMPLE_INTERVAL
    ) -> None:
        self.tables = [store.check_table(table) for table in tables]
        self._database = database
        self._interval = interval

    async def sample(self) -> None:
        """Read every table's backlog now and set the gauges."""
        for table in self.tables:
            found = await self._database.run_driver(
                functools.partial(store.backlog, table=table),
                transaction=False,
                name="outbox.backlog",
            )
            metrics.OUTBOX_BACKLOG.labels(table).set(found.unpublished)
            metrics.OUTBOX_OLDEST.labels(table).set(found.oldest_due_seconds)

    async def run(self) -> None:
        """Sample until cancelled; a failed sample is logged and tried at the next turn,
        since a metric must never stop the publishing it watches."""
        while True:
            try:
                await self.sample()
            except Exception as exc:
                log.warning("outbox_sample_failed", tables=self.tables, error=str(exc))
            await asyncio.sleep(self._interval)


class OutboxPublisher:
    """Publishes one outbox table's rows and keeps their ``published_at`` up to date."""

    def __init__(
        self,
        database: Database,
        producer: MessageSender,
        table: str,
        *,
        relay: RelaySettings | None = None,
        flush_interval: float = 0.1,
        sample_interval: float = SAMPLE_INTERVAL,
    ) -> None:
        self.table = store.check_table(table)
        self.monitor = OutboxMonitor(database, [self.table], interval=sample_interval)
        self._database = database
        self._producer = producer
        self._relay = relay or RelaySettings()
        self._flush_interval = flush_interval
        self._to_mark: list[uuid.UUID] = []
        self._delayed: set[asyncio.Task[None]] = set()
        self.published = 0
        self.relayed = 0
        self.failed = 0

    async def publish(self, messages: Sequence[PendingMessage]) -> None:
        """Send committed rows now; what the broker refuses stays for the relay."""
        if not messages:
            return
        started = time.perf_counter()
        results = await self._producer.send_many([_outgoing(m) for m in messages])
        sent = time.perf_counter() - started
        lag = metrics.OUTBOX_PUBLISH_LAG.labels(self.table)
        for message, error in zip(messages, results, strict=True):
            if error is None:
                self._to_mark.append(message.message_id)
                self.published += 1
                # Callers publish right after their commit, so a fresh row's lag is the
                # send; a swept row has waited since it came due.
                lag.observe(sent if message.due_at is None else seconds_since(message.due_at))
            else:
                self.failed += 1
                log.warning(
                    "outbox_publish_failed",
                    table=self.table,
                    message_id=str(message.message_id),
                    topic=message.topic,
                    error=str(error),
                )

    def publish_later(self, message: PendingMessage, delay: float) -> None:
        """Send a committed row once its backoff delay has passed. If the process dies
        first, the relay sends it when it comes due."""
        task = asyncio.get_running_loop().create_task(self._publish_after(message, delay))
        self._delayed.add(task)
        task.add_done_callback(self._delayed.discard)

    async def _publish_after(self, message: PendingMessage, delay: float) -> None:
        await self._database.clock.sleep(delay)
        await self.publish([message])

    async def run(self) -> None:
        """Mark publications and sweep left-behind rows until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._mark_loop())
            group.create_task(self._relay_loop())
            group.create_task(self.monitor.run())

    async def flush(self) -> None:
        """Record every acknowledged publication now (also at shutdown)."""
        if not self._to_mark:
            return
        batch, self._to_mark = self._to_mark, []
        try:
            await self._database.run_driver(
                lambda conn: store.mark_published(conn, self.table, batch),
                transaction=False,
                name="outbox.mark_published",
            )
        except SagaError as exc:
            if not exc.retriable:
                raise
            # Keep them for the next round; meanwhile the relay may re-send a few.
            self._to_mark[:0] = batch
            log.warning("outbox_mark_deferred", table=self.table, rows=len(batch), error=str(exc))

    async def close(self) -> None:
        """Stop delayed sends (the relay owns them now) and record what was published."""
        for task in list(self._delayed):
            task.cancel()
        await asyncio.gather(*self._delayed, return_exceptions=True)
        await self.flush()

    async def drain(self, seconds: float) -> int:
        """At shutdown, send what is due and still unsent, for up to ``seconds``, so that
        nothing this process leaves behind waits for another process's relay; returns how
        many were sent. A broker or database that fails now leaves the rest to the relay."""
        sent = 0
        try:
            async with asyncio.timeout(seconds):
                while (swept := await self.sweep()) > 0:
                    sent += swept
        except TimeoutError:
            log.warning("outbox_drain_unfinished", table=self.table, sent=sent)
        except SagaError as exc:
            log.warning("outbox_drain_failed", table=self.table, sent=sent, error=str(exc))
        return sent

    async def sweep(self) -> int:
        """Publish one batch of rows left behind; returns how many were sent."""

        async def claim(conn: DriverConnection) -> list[PendingMessage]:
            return await store.claim_due(
                conn,
                self.table,
                older_than=self._relay.grace,
                lease=self._relay.lease,
                limit=self._relay.batch,
                skew=self._database.clock.skew,
            )

        due = await self._database.run_driver(claim, transaction=False, name="outbox.claim")
        if not due:
            return 0
        before = self.published
        await self.publish(due)
        sent = self.published - before
        self.relayed += sent
        log.info("outbox_relayed", table=self.table, claimed=len(due), sent=sent)
        return sent

    async def _mark_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval)
            await self.flush()

    async def _relay_loop(self) -> None:
        while True:
            try:
                while await self.sweep() == self._relay.batch:
                    pass  # a full batch: more may be waiting
            except SagaError as exc:
                if not exc.retriable:
                    raise
                log.warning("outbox_relay_deferred", table=self.table, error=str(exc))
            await asyncio.sleep(self._relay.interval)


def seconds_since(moment: datetime) -> float:
    """Seconds from ``moment`` (the database's clock) to now (this host's), never negative."""
    return max((datetime.now(UTC) - moment).total_seconds(), 0.0)


def _outgoing(message: PendingMessage) -> OutgoingMessage:
    return OutgoingMessage(
        topic=message.topic, key=message.key, value=message.payload, headers=message.headers
    )
