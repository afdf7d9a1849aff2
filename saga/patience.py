"""Keep a process's work going while its broker cannot be reached.

A process that starts while the broker is down (a broker restart, a deploy that brings
both up at once), or whose consumer gives up on it, would otherwise exit and leave it to
its orchestrator to restart it in a loop. Instead it waits with backoff and starts its
work again, saying so in the log; meanwhile ``/ready`` answers 503 (nothing consumes) and
``/live`` 200 (the process is fine: the broker is not). Nothing is lost either way: what
it had committed waits in its outbox, and what it had not is redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from saga.errors import BrokerUnavailable

log = structlog.get_logger("saga.patience")

_FIRST_DELAY = 0.5
_MAX_DELAY = 10.0
# Work that ran this long before the broker failed it had recovered: back off from the
# start again.
_RECOVERED_AFTER = 60.0


class UntilTheBrokerIsBack:
    """``run()`` runs ``work()`` and runs it again after each :class:`BrokerUnavailable`
    (waiting 0.5 s, doubling to 10 s), until it ends by itself or ``stop()`` is called."""

    def __init__(
        self,
        name: str,
        work: Callable[[], Awaitable[None]],
        stop: Callable[[], Awaitable[None]],
    ) -> None:
        self.name = name
        self._work = work
        self._stop = stop
        self._stopping = asyncio.Event()
        self.outages = 0

    async def run(self) -> None:
        delay = _FIRST_DELAY
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                await self._work()
                return
            except BrokerUnavailable as exc:
                if self._stopping.is_set():
                    return
                if time.monotonic() - began > _RECOVERED_AFTER:
                    delay = _FIRST_DELAY
                self.outages += 1
                log.warning(
                    "broker_unavailable_waiting",
                    process=self.name,
                    error=str(exc),
                    retry_in_seconds=delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, _MAX_DELAY)

    async def stop(self) -> None:
        self._stopping.set()
        await self._stop()
