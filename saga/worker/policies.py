"""What a journey service declares for the worker to maintain on its behalf."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PartitionPolicy:
    """A monthly range-partitioned table: partitions are created PARTITIONS_MONTHS_AHEAD
    ahead, and, with ``retention_months``, detached once their whole month is older than
    that (the detached table is kept for an operator to archive or drop)."""

    table: str
    """The partitioned parent, ``schema.table``."""
    retention_months: int | None = None
    """Months of partitions kept attached; None keeps every partition."""
