"""``saga ls``, ``saga show``, ``saga stats``, ``saga definitions``: read the saga log.

Every command reads in one read-only transaction and prints a table (``--json``: one JSON
document). Bad input is refused before the database is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from saga.errors import ConfigurationError
from saga.logging import configure_logging
from saga.masking import mask
from saga.operator import queries
from saga.operator.documents import detail_document
from saga.operator.filters import (
    SagaListing,
    add_filter_arguments,
    check_window,
    filter_from_args,
    parse_count,
    parse_moment,
    parse_names,
    parse_saga_id,
    select_sagas,
)
from saga.operator.render import cell, duration_text, print_json, print_table, utc_text
from saga.settings import load_settings
from saga.store import Database
from saga.store.driver import DriverConnection
from saga.timeline import TimelineEntry

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
ERROR_WIDTH = 60
"""A table cuts longer errors (``saga show`` and ``--json`` give them whole)."""


def add_parser(commands: Any) -> None:
    ls = commands.add_parser(
        "ls", help="list sagas, newest first", description="List sagas, newest first."
    )
    add_filter_arguments(ls)
    pages = ls.add_argument_group("pages")
    pages.add_argument(
        "--limit", default=str(DEFAULT_LIMIT), help=f"sagas per page, 1..{MAX_LIMIT} (default 50)"
    )
    pages.add_argument("--page", help="which page, from 1 (default 1)")
    pages.add_argument("--offset", help="skip this many sagas instead of giving --page")
    _json_flag(ls)
    ls.set_defaults(handler=_ls)

    show = commands.add_parser("show", help="one saga: its state and the timeline of every attempt")
    show.add_argument("saga_id", metavar="ID", help="the saga's id (a UUID)")
    _json_flag(show)
    show.set_defaults(handler=_show)

    stats = commands.add_parser(
        "stats",
        help="sagas by status and step durations over a time window",
        description="Sagas started in the window by definition and status; attempts that "
        "ended in it by step and phase (count, p50/p95/p99/max ms, failures, retries, "
        "timeouts); the slowest steps by p95. Times: an ISO time or a duration ago "
        "(30s, 10m, 2h, 7d).",
    )
    stats.add_argument(
        "--since", default="24h", metavar="WHEN", help="window start (default 24h ago)"
    )
    stats.add_argument("--until", metavar="WHEN", help="window end (default now)")
    stats.add_argument(
        "--definition",
        action="append",
        metavar="NAME",
        help="only these definitions (repeatable or comma-separated)",
    )
    stats.add_argument("--top", default="5", help="how many slowest steps to list (default 5)")
    _json_flag(stats)
    stats.set_defaults(handler=_stats)

    definitions = commands.add_parser(
        "definitions",
        help="registered saga definitions and their sagas in flight or parked",
        description="Every registered saga definition (name, version, steps, when it "
        "was registered) with how many of its sagas are running, compensating or parked.",
    )
    _json_flag(definitions)
    definitions.set_defaults(handler=_definitions)


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


# --- running a read ---------------------------------------------------------------------


def _read(work: Callable[[DriverConnection], Awaitable[T]], *, name: str) -> T:
    settings = load_settings()
    configure_logging(settings)

    async def main() -> T:
        database = Database.from_settings(settings, application_name="saga-cli")
        try:
            return await queries.read_only(database, work, name=name)
        finally:
            await database.dispose()

    return asyncio.run(main())


# --- saga ls ------------------------------------------------------------------------------


def _ls(args: argparse.Namespace) -> int:
    selected = filter_from_args(args)
    limit = parse_count(args.limit, "--limit", low=1, high=MAX_LIMIT)
    if args.page is not None and args.offset is not None:
        raise ConfigurationError("--page and --offset: give one or the other")
    page = parse_count(args.page, "--page", low=1) if args.page is not None else None
    offset = parse_count(args.offset, "--offset", low=0) if args.offset is not None else None
    start = offset if offset is not None else ((page or 1) - 1) * limit

    async def work(conn: DriverConnection) -> list[SagaListing]:
        # One more than a page says whether another page follows.
        return await select_sagas(conn, selected, limit=limit + 1, offset=start)

    found = _read(work, name="cli.ls")
    more = len(found) > limit
    shown = found[:limit]
    if args.json:
        print_json(
            {
                "sagas": [listing.as_dict() for listing in shown],
                "limit": limit,
                "offset": start,
                "page": page if offset is None else None,
                "more": more,
            }
        )
        return 0
    if not shown:
        print("no sagas match")
        return 0
    now = datetime.now(UTC)
    print_table([_listing_row(listing, now) for listing in shown], LS_COLUMNS)
    if more:
        if offset is not None:
            print(f"offset {start}, {len(shown)} shown; --offset {start + limit} for more")
        else:
            current = page or 1
            print(f"page {current}, {len(shown)} shown; --page {current + 1} for more")
    return 0


LS_COLUMNS = (
    "id",
    "definition",
    "status",
    "step",
    "journey",
    "phase",
    "attempt",
    "started",
    "took",
    "waiting",
    "error",
)


def _listing_row(listing: SagaListing, now: datetime) -> dict[str, Any]:
    waiting: Any = None
    if listing.status.in_flight and listing.step_started_at is not None:
        # How long the current attempt has been going: what --stuck-for compares.
        waiting = now - listing.step_started_at
    elif listing.waiting_for is not None:
        waiting = f"for {listing.waiting_for}"
    return {
        "id": listing.id,
        "definition": f"{listing.definition_name} v{listing.definition_version}",
        "status": listing.status,
        "step": listing.step_name,
        "journey": listing.journey,
        "phase": listing.phase,
        "attempt": listing.step_attempt,
        "started": listing.started_at,
        "took": _took(listing.started_at, listing.finished_at),
        "waiting": waiting,
        "error": _cut(listing.error),
    }


def _took(started: datetime, finished: datetime | None) -> timedelta | None:
    return None if finished is None else finished - started


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= ERROR_WIDTH:
        return text
    return text[: ERROR_WIDTH - 1] + "…"


# --- saga show ----------------------------------------------------------------------------


def _show(args: argparse.Namespace) -> int:
    saga_id = parse_saga_id(args.saga_id)

    async def work(conn: DriverConnection) -> queries.SagaDetail:
        return await queries.saga_detail(conn, saga_id)

    detail = _read(work, name="cli.show")
    # The installed journey services declare their sensitive fields when discovered
    # (LOG_SENSITIVE_FIELDS is declared with the logging set-up): mask with all of them.
    # Imported here: the journeys bring the participant and the broker client, which the
    # other inspecting commands do without.
    from saga.participant.journey import discover_journeys

    discover_journeys()
    if args.json:
        print_json(detail_document(detail))
    else:
        for line in _detail_lines(detail, datetime.now(UTC)):
            print(line)
    return 0


def _detail_lines(detail: queries.SagaDetail, now: datetime) -> list[str]:
    took = detail.took
    if took is not None:
        took_text = duration_text(took.total_seconds())
    else:
        took_text = f"- (started {duration_text((now - detail.started_at).total_seconds())} ago)"
    current = _current_text(detail)
    header = [
        ("definition", f"{detail.definition_name} v{detail.definition_version}"),
        ("status", detail.status.value),
        ("reason", detail.error),
        ("started", utc_text(detail.started_at)),
        ("finished", utc_text(detail.finished_at) if detail.finished_at else None),
        ("took", took_text),
        ("current", current),
        ("deadline", utc_text(detail.step_deadline) if detail.step_deadline else None),
        ("key", detail.idempotency_key),
        ("payload", _compact(mask(detail.payload))),
        ("context", _compact(mask(detail.context))),
    ]
    if detail.waiting_for is not None:
        header[7:7] = _waiting_header(detail, now)
    header += [(link.relation, _family_text(link)) for link in detail.family]
    lines = [f"saga {detail.id}"]
    lines += [f"  {label:<10} {cell(value)}" for label, value in header]
    if detail.signals:
        lines += ["", "signals (consumed: applied to the saga; kept: for a wait not reached)"]
        lines += _signal_lines(detail.signals)
    lines += ["", "timeline (one line per attempt; + is the time since the saga started)"]
    lines += _timeline_lines(detail.entries, detail.started_at)
    return lines


def _current_text(detail: queries.SagaDetail) -> str:
    name = detail.step_name or f"#{detail.current_step}"
    if detail.position_kind == "await_event":
        return f"wait {detail.current_step} {name}"
    if detail.position_kind == "sub_saga":
        # Its child is named on the `child` lines below.
        return (
            f"child saga {detail.current_step} {name}, {detail.phase.value}, "
            f"attempt {detail.step_attempt}"
        )
    kind = "group" if detail.position_kind == "parallel" else "step"
    journey = "" if kind == "group" else f" ({detail.journey or '?'})"
    current = (
        f"{kind} {detail.current_step} {name}{journey}, {detail.phase.value}, "
        f"attempt {detail.step_attempt}"
    )
    if detail.step_started_at is not None and kind == "step":
        current += f", dispatched {utc_text(detail.step_started_at)}"
    return current


def _waiting_header(detail: queries.SagaDetail, now: datetime) -> list[tuple[str, Any]]:
    """Replaces the step deadline's line: a wait's deadline is when it times out."""
    since = detail.waiting_since
    until = detail.step_deadline
    since_text = (
        None
        if since is None
        else (f"{utc_text(since)} ({duration_text((now - since).total_seconds())} ago)")
    )
    until_text = None
    if until is not None:
        left = (until - now).total_seconds()
        when = f"in {duration_text(left)}" if left >= 0 else f"{duration_text(-left)} ago"
        until_text = f"{utc_text(until)} ({when})"
    return [("waits for", detail.waiting_for), ("since", since_text), ("until", until_text)]


def _family_text(link: queries.FamilyLink) -> str:
    at = f" at {link.step_name}" if link.step_name else ""
    return f"{link.saga_id} {link.definition} {link.status.value}{at}"


def _signal_lines(signals: Sequence[queries.SignalRecord]) -> list[str]:
    rows = [
        {
            "received": signal.received_at,
            "event": signal.event,
            "state": signal.state,
            "actor": signal.actor,
            "signal_id": signal.signal_id,
            "payload": _compact(mask(signal.payload)),
            "reason": _cut(signal.reason),
        }
        for signal in signals
    ]
    out = io.StringIO()
    print_table(
        rows, ("received", "event", "state", "actor", "signal_id", "payload", "reason"), file=out
    )
    return ["  " + line for line in out.getvalue().splitlines()]


def _timeline_lines(entries: Sequence[TimelineEntry], started: datetime) -> list[str]:
    """One line per attempt; a parallel group's branch attempts are drawn as a block,
    one column per branch, where the group's first branch row falls in time."""
    if not entries:
        return ["  (no step-log rows)"]
    step_width = max(len(e.step_name) for e in entries)
    journey_width = max(len(e.journey) for e in entries)
    lines: list[str] = []
    drawn: set[tuple[int, str]] = set()
    for e in entries:
        if e.branch is not None:
            group = (e.step_index, e.action)
            if group not in drawn:
                drawn.add(group)
                lines += _group_lines(entries, e.step_index, e.action, started)
            continue
        lines += _entry_lines(e, started, step_width, journey_width)
    return lines


def _entry_lines(
    e: TimelineEntry, started: datetime, step_width: int, journey_width: int
) -> list[str]:
    offset = (e.started_at - started).total_seconds()
    took = "-" if e.duration_ms is None else duration_text(e.duration_ms / 1000)
    line = (
        f"  +{duration_text(offset):>9}  {e.step_name:<{step_width}}  "
        f"{e.journey:<{journey_width}}  {e.action:<10}  #{e.attempt:<2} {e.status:<10} "
        f"{took:>9}"
    )
    if e.actor:
        line += f"  by {e.actor}"
    if e.error:
        line += f"  {e.error}"
    lines = [line.rstrip()]
    indent = " " * 13
    if e.request is not None:
        lines.append(f"{indent}request  {_compact(mask(e.request))}")
    if e.response is not None:
        lines.append(f"{indent}response {_compact(mask(e.response))}")
    return lines


def _group_lines(
    entries: Sequence[TimelineEntry], step_index: int, action: str, started: datetime
) -> list[str]:
    """A group's branches side by side: a column per branch, its attempts top down."""
    rows = [
        e
        for e in entries
        if e.step_index == step_index and e.action == action and e.branch is not None
    ]
    branches = sorted({e.branch for e in rows if e.branch is not None})
    columns: list[list[str]] = []
    for branch in branches:
        mine = [e for e in rows if e.branch == branch]
        title = f"[{branch}] {mine[0].step_name} ({mine[0].journey})"
        cells = [title]
        for e in mine:
            offset = duration_text((e.started_at - started).total_seconds())
            took = "" if e.duration_ms is None else f" {duration_text(e.duration_ms / 1000)}"
            by = f" by {e.actor}" if e.actor else ""
            cells.append(f"+{offset} #{e.attempt} {e.status}{took}{by}")
            if e.error:
                cells.append(f"  {_cut(e.error)}")
        columns.append(cells)
    first = min(e.started_at for e in rows)
    offset = duration_text((first - started).total_seconds())
    count = f"{len(branches)} branch" + ("" if len(branches) == 1 else "es")
    lines = [f"  +{offset:>9}  group at step {step_index}, {action}: {count}"]
    widths = [max(len(text) for text in column) for column in columns]
    for depth in range(max(len(column) for column in columns)):
        texts = [
            (column[depth] if depth < len(column) else "").ljust(width)
            for column, width in zip(columns, widths, strict=True)
        ]
        lines.append(("             " + " | ".join(texts)).rstrip())
    return lines


def _compact(value: Any) -> str:
    return json.dumps(value, default=str, separators=(", ", ": "))


# --- saga stats ---------------------------------------------------------------------------


def _stats(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    since = parse_moment(args.since, "--since", now=now)
    until = parse_moment(args.until, "--until", now=now) if args.until else now
    check_window(since, until)
    top = parse_count(args.top, "--top", low=1)
    names = parse_names(args.definition or (), "--definition")

    async def work(conn: DriverConnection) -> _Stats:
        return _Stats(
            await queries.status_counts(conn, since, until, names),
            await queries.step_stats(conn, since, until, names),
            await queries.signal_stats(conn, since, until, names),
            await queries.waiting_now(conn, names),
        )

    read = _read(work, name="cli.stats")
    counts, steps = read.counts, read.steps
    slowest = queries.slowest(steps, top)
    if args.json:
        print_json(
            {
                "since": since,
                "until": until,
                "definitions": list(names),
                "sagas": [asdict(count) for count in counts],
                "steps": [asdict(step) for step in steps],
                "slowest": [asdict(step) for step in slowest],
                "signals": [asdict(signal) for signal in read.signals],
                "waiting_now": [asdict(waiting) for waiting in read.waiting],
            }
        )
        return 0
    print(f"window {utc_text(since)} .. {utc_text(until)}")
    print()
    print("sagas started in the window")
    if counts:
        print_table([asdict(count) for count in counts], ("definition", "status", "sagas"))
    else:
        print("  none")
    print()
    print("attempts that ended in the window (durations in ms)")
    if steps:
        print_table([asdict(step) for step in steps], STEP_COLUMNS)
    else:
        print("  none")
    if slowest:
        print()
        print(f"slowest {len(slowest)} by p95")
        print_table(
            [asdict(step) for step in slowest],
            ("definition", "step_name", "journey", "action", "answers", "p95_ms", "max_ms"),
        )
    print()
    print("signals received in the window (consumed: applied; kept: for a wait not reached)")
    if read.signals:
        print_table(
            [asdict(signal) for signal in read.signals],
            ("definition", "event", "received", "consumed", "kept"),
        )
    else:
        print("  none")
    print()
    print("sagas waiting now (whenever started; overdue: past the wait's deadline)")
    if read.waiting:
        print_table(
            [asdict(waiting) for waiting in read.waiting],
            ("definition", "event", "waiting", "overdue", "oldest_since"),
        )
    else:
        print("  none")
    return 0


@dataclass(frozen=True, slots=True)
class _Stats:
    counts: list[queries.StatusCount]
    steps: list[queries.StepStats]
    signals: list[queries.SignalStats]
    waiting: list[queries.WaitingNow]


STEP_COLUMNS = (
    "definition",
    "step_name",
    "journey",
    "action",
    "answers",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "failed",
    "retried",
    "timed_out",
    "serialization_retries",
    "deadlock_retries",
)


# --- saga definitions ---------------------------------------------------------------------


def _definitions(args: argparse.Namespace) -> int:
    found = _read(queries.definitions, name="cli.definitions")
    rows = [
        {
            "name": d.name,
            "version": d.version,
            "steps": len(d.steps),
            "step_names": list(d.steps),
            "registered_at": d.registered_at,
            "timeout_seconds": d.timeout_seconds,
            "running": d.running,
            "compensating": d.compensating,
            "parked": d.parked,
            "waiting": d.waiting,
        }
        for d in found
    ]
    if args.json:
        print_json(rows)
    elif not rows:
        print("no saga definitions are registered")
    else:
        print_table(
            rows,
            (
                "name",
                "version",
                "steps",
                "step_names",
                "registered_at",
                "running",
                "compensating",
                "parked",
                "waiting",
            ),
        )
    return 0
