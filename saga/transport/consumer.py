"""Consuming from Kafka in batches: aiokafka's poll loop around the shared dispatch.

This module fetches, commits and follows the group's rebalances; what happens to each
record (per-key order, concurrency, retries, dead letters) and which offsets may be
committed is :class:`~saga.transport.dispatch.KeyedDispatch`'s, shared with every other
transport. Offsets are committed only after the records before them are settled, so a
crash or a rebalance redelivers instead of losing.

Each member exports ``saga_consumer_lag_messages{group, topic, partition}`` for the
partitions it holds: the partition's highwater (from the last fetch response) minus this
member's position, refreshed at most once a second from the poll loop; a partition's series
goes when the partition does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError, RecordTooLargeError

from saga import metrics
from saga.errors import BrokerUnavailable, ConfigurationError
from saga.transport.dead_letter import DeadLetters
from saga.transport.dispatch import Handler, Incoming, KeyedDispatch, Record
from saga.transport.port import Hook

__all__ = ["BatchConsumer", "Handler", "Incoming"]

log = structlog.get_logger("saga.transport")

# How long one poll waits for records locally; it bounds how soon stop() is noticed. The
# broker-side wait (fetch_max_wait_ms) is what sets latency.
_POLL_TIMEOUT_MS = 100
_DEFAULT_FETCH_BYTES = 1024 * 1024
# Seconds between refreshes of the lag gauges; reading them costs no round trip.
_LAG_REFRESH_SECONDS = 1.0
# A position not known yet would be fetched from the broker: not worth stalling the poll.
_POSITION_WAIT_SECONDS = 0.05
# A consumer counts as idle after this long without a record: traffic with shorter gaps
# (one saga after another) keeps the configured fetch wait.
_IDLE_AFTER_SECONDS = 1.0
# An idle consumer's fetches wait this fraction of the time it has been idle (at most
# idle_poll_ms), so a short quiet costs a short wait.
_IDLE_FRACTION = 0.25
# A commit takes milliseconds; one that takes this long is stuck on a broker error that
# aiokafka retries forever. The offsets are left for a later batch's commit to cover.
_COMMIT_TIMEOUT_SECONDS = 5.0


class BatchConsumer:
    """Runs ``handle`` over the records of ``topics`` as a member of ``group_id``.

    ``await run()`` until ``await stop()``. ``ready`` is set once the group has given this
    member its partitions for the first time; ``processed``, ``dead_lettered`` and
    ``retried`` count records handled, records dead-lettered and retries made, and
    ``rebalances`` the assignments received after the first. ``on_rebalance`` is awaited
    from the poll loop after each of those (see :meth:`_after_rebalance`).
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topics: Sequence[str],
        group_id: str,
        handle: Handler,
        dead_letters: DeadLetters,
        client_id: str,
        fetch_max_wait_ms: int,
        max_message_bytes: int,
        idle_poll_ms: int = 0,
        max_concurrency: int = 64,
        max_batch: int = 500,
        session_timeout_ms: int = 6000,
        heartbeat_interval_ms: int = 2000,
        unexpected_error_attempts: int = 3,
        retry_delay: float = 0.05,
        max_retry_delay: float = 2.0,
        on_rebalance: Hook | None = None,
    ) -> None:
        if not topics:
            raise ConfigurationError("a BatchConsumer needs at least one topic")
        if max_batch < 1:
            raise ConfigurationError("max_batch must be >= 1")
        self._dispatch = KeyedDispatch(
            handle=handle,
            dead_letters=dead_letters,
            group_id=group_id,
            max_message_bytes=max_message_bytes,
            max_concurrency=max_concurrency,
            unexpected_error_attempts=unexpected_error_attempts,
            retry_delay=retry_delay,
            max_retry_delay=max_retry_delay,
        )
        self.bootstrap_servers = bootstrap_servers
        self.topics = tuple(topics)
        self.group_id = group_id
        self.client_id = client_id
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._idle_poll_ms = idle_poll_ms
        self._max_message_bytes = max_message_bytes
        self._max_batch = max_batch
        self._session_timeout_ms = session_timeout_ms
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._on_rebalance = on_rebalance
        self._closed = asyncio.Event()
        self._running = False
        self.ready = asyncio.Event()
        self._assigned: frozenset[tuple[str, int]] = frozenset()
        # Bumped by every rebalance; a batch remembers the one it was fetched under.
        self._assignments = 0
        # The rebalance on_rebalance last ran for.
        self._hooked = 0
        self.lag = _Lag(group_id)
        self.rebalances = 0
        # Times this member went from its configured fetch wait to a longer, idle one.
        self.drowsy = 0

    @property
    def processed(self) -> int:
        return self._dispatch.processed

    @property
    def dead_lettered(self) -> int:
        return self._dispatch.dead_lettered

    @property
    def retried(self) -> int:
        return self._dispatch.retried

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until :meth:`stop`. Raises :class:`BrokerUnavailable` if the broker cannot
        be reached at start or fails for good; a passing broker outage is waited out."""
        if self._running:
            raise ConfigurationError("BatchConsumer.run() is already running")
        self._running = True
        self._closed.clear()
        consumer = self._new_consumer()
        try:
            if not self._dispatch.stopping.is_set():
                await self._start(consumer)
                await self._consume(consumer)
        finally:
            self.lag.clear()
            try:
                await consumer.stop()
            finally:
                self._running = False
                self._closed.set()
                log.info("consumer_stopped", group_id=self.group_id, topics=self.topics)

    async def stop(self, *, grace: float = 10.0) -> None:
        """Take no new batch; let the one in progress finish and commit for up to ``grace``
        seconds, then give up on the rest of it (it is redelivered) and close."""
        self._dispatch.request_stop(grace)
        if self._running:
            await self._closed.wait()

    def assignment(self) -> frozenset[tuple[str, int]]:
        """The (topic, partition) pairs this member holds since the last rebalance."""
        return self._assigned

    def _new_consumer(self) -> Any:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            # A record at the size limit must fit in one partition fetch, or aiokafka skips
            # it with RecordTooLargeError instead of handing it over to be dead-lettered.
            max_partition_fetch_bytes=max(_DEFAULT_FETCH_BYTES, 2 * self._max_message_bytes),
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=self._heartbeat_interval_ms,
        )
        consumer.subscribe(list(self.topics), listener=_Assignments(self))
        return consumer

    async def _start(self, consumer: Any) -> None:
        try:
            await consumer.start()
        except KafkaError as exc:
            raise BrokerUnavailable(
                f"cannot connect to Kafka at {self.bootstrap_servers}: {exc}"
            ) from exc
        log.info("consumer_started", group_id=self.group_id, topics=self.topics)

    async def _consume(self, consumer: Any) -> None:
        dispatch = self._dispatch
        delay = dispatch.retry_delay
        last_record = time.monotonic()
        while not dispatch.stopping.is_set():
            try:
                batch = await consumer.getmany(
                    timeout_ms=_POLL_TIMEOUT_MS, max_records=self._max_batch
                )
            except RecordTooLargeError as exc:
                # Only possible when the broker allows more than twice our limit.
                log.error("record_skipped_too_large", reason=str(exc))
                continue
            except KafkaError as exc:
                if not exc.retriable:
                    raise BrokerUnavailable(f"consuming failed: {exc}") from exc
                log.warning("poll_failed", reason=f"{type(exc).__name__}: {exc}")
                if await dispatch.pause(delay):
                    return
                delay = min(delay * 2, dispatch.max_retry_delay)
                continue
            delay = dispatch.retry_delay
            # Taken before the hook awaits: a rebalance during it fences this batch too.
            assignments = self._assignments
            if self.rebalances > self._hooked:
                # After getmany, which may itself have waited out the rebalance and
                # returned the new assignment's first records: they are handled, and
                # committed, only once the hook has run.
                await self._after_rebalance()
            if batch:
                last_record = time.monotonic()
                self._drowse(consumer, 0.0)
                await self._run_batch(consumer, batch, assignments)
            else:
                self._drowse(consumer, time.monotonic() - last_record)
            await self.lag.refresh(consumer)

    def _drowse(self, consumer: Any, idle: float) -> None:
        """Fetch less often the longer nothing comes: after _IDLE_AFTER_SECONDS without a
        record, each fetch waits at the broker a fraction of the idle time, at most
        idle_poll_ms; the first record back restores the configured wait.

        aiokafka fetches in the background whether or not anyone polls, one fetch per
        fetch wait, so an idle stack otherwise spends its CPU on empty fetches. On Kafka a
        long poll ends when data arrives, so the longer wait costs no latency; on Tansu,
        whose long polls run their full wait, the first record after a quiet waits up to
        idle_poll_ms. aiokafka has no public way to change the wait of a running
        consumer: its fetcher reads this attribute for every fetch it builds."""
        wait_ms = self._fetch_max_wait_ms
        if self._idle_poll_ms > 0 and idle >= _IDLE_AFTER_SECONDS:
            wait_ms = max(wait_ms, min(self._idle_poll_ms, int(idle * _IDLE_FRACTION * 1000)))
        fetcher = getattr(consumer, "_fetcher", None)
        if fetcher is None:
            return  # not started yet
        if fetcher._fetch_max_wait_ms == self._fetch_max_wait_ms < wait_ms:
            self.drowsy += 1
        fetcher._fetch_max_wait_ms = wait_ms

    async def _after_rebalance(self) -> None:
        """Run ``on_rebalance`` once per rebalance after the first, from the poll loop (not
        from aiokafka's rebalance callback, which must not block on the broker).

        A broker that came back empty is noticed here: it forgot the group, so every member
        rejoins, and the hook can restore what the broker lost (the topics) before a record
        of the new assignment is handled or committed (Tansu refuses to commit offsets of a
        topic it holds records of but no longer lists). A failing hook is logged and tried
        again at the next rebalance: it must not stop consumption, which may recover
        without it (e.g. a broker that auto-creates)."""
        self._hooked = self.rebalances
        if self._on_rebalance is None:
            return
        try:
            await self._on_rebalance()
        except Exception:
            log.exception("rebalance_hook_failed", group_id=self.group_id)

    # -- one batch ------------------------------------------------------------------------

    async def _run_batch(
        self, consumer: Any, batch: dict[Any, list[Record]], assignments: int
    ) -> None:
        offsets = await self._dispatch.settle(batch)
        if assignments != self._assignments:
            # The group rebalanced while the batch ran. Its offsets belong to the old
            # assignment: after a broker that lost its groups and logs comes back, the
            # same partitions are handed out again (Tansu even keeps generation 0, so the
            # broker accepts the commit) but their logs restart at 0, and committing this
            # batch's old, higher offsets would make whoever takes the partition next skip
            # every record below them (Tansu answers a fetch past the end with nothing,
            # not OFFSET_OUT_OF_RANGE). Not committing costs at most a redelivery, and
            # usually not even that: the rebalance already reset every position from the
            # committed offsets, so the batch is fetched again anyway; handlers are
            # idempotent. A rebalance is rare, so this is no cost on the hot path.
            log.info(
                "commit_skipped_after_rebalance", group_id=self.group_id, partitions=len(offsets)
            )
            return
        await self._commit(consumer, offsets)

    async def _commit(self, consumer: Any, offsets: dict[Any, int]) -> None:
        """Commit what the dispatch settled, for the partitions this member still holds."""
        assigned = consumer.assignment()
        offsets = {
            partition: offset for partition, offset in offsets.items() if partition in assigned
        }
        if not offsets:
            return
        try:
            # aiokafka retries a retriable commit error forever; UNKNOWN_TOPIC_OR_PARTITION,
            # which a broker that lost the topic answers until someone creates it again, is
            # one, and the poll loop would hang here. Giving up only delays the commit.
            async with asyncio.timeout(_COMMIT_TIMEOUT_SECONDS):
                await consumer.commit(offsets)
        except TimeoutError:
            _observe_abandoned_commits()
            log.warning("commit_timed_out", group_id=self.group_id)
        except KafkaError as exc:
            # CommitFailedError: a rebalance gave the partitions to another member, which
            # redelivers what we did not commit; the handlers are idempotent. Any other
            # failure leaves the offsets for a later batch's commit to cover.
            log.warning("commit_failed", group_id=self.group_id, reason=str(exc))


class _Assignments(ConsumerRebalanceListener):  # type: ignore[misc]
    """Sets ``ready`` on the first assignment, so callers know when records will flow."""

    def __init__(self, owner: BatchConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            log.info("partitions_revoked", group_id=self._owner.group_id, count=len(revoked))
        self._owner._assigned = frozenset()
        self._owner._assignments += 1
        self._owner.lag.clear()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions_assigned", group_id=self._owner.group_id, count=len(assigned))
        self._owner._assigned = frozenset((tp.topic, tp.partition) for tp in assigned)
        self._owner._assignments += 1
        if self._owner.ready.is_set():
            self._owner.rebalances += 1
        self._owner.ready.set()


class _Lag:
    """``saga_consumer_lag_messages`` for the partitions one member holds."""

    def __init__(self, group_id: str) -> None:
        self._group_id = group_id
        self._shown: set[tuple[str, int]] = set()
        self._due = 0.0

    async def refresh(self, consumer: Any) -> None:
        """Set each assigned partition's lag, at most once per _LAG_REFRESH_SECONDS; a
        partition not fetched yet (no highwater) is left out until it has been."""
        now = time.monotonic()
        if now < self._due:
            return
        self._due = now + _LAG_REFRESH_SECONDS
        seen: set[tuple[str, int]] = set()
        for tp in consumer.assignment():
            try:
                highwater = consumer.highwater(tp)
                if highwater is None:
                    continue
                async with asyncio.timeout(_POSITION_WAIT_SECONDS):
                    position = await consumer.position(tp)
            except (KafkaError, AssertionError, TimeoutError):
                continue  # revoked meanwhile, or no position yet: the next refresh tells
            key = (tp.topic, tp.partition)
            seen.add(key)
            metrics.CONSUMER_LAG.labels(self._group_id, tp.topic, str(tp.partition)).set(
                max(highwater - position, 0)
            )
        for topic, partition in self._shown - seen:
            _remove_lag(self._group_id, topic, partition)
        self._shown = seen

    def clear(self) -> None:
        """Drop every series this member showed (its partitions were revoked, or it stops)."""
        for topic, partition in self._shown:
            _remove_lag(self._group_id, topic, partition)
        self._shown = set()
        self._due = 0.0


def _observe_abandoned_commits() -> None:
    """Read the outcome of the commit request a timed-out commit left running.

    aiokafka sends each commit request in ``asyncio.shield``; cancelling the commit while
    a request is in flight leaves that task to finish on its own, and asyncio (3.11) drops
    the callback that would have read its error, which it then reports as "Task exception
    was never retrieved". The error is known and harmless (the offsets are committed by a
    later batch), so it is read here. Only a commit that timed out gets here.
    """
    for task in asyncio.all_tasks():
        if getattr(task.get_coro(), "__qualname__", "").endswith("._do_commit_offsets"):
            task.add_done_callback(_read_outcome)


def _read_outcome(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _remove_lag(group_id: str, topic: str, partition: int) -> None:
    # Another member of this group in this process may have removed it first (older
    # prometheus-client versions raise KeyError for a series that is gone).
    with contextlib.suppress(KeyError):
        metrics.CONSUMER_LAG.remove(group_id, topic, str(partition))
