"""The console's reads: what needs an operator (``saga.operator.attention``) and the
figures over time (``saga.operator.trends``), against sagas really run into every state
(``operator_scene``). Expected values come from the saga log itself, read here with plain
SQL, and from what the scene is known to have done.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest

from saga.errors import ConfigurationError
from saga.masking import summarize
from saga.operator import attention, queries, trends
from saga.store import Database
from saga.store.driver import DriverConnection
from tests.integration.operator_scene import Scene, operator_scene

pytestmark = pytest.mark.integration

__all__ = ["operator_scene"]  # the fixture, imported for this module

T = TypeVar("T")


def read(scene: Scene, work: Callable[[DriverConnection], Awaitable[T]]) -> T:
    """``work`` in one read-only transaction on the scene, as the console runs it."""

    async def run() -> T:
        database = Database.from_settings(scene.env.settings, url=scene.url)
        try:
            return await queries.read_only(database, work, name="tests.attention")
        finally:
            await database.dispose()

    return asyncio.run(run())


def database_now(scene: Scene) -> datetime:
    now = scene.query("SELECT now() AS now")[0]["now"]
    assert isinstance(now, datetime)
    return now


def attention_at(scene: Scene, **options: Any) -> attention.Attention:
    return read(scene, lambda conn: attention.needs_attention(conn, **options))


# --- needs attention ------------------------------------------------------------------


def test_the_parked_saga_is_grouped_under_its_reason(operator_scene: Scene) -> None:
    found = attention_at(operator_scene)
    (parked,) = operator_scene.query(
        "SELECT id, error, started_at, updated_at FROM shared.saga_instance WHERE status = 'parked'"
    )
    assert parked["id"] == operator_scene.sagas["parked"]
    (group,) = found.parked
    assert group.definition == "test_booking"
    assert group.reason == summarize(parked["error"])
    assert group.reason  # the safe head only
    assert group.reason != parked["error"]
    assert group.sagas == 1
    assert list(group.saga_ids) == [parked["id"]]
    assert group.oldest_started_at == parked["started_at"]
    assert group.first_parked_at == group.last_parked_at == parked["updated_at"]
    assert not found.empty


def test_nothing_is_stuck_until_its_attempt_has_waited_long_enough(operator_scene: Scene) -> None:
    # The scene was built seconds ago: nothing has been in flight for five minutes.
    assert attention_at(operator_scene).stuck == []
    in_flight = operator_scene.query(
        "SELECT id FROM shared.saga_instance WHERE status IN ('running', 'compensating')"
    )
    assert len(in_flight) == 2
    short = attention_at(operator_scene, stuck_after=timedelta(milliseconds=1))
    assert sum(g.sagas for g in short.stuck) == 2


@pytest.mark.parametrize(
    ("later", "label", "lower", "upper"),
    [
        (timedelta(minutes=10), "5 min to 30 min", timedelta(minutes=5), timedelta(minutes=30)),
        (timedelta(hours=3), "2 h to 1 day", timedelta(hours=2), timedelta(days=1)),
        (timedelta(days=2), "over 1 day", timedelta(days=1), None),
    ],
)
def test_the_in_flight_sagas_are_stuck_by_how_long(
    operator_scene: Scene, later: timedelta, label: str, lower: timedelta, upper: timedelta | None
) -> None:
    now = database_now(operator_scene) + later
    (group,) = attention_at(operator_scene, now=now).stuck
    assert (group.label, group.lower, group.upper) == (label, lower, upper)
    assert group.sagas == 2
    assert group.compensating == 1
    assert sorted(group.definitions) == [("test_booking", 1), ("test_booking_short", 1)]
    roles = {operator_scene.role_of(s.saga_id): s for s in group.samples}
    assert roles.keys() == {"running", "compensating"}
    facts = {
        r["id"]: r
        for r in operator_scene.query(
            "SELECT id, status, step_started_at FROM shared.saga_instance "
            "WHERE status IN ('running', 'compensating')"
        )
    }
    for sample in group.samples:
        assert (sample.status, sample.since) == (
            facts[sample.saga_id]["status"],
            facts[sample.saga_id]["step_started_at"],
        )
    assert [s.since for s in group.samples] == sorted(s.since for s in group.samples)
    assert group.oldest_since == group.samples[0].since


def test_a_saga_backdated_by_hand_lands_in_its_own_bucket(operator_scene: Scene) -> None:
    running = operator_scene.sagas["running"]
    # The running saga's attempt moved 40 minutes back (and put back after), the
    # compensating one left where it is.
    backdate = (
        "UPDATE shared.saga_instance SET step_started_at = step_started_at {} "
        "interval '40 minutes' WHERE id = $1"
    )
    operator_scene.query(backdate.format("-"), running)
    try:
        (group,) = attention_at(operator_scene, now=database_now(operator_scene)).stuck
    finally:
        operator_scene.query(backdate.format("+"), running)
    assert (group.label, group.sagas, group.compensating) == ("30 min to 2 h", 1, 0)
    assert [s.saga_id for s in group.samples] == [running]
    assert group.definitions == [("test_booking_short", 1)]


def test_samples_are_capped(operator_scene: Scene) -> None:
    now = database_now(operator_scene) + timedelta(minutes=10)
    (group,) = attention_at(operator_scene, now=now, sample=1).stuck
    assert group.sagas == 2
    assert len(group.samples) == 1
    assert group.samples[0].since == group.oldest_since


def test_the_compensation_that_keeps_failing_is_listed(operator_scene: Scene) -> None:
    found = attention_at(operator_scene)
    (failing,) = found.failing_compensations
    assert found.failing_total == 1
    assert failing.saga_id == operator_scene.sagas["parked"]
    assert (failing.definition, failing.status.value, failing.step_name) == (
        "test_booking",
        "parked",
        "award",
    )
    assert failing.compensation == "revoke"
    assert (failing.attempts, failing.failures) == (3, 3)  # retried, retried, failed
    log = operator_scene.query(
        "SELECT error, started_at FROM shared.saga_step_log WHERE saga_instance_id = $1 "
        "AND action = 'compensate' AND step_name = 'award' ORDER BY created_at, started_at",
        failing.saga_id,
    )
    assert failing.last_error == summarize(log[-1]["error"])
    assert failing.since == log[0]["started_at"]


def test_a_lower_threshold_also_lists_the_compensation_in_flight(operator_scene: Scene) -> None:
    found = attention_at(operator_scene, failing_after=1)
    roles = {operator_scene.role_of(f.saga_id): f for f in found.failing_compensations}
    assert roles.keys() == {"parked", "compensating"}
    assert (roles["compensating"].attempts, roles["compensating"].failures) == (1, 0)
    assert roles["compensating"].last_error is None
    capped = attention_at(operator_scene, failing_after=1, sample=1)
    assert len(capped.failing_compensations) == 1
    assert capped.failing_total == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stuck_after": timedelta(0)}, "stuck_after must be positive"),
        ({"failing_after": 0}, "failing_after must be at least 1"),
        ({"sample": 0}, "sample must be at least 1"),
    ],
)
def test_bad_attention_options_are_refused(
    operator_scene: Scene, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        attention_at(operator_scene, **options)


# Indexes that reach unfinished sagas only (a status, what is in flight), or one saga's
# rows; saga_instance_started_at_idx, say, would read every saga there is.
UNFINISHED_INDEXES = {
    "saga_instance_status_created_at_idx",
    "saga_instance_in_flight_idx",
    "saga_definition_pkey",
    "saga_step_log_saga_instance_id_idx",
}


def test_the_attention_queries_can_be_served_by_indexes(operator_scene: Scene) -> None:
    """With sequential scans made a last resort (the scene's tables are tiny), each query
    reaches the unfinished sagas, and their log rows, by an index made for them."""
    now = database_now(operator_scene)
    plans: dict[str, list[tuple[str, str]]] = {}

    async def explain(conn: DriverConnection) -> None:
        await conn.execute("SET LOCAL enable_seqscan = off")
        for name, sql, args in (
            ("parked", attention._PARKED, (20,)),
            ("stuck", attention._STUCK, (now, [300.0, 1800.0], timedelta(minutes=5), 20)),
            ("failing", attention._FAILING, (3, 20)),
        ):
            plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
            if isinstance(plan, str):  # a bare asyncpg connection leaves json as text
                plan = json.loads(plan)
            plans[name] = sorted(_scans(plan[0]["Plan"]))

    read(operator_scene, explain)
    for name, scans in plans.items():
        assert scans, name
        assert all(node != "Seq Scan" for node, _ in scans), (name, scans)
        assert {index for _, index in scans} <= UNFINISHED_INDEXES, (name, scans)
    assert ("Index Scan", "saga_step_log_saga_instance_id_idx") in plans["failing"]


def _scans(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """What each scan of a plan reads: (node type, the index, or the table when it has
    no index)."""
    found = []
    if "Index Name" in plan:
        found.append((plan["Node Type"], plan["Index Name"]))
    elif plan["Node Type"] == "Seq Scan":
        found.append((plan["Node Type"], plan["Relation Name"]))
    for child in plan.get("Plans", []):
        found.extend(_scans(child))
    return found


# --- trends ---------------------------------------------------------------------------


def test_outcomes_over_time_count_every_saga_started_in_the_window(operator_scene: Scene) -> None:
    until = database_now(operator_scene) + timedelta(minutes=1)
    since = until - timedelta(days=4)
    bucket = timedelta(hours=1)
    found = read(
        operator_scene,
        lambda conn: trends.outcomes_over_time(conn, since=since, until=until, bucket=bucket),
    )
    expected = {
        (r["definition_name"], r["status"]): r["n"]
        for r in operator_scene.query(
            "SELECT definition_name, status, count(*) AS n FROM shared.saga_instance GROUP BY 1, 2"
        )
    }
    totals: Counter[tuple[str, str]] = Counter()
    for row in found:
        totals[(row.definition, row.status.value)] += row.sagas
        assert (row.bucket - since) % bucket == timedelta(0)
        assert since <= row.bucket < until
    assert dict(totals) == expected
    # The two backdated sagas started three days before the others, in buckets of their own.
    buckets = [row.bucket for row in found]
    assert buckets == sorted(buckets)
    assert buckets[0] < until - timedelta(days=2)
    assert buckets[-1] >= until - timedelta(hours=2)

    short = read(
        operator_scene,
        lambda conn: trends.outcomes_over_time(
            conn, since=since, until=until, bucket=bucket, definitions=["test_booking_short"]
        ),
    )
    assert [(r.definition, r.status.value, r.sagas) for r in short] == [
        ("test_booking_short", "running", 1)
    ]


def test_step_latency_over_time_has_ordered_percentiles(operator_scene: Scene) -> None:
    until = database_now(operator_scene) + timedelta(minutes=1)
    since = until - timedelta(hours=1)
    found = read(
        operator_scene,
        lambda conn: trends.step_latency_over_time(
            conn, since=since, until=until, bucket=timedelta(minutes=5)
        ),
    )
    assert found
    for row in found:
        assert 0 <= row.p50_ms <= row.p95_ms <= row.p99_ms <= row.max_ms, row
        assert row.action in ("execute", "compensate")
    outcomes = ", ".join(f"'{s}'" for s in queries.OUTCOMES)
    expected = {
        (r["definition_name"], r["step_name"], r["action"]): r["n"]
        for r in operator_scene.query(
            "SELECT i.definition_name, l.step_name, l.action, count(*) AS n "
            "FROM shared.saga_step_log l JOIN shared.saga_instance i "
            "ON i.id = l.saga_instance_id "
            f"WHERE l.status IN ({outcomes}) AND l.actor IS NULL AND l.finished_at IS NOT NULL "
            "GROUP BY 1, 2, 3"
        )
    }
    totals: Counter[tuple[str, str, str]] = Counter()
    for row in found:
        totals[(row.definition, row.step_name, row.action)] += row.answers
    assert dict(totals) == expected
    # What the scene is known to have done: ``revoke`` was tried three times and failed.
    assert totals[("test_booking", "award", "compensate")] >= 3


def test_definition_status_counts_cover_every_saga(operator_scene: Scene) -> None:
    found = read(operator_scene, trends.definition_status_counts)
    assert found == {
        ("test_booking", 1): {
            "completed": 4,
            "compensated": 2,
            "compensating": 1,
            "parked": 1,
        },
        ("test_booking_short", 1): {"running": 1},
    }


@pytest.mark.parametrize("query", [trends.outcomes_over_time, trends.step_latency_over_time])
@pytest.mark.parametrize(
    ("since", "until", "bucket", "message"),
    [
        (10, 10, timedelta(hours=1), r"until \(.*\) must be after since"),
        (10, 5, timedelta(hours=1), r"until \(.*\) must be after since"),
        (0, 10, timedelta(0), "bucket must be positive"),
        (0, 10, timedelta(minutes=-5), "bucket must be positive"),
        (0, 24 * 30, timedelta(minutes=1), "43200 buckets of .* at most 500"),
    ],
)
def test_bad_windows_are_refused(
    operator_scene: Scene,
    query: Callable[..., Awaitable[list[Any]]],
    since: int,
    until: int,
    bucket: timedelta,
    message: str,
) -> None:
    origin = database_now(operator_scene)
    with pytest.raises(ConfigurationError, match=message):
        read(
            operator_scene,
            lambda conn: query(
                conn,
                since=origin + timedelta(hours=since),
                until=origin + timedelta(hours=until),
                bucket=bucket,
            ),
        )


def test_exactly_the_most_buckets_is_allowed(operator_scene: Scene) -> None:
    until = database_now(operator_scene)
    since = until - timedelta(minutes=500)
    assert trends.check_window(since, until, timedelta(minutes=1)) == trends.MAX_BUCKETS
    with pytest.raises(ConfigurationError, match="501 buckets"):
        trends.check_window(since - timedelta(seconds=1), until, timedelta(minutes=1))
