"""Serialization-failure and deadlock retries per step, for alerting.

Participants report, in each reply, how often they re-ran the step's transaction; the
coordinator records that on the step log (``serialization_retries``, ``deadlock_retries``;
``shared.saga_step_retry_stats`` sums them per hour). This job sums the last
RETRY_ALERT_WINDOW_SECONDS per step into the ``saga_step_db_retries_recent`` gauge and
logs an alert for every step at or over RETRY_ALERT_THRESHOLD: a hot row or a missing
index is making that step's transactions fight.
"""

from __future__ import annotations

from collections import Counter

import structlog

from saga import metrics
from saga.store.driver import DriverConnection
from saga.worker.job import BatchResult, Job, JobContext

log = structlog.get_logger("saga.alerts")

_KINDS = ("serialization", "deadlock")
_exported: set[tuple[str, str]] = set()


async def _recent(conn: DriverConnection, window: float) -> list[dict[str, object]]:
    rows = await conn.fetch(
        """
        SELECT journey, step_name, action,
               sum(serialization_retries)::bigint AS serialization,
               sum(deadlock_retries)::bigint AS deadlock,
               count(*) AS answers
        FROM shared.saga_step_log
        WHERE finished_at >= now() - make_interval(secs => $1)
          AND (serialization_retries > 0 OR deadlock_retries > 0)
        GROUP BY journey, step_name, action
        """,
        window,
    )
    return [dict(row) for row in rows]


async def retry_monitor(ctx: JobContext) -> BatchResult:
    window = ctx.settings.retry_alert_window_seconds
    threshold = ctx.settings.retry_alert_threshold
    rows = await ctx.database.run_driver(
        lambda conn: _recent(conn, window), transaction=False, name="worker.retry_monitor"
    )
    seen: set[tuple[str, str]] = set()
    counts: Counter[str] = Counter()
    for row in rows:
        journey, step = str(row["journey"]), str(row["step_name"])
        seen.add((journey, step))
        for kind in _KINDS:
            metrics.STEP_DB_RETRIES.labels(journey, step, kind).set(float(str(row[kind])))
        total = int(str(row["serialization"])) + int(str(row["deadlock"]))
        if total >= threshold:
            counts["steps_alerting"] += 1
            log.error(
                "step_db_retries_high",
                alert="contention",
                journey=journey,
                step=step,
                action=row["action"],
                serialization_retries=row["serialization"],
                deadlock_retries=row["deadlock"],
                answers_with_retries=row["answers"],
                window_seconds=window,
                threshold=threshold,
            )
    # A step that stopped retrying must read 0, not its last alarming value.
    for journey, step in _exported - seen:
        for kind in _KINDS:
            metrics.STEP_DB_RETRIES.labels(journey, step, kind).set(0)
    _exported.update(seen)
    counts["steps_retrying"] = len(seen)
    return BatchResult(0, counts)


RETRY_MONITOR = Job(
    name="retry_monitor",
    run=retry_monitor,
    interval=60.0,
    batch=1,
    description=(
        "serialization and deadlock retries per step over the alert window: exported as "
        "saga_step_db_retries_recent, alert logged at RETRY_ALERT_THRESHOLD"
    ),
    repeat_when_full=False,
)
