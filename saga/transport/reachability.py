"""Whether the broker answers, for ``/ready``.

A process keeps running through a broker outage (:mod:`saga.patience`): its consumers and
producer retry by themselves, and nothing is lost. But an orchestrator watching ``/ready``
should be able to tell a process cut off from its broker for long from one merely between
two polls. :class:`BrokerReachability` asks the bootstrap servers for the cluster's
metadata every :data:`PROBE_EVERY_SECONDS`, on a connection of its own (the consumers'
connections may sit in a long fetch or a rebalance), and says for how long no answer has
come.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import structlog
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

log = structlog.get_logger("saga.transport")

PROBE_EVERY_SECONDS = 5.0
PROBE_TIMEOUT_SECONDS = 5.0


class BrokerReachability:
    """``unreachable_for()``: seconds since the broker last answered a probe while it has
    not answered since (0 while it answers). A process that never reached it counts from
    the watch's start."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        every: float = PROBE_EVERY_SECONDS,
        timeout: float = PROBE_TIMEOUT_SECONDS,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.every = every
        self.timeout = timeout
        self._unanswered_since: float | None = time.monotonic()
        self.probes = 0

    def unreachable_for(self) -> float:
        since = self._unanswered_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    async def probe(self) -> bool:
        """Ask once; True when a bootstrap server answered with the cluster's metadata."""
        client = AIOKafkaClient(
            bootstrap_servers=self.bootstrap_servers,
            request_timeout_ms=int(self.timeout * 1000),
            client_id="saga-reachability",
        )
        try:
            async with asyncio.timeout(self.timeout):
                await client.bootstrap()
        except (KafkaError, OSError, TimeoutError):
            return False
        finally:
            await client.close()
        return True

    async def watch(self) -> None:
        """Probe until cancelled, logging when the broker stops and starts answering."""
        while True:
            answered = await self.probe()
            self.probes += 1
            if answered and self._unanswered_since is not None:
                if self.probes > 1:
                    log.info(
                        "broker_reachable_again", after_seconds=round(self.unreachable_for(), 1)
                    )
                self._unanswered_since = None
            elif not answered and self._unanswered_since is None:
                self._unanswered_since = time.monotonic()
                log.warning("broker_unreachable", bootstrap_servers=self.bootstrap_servers)
            await asyncio.sleep(self.every)

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[BrokerReachability]:
        task = asyncio.ensure_future(self.watch())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
