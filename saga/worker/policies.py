"""What a journey service declares for the worker to maintain on its behalf."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from saga.settings import PartitionExpiry, Settings


@dataclass(frozen=True, slots=True)
class PartitionPolicy:
    """A monthly range-partitioned table: partitions are created PARTITIONS_MONTHS_AHEAD
    ahead, and, with ``retention_months``, detached (or dropped, as ``expiry`` says) once
    their whole month is older than that. A TimescaleDB hypertable in the table's place
    has its chunks of those months dropped instead, and only when ``expiry`` is DROP:
    TimescaleDB cannot detach a chunk and keep it.

    Either setting may be a function of the :class:`~saga.settings.Settings`, so that an
    operator's setting decides it at each run (the health journey's
    HEALTH_METRICS_RETENTION_MONTHS and HEALTH_METRICS_RETENTION_MODE)."""

    table: str
    """The partitioned parent, ``schema.table``."""
    retention_months: int | Callable[[Settings], int | None] | None = None
    """Months of partitions kept attached; None keeps every partition."""
    expiry: PartitionExpiry | Callable[[Settings], PartitionExpiry] = PartitionExpiry.DETACH
    """What becomes of a partition past retention: detached (kept as a table of its own
    for an operator to archive or drop) or dropped with its rows."""

    def months_kept(self, settings: Settings) -> int | None:
        """The retention in force under ``settings``; None keeps every partition."""
        months = self.retention_months
        return months(settings) if callable(months) else months

    def expiry_under(self, settings: Settings) -> PartitionExpiry:
        """What becomes of an expired partition under ``settings``."""
        expiry = self.expiry
        return expiry(settings) if callable(expiry) else expiry
