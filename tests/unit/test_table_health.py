"""The table maintenance job's decisions: when to vacuum, and how bloated an index is."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from saga.worker.table_health import (
    IndexShape,
    TableStats,
    VacuumReason,
    VacuumThresholds,
    estimate_btree_bloat,
    vacuum_reason,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
THRESHOLDS = VacuumThresholds(dead_tuples=1000, dead_percent=20.0, behind_seconds=3600)


def table(**changes: object) -> TableStats:
    """A table past both thresholds (3,000 dead of 10,000), vacuumed by autovacuum two
    hours ago, with autovacuum on."""
    stats = TableStats(
        table="shared.saga_outbox",
        live_tuples=7000,
        dead_tuples=3000,
        modified_since_analyze=0,
        last_vacuum=None,
        last_autovacuum=NOW - timedelta(hours=2),
        last_analyze=None,
        last_autoanalyze=NOW - timedelta(hours=2),
        autovacuum_enabled=True,
    )
    return replace(stats, **changes)  # type: ignore[arg-type]


def test_autovacuum_behind_past_both_thresholds_and_no_vacuum_for_the_window() -> None:
    assert vacuum_reason(table(), THRESHOLDS, NOW) is VacuumReason.AUTOVACUUM_BEHIND


def test_a_table_never_vacuumed_counts_as_behind() -> None:
    assert (
        vacuum_reason(table(last_autovacuum=None), THRESHOLDS, NOW)
        is VacuumReason.AUTOVACUUM_BEHIND
    )


@pytest.mark.parametrize(
    "recent",
    [
        {"last_autovacuum": NOW - timedelta(minutes=59)},
        # The worker's own (manual) vacuum counts as much as autovacuum's.
        {"last_vacuum": NOW - timedelta(minutes=1)},
    ],
)
def test_a_recent_vacuum_of_either_kind_leaves_autovacuum_to_it(recent: dict[str, object]) -> None:
    assert vacuum_reason(table(**recent), THRESHOLDS, NOW) is None


def test_autovacuum_off_is_vacuumed_however_recent_the_last_vacuum() -> None:
    stats = table(autovacuum_enabled=False, last_vacuum=NOW - timedelta(seconds=1))
    assert vacuum_reason(stats, THRESHOLDS, NOW) is VacuumReason.AUTOVACUUM_OFF


@pytest.mark.parametrize(
    ("live", "dead"),
    [
        (100_000, 999),  # under the count, whatever the share
        (0, 999),  # all dead, but too few
        (9000, 2000),  # enough dead, but 18 % < 20 %
    ],
)
def test_under_either_threshold_nothing_is_vacuumed(live: int, dead: int) -> None:
    for enabled in (True, False):
        stats = table(live_tuples=live, dead_tuples=dead, autovacuum_enabled=enabled)
        assert vacuum_reason(stats, THRESHOLDS, NOW) is None


def test_exactly_at_the_thresholds_is_past_them() -> None:
    stats = table(live_tuples=4000, dead_tuples=1000, autovacuum_enabled=False)
    assert stats.dead_percent == 20.0
    assert vacuum_reason(stats, THRESHOLDS, NOW) is VacuumReason.AUTOVACUUM_OFF


def test_an_empty_table_has_no_dead_share() -> None:
    assert table(live_tuples=0, dead_tuples=0).dead_percent == 0.0


def index(**changes: object) -> IndexShape:
    """A uuid index: 16-byte keys, no nulls, 8 kB pages at fillfactor 90."""
    shape = IndexShape(
        table="t.t",
        index="t.t_pkey",
        pages=1000,
        entries=100_000,
        block_size=8192,
        fillfactor=90,
        max_align=8,
        key_width=16.0,
        nullable=False,
    )
    return replace(shape, **changes)  # type: ignore[arg-type]


def test_bloat_is_the_share_of_pages_beyond_what_the_entries_need() -> None:
    # An entry: 8 header + 16 key + 4 line pointer = 28 bytes; (8192 - 40) * 0.9 / 28
    # = 262 per page; 100,000 entries need 382 pages and the metapage: 383 of 1,000.
    bloat = estimate_btree_bloat(index())
    assert bloat is not None
    assert bloat.size_bytes == 1000 * 8192
    assert bloat.bloat_bytes == (1000 - 383) * 8192
    assert bloat.ratio == pytest.approx(0.617)


def test_nullable_keys_and_odd_widths_are_aligned() -> None:
    # Header 8 + 4 (null bitmap) → 16; key 13 → 16; + 4 = 36 bytes: 203 per page;
    # 100,000 entries need 493 pages and the metapage.
    bloat = estimate_btree_bloat(index(key_width=13.0, nullable=True))
    assert bloat is not None
    assert bloat.bloat_bytes == (1000 - 494) * 8192


def test_a_packed_index_has_no_bloat() -> None:
    bloat = estimate_btree_bloat(index(pages=383))
    assert bloat is not None
    assert (bloat.bloat_bytes, bloat.ratio) == (0, 0.0)
    # Deduplicated equal keys take fewer pages than the estimate: still no bloat, not less.
    smaller = estimate_btree_bloat(index(pages=100))
    assert smaller is not None
    assert smaller.ratio == 0.0


@pytest.mark.parametrize(
    "unknown",
    [
        {"key_width": None},  # a column without statistics
        {"entries": -1.0},  # never vacuumed or analyzed
        {"pages": 0},
    ],
)
def test_without_statistics_there_is_no_estimate(unknown: dict[str, object]) -> None:
    assert estimate_btree_bloat(index(**unknown)) is None
