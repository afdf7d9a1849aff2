"""The pages that look across sagas: what needs attention, the definitions drawn, and
the stats over time."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from saga.errors import ConfigurationError, UnknownDefinition
from saga.operator import queries
from saga.operator.attention import Attention, needs_attention
from saga.operator.filters import parse_count, parse_duration
from saga.operator.trends import (
    OutcomeBucket,
    StepLatencyBucket,
    definition_status_counts,
    outcomes_over_time,
    step_latency_over_time,
)
from saga.store.driver import DriverConnection, document
from saga.web.auth import SignedIn, page
from saga.web.charts import line_chart_svg, stacked_bars_svg
from saga.web.console import Console
from saga.web.diagram import definition_svg
from saga.web.responses import render

# Windows the stats page offers, each with the bucket its charts use.
WINDOWS = {
    "1h": timedelta(minutes=2),
    "6h": timedelta(minutes=10),
    "24h": timedelta(hours=1),
    "7d": timedelta(hours=6),
    "30d": timedelta(days=1),
}
STATUS_ORDER = (
    "completed",
    "compensated",
    "aborted",
    "parked",
    "running",
    "compensating",
    "waiting",
)


@page()
async def attention(request: Request, console: Console, user: SignedIn) -> Response:
    params = request.query_params
    stuck_text = params.get("stuck_after") or "5m"
    stuck_after = parse_duration(stuck_text, "stuck_after")
    failing_after = parse_count(
        params.get("failing_after") or "3", "failing_after", low=1, high=100
    )
    now = console.now()

    async def work(conn: DriverConnection) -> Attention:
        return await needs_attention(
            conn, now=now, stuck_after=stuck_after, failing_after=failing_after
        )

    found = await console.read(work, name="attention")
    return render(
        request,
        console,
        "attention.html",
        attention=found,
        stuck_after=stuck_text,
        failing_after=failing_after,
        now=now,
    )


@page()
async def definitions(request: Request, console: Console, user: SignedIn) -> Response:
    async def work(
        conn: DriverConnection,
    ) -> tuple[list[queries.DefinitionSummary], dict[tuple[str, int], dict[str, int]]]:
        return await queries.definitions(conn), await definition_status_counts(conn)

    summaries, counts = await console.read(work, name="definitions")
    return render(
        request,
        console,
        "definitions.html",
        definitions=summaries,
        counts=counts,
        statuses=STATUS_ORDER,
    )


_ONE_DEFINITION = """
SELECT name, version, steps, timeout_seconds, search_attributes, created_at, content_hash
FROM shared.saga_definition WHERE name = $1 AND version = $2
"""


@page()
async def definition(request: Request, console: Console, user: SignedIn) -> Response:
    name = request.path_params["name"]
    version = parse_count(request.path_params["version"], "version", low=1)

    async def work(conn: DriverConnection) -> tuple[Any, dict[tuple[str, int], dict[str, int]]]:
        return await conn.fetchrow(_ONE_DEFINITION, name, version), await definition_status_counts(
            conn
        )

    row, counts = await console.read(work, name="definition")
    if row is None:
        raise UnknownDefinition(f"no saga definition {name[:100]!r} version {version}")
    mine = counts.get((name, version), {})
    steps = document(row["steps"])
    return render(
        request,
        console,
        "definition.html",
        definition=row,
        diagram=definition_svg(steps, counts=mine),
        counts=mine,
        statuses=STATUS_ORDER,
        steps=steps,
    )


@page()
async def stats(request: Request, console: Console, user: SignedIn) -> Response:
    window_text = request.query_params.get("window") or "24h"
    if window_text not in WINDOWS:
        raise ConfigurationError(f"window: one of {', '.join(WINDOWS)}; got {window_text[:20]!r}")
    definition_name = (request.query_params.get("definition") or "").strip()
    chosen = (definition_name,) if definition_name else ()
    bucket = WINDOWS[window_text]
    until = console.now()
    since = _floor(until - parse_duration(window_text, "window"), bucket)

    async def work(
        conn: DriverConnection,
    ) -> tuple[list[OutcomeBucket], list[StepLatencyBucket], list[queries.DefinitionSummary]]:
        outcomes = await outcomes_over_time(
            conn, since=since, until=until, bucket=bucket, definitions=chosen
        )
        latency = await step_latency_over_time(
            conn, since=since, until=until, bucket=bucket, definitions=chosen
        )
        return outcomes, latency, await queries.definitions(conn)

    outcomes, latency, summaries = await console.read(work, name="stats")
    return render(
        request,
        console,
        "stats.html",
        window=window_text,
        windows=list(WINDOWS),
        definition=definition_name,
        definition_names=sorted({s.name for s in summaries}),
        outcomes_chart=_outcomes_chart(outcomes, since, until, bucket),
        throughput_chart=_throughput_chart(outcomes, since, until),
        latency_charts=_latency_charts(latency, since, until),
        totals=_totals(outcomes),
    )


def _buckets(since: datetime, until: datetime, bucket: timedelta) -> list[datetime]:
    starts, moment = [], since
    while moment < until:
        starts.append(moment)
        moment += bucket
    return starts


def _floor(moment: datetime, bucket: timedelta) -> datetime:
    """Bucket edges on whole multiples of the bucket since the epoch, as ``date_bin``
    places them."""
    epoch = datetime(1970, 1, 1, tzinfo=moment.tzinfo)
    return epoch + ((moment - epoch) // bucket) * bucket


def _outcomes_chart(
    outcomes: list[OutcomeBucket], since: datetime, until: datetime, bucket: timedelta
) -> str:
    starts = _buckets(since, until, bucket)
    index = {start: n for n, start in enumerate(starts)}
    stacks: dict[str, list[int]] = {}
    for status in STATUS_ORDER:
        stacks[status] = [0] * len(starts)
    for row in outcomes:
        n = index.get(row.bucket)
        if n is not None:
            stacks.setdefault(row.status.value, [0] * len(starts))[n] += row.sagas
    kept = {status: counts for status, counts in stacks.items() if any(counts)}
    return stacked_bars_svg(
        starts, kept, title="Sagas started, by how they stand now", bucket=bucket
    )


def _throughput_chart(outcomes: list[OutcomeBucket], since: datetime, until: datetime) -> str:
    per_definition: dict[str, dict[datetime, float]] = defaultdict(lambda: defaultdict(float))
    for row in outcomes:
        per_definition[row.definition][row.bucket] += row.sagas
    series = {name: sorted(points.items()) for name, points in sorted(per_definition.items())}
    return line_chart_svg(
        series, title="Sagas started per bucket", unit="sagas", start=since, end=until
    )


def _latency_charts(
    latency: list[StepLatencyBucket], since: datetime, until: datetime
) -> list[tuple[str, str]]:
    by_step: dict[tuple[str, str, str], list[StepLatencyBucket]] = defaultdict(list)
    for row in latency:
        by_step[(row.definition, row.step_name, row.action)].append(row)
    charts = []
    for (definition_name, step, action), rows in sorted(by_step.items()):
        rows.sort(key=lambda r: r.bucket)
        title = f"{definition_name} · {step} ({action})"
        series = {
            "p50": [(r.bucket, r.p50_ms) for r in rows],
            "p95": [(r.bucket, r.p95_ms) for r in rows],
            "p99": [(r.bucket, r.p99_ms) for r in rows],
        }
        charts.append(
            (title, line_chart_svg(series, title=title, unit="ms", start=since, end=until))
        )
    return charts


def _totals(outcomes: list[OutcomeBucket]) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for row in outcomes:
        totals[row.status.value] += row.sagas
    return dict(totals)
