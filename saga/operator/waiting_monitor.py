"""The ``saga_waiting`` gauges: how many sagas wait for a signal, sampled from the log.

A waiting saga holds no command and no process's memory, so no process sees it go by:
the count is read from ``shared.saga_waiting`` on a timer (the worker runs it beside its
outbox sampler), never on the hot path.
"""

from __future__ import annotations

import asyncio

import structlog

from saga import metrics
from saga.store.database import Database
from saga.store.driver import DriverConnection

log = structlog.get_logger("saga.operator")

SAMPLE_INTERVAL = 15.0
"""Seconds between samples: a wait lasts minutes to days."""

_COUNTS = """
SELECT definition_name, count(*) AS waiting, count(*) FILTER (WHERE overdue) AS overdue
FROM shared.saga_waiting
GROUP BY definition_name
"""


class WaitingMonitor:
    """Sets ``saga_waiting`` and ``saga_waiting_overdue`` per definition."""

    def __init__(self, database: Database, *, interval: float = SAMPLE_INTERVAL) -> None:
        self._database = database
        self._interval = interval
        self._seen: set[str] = set()

    async def sample(self) -> dict[str, tuple[int, int]]:
        """Read the counts now, set the gauges and return them (definition → waiting,
        overdue). A definition with no waiting saga left is set to 0, not forgotten, so
        its series falls to zero instead of freezing at its last value."""

        async def read(conn: DriverConnection) -> dict[str, tuple[int, int]]:
            rows = await conn.fetch(_COUNTS)
            return {row["definition_name"]: (row["waiting"], row["overdue"]) for row in rows}

        counts = await self._database.run_driver(read, transaction=False, name="waiting.sample")
        for definition in self._seen - counts.keys():
            metrics.SAGAS_WAITING.labels(definition).set(0)
            metrics.SAGAS_WAITING_OVERDUE.labels(definition).set(0)
        for definition, (waiting, overdue) in counts.items():
            metrics.SAGAS_WAITING.labels(definition).set(waiting)
            metrics.SAGAS_WAITING_OVERDUE.labels(definition).set(overdue)
        self._seen |= counts.keys()
        return counts

    async def run(self) -> None:
        """Sample until cancelled; a failed sample is logged and tried at the next turn."""
        while True:
            try:
                await self.sample()
            except Exception as exc:
                log.warning("waiting_sample_failed", error=str(exc))
            await asyncio.sleep(self._interval)
