"""Which sagas an operator means: the filters ``saga ls`` and the bulk actions share.

Every filter is checked when the command line is read, so a typo fails before anything
touches the database, with the flag and the bad value named. Times are an ISO time
(``2026-11-25T18:00:00Z``; one without a zone is taken as UTC, the zone the log is kept
in) or a duration meaning that long ago (``30s``, ``10m``, ``2h``, ``7d``, ``1h30m``).

The step name and journey of a saga come from the stored copy of the definition version
it runs (``shared.saga_definition.steps``), resolved in SQL, so ``--journey`` works for
sagas of definitions this process never imported.
"""

from __future__ import annotations

import argparse
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from saga.errors import ConfigurationError
from saga.machine import Phase, SagaStatus
from saga.store.driver import DriverConnection

_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

DURATION_FORMS = "30s, 10m, 2h, 7d or 1h30m"
TIME_FORMS = f"an ISO time such as 2026-11-25T18:00:00Z, or a duration ago ({DURATION_FORMS})"


@dataclass(frozen=True, slots=True)
class SagaFilter:
    """What ``saga ls`` and the bulk actions select; every criterion given must hold."""

    statuses: tuple[SagaStatus, ...] = ()
    """``--status`` (repeatable or a comma list): any of these."""
    definitions: tuple[str, ...] = ()
    """``--definition NAME`` (repeatable or a comma list): any of these definitions."""
    journeys: tuple[str, ...] = ()
    """``--journey J``: sagas whose *current* step belongs to one of these journeys."""
    started_since: datetime | None = None
    """``--since``: started at or after this time."""
    started_until: datetime | None = None
    """``--until``: started before this time."""
    stuck_for: timedelta | None = None
    """``--stuck-for 10m``: in flight (running or compensating) and the current attempt
    was dispatched longer ago than this."""
    parked: bool = False
    """``--parked``: the same as ``--status parked`` (added to any other statuses)."""
    waiting_for: tuple[str, ...] = ()
    """``--waiting-for EVENT`` (repeatable or a comma list): sagas waiting now for any of
    these signals."""
    children_of: uuid.UUID | None = None
    """``--children-of SAGA_ID``: the child sagas that saga started (every attempt)."""

    def is_empty(self) -> bool:
        """True when nothing narrows the selection: every saga matches."""
        return (
            not self.statuses
            and not self.definitions
            and not self.journeys
            and self.started_since is None
            and self.started_until is None
            and self.stuck_for is None
            and not self.parked
            and not self.waiting_for
            and self.children_of is None
        )

    @property
    def effective_statuses(self) -> tuple[SagaStatus, ...]:
        """``statuses`` with ``parked`` folded in."""
        if self.parked and SagaStatus.PARKED not in self.statuses:
            return (*self.statuses, SagaStatus.PARKED)
        return self.statuses


@dataclass(frozen=True, slots=True)
class SagaListing:
    """One saga as ``saga ls`` shows it."""

    id: uuid.UUID
    definition_name: str
    definition_version: int
    status: SagaStatus
    current_step: int
    step_name: str | None
    """``None`` only when the stored definition has no such step (it never should)."""
    journey: str | None
    step_attempt: int
    phase: Phase
    """Whether the current step is being executed or compensated; for a saga no longer in
    flight, the phase of the last row its current step logged (as the actions read it)."""
    started_at: datetime
    finished_at: datetime | None
    step_started_at: datetime | None
    error: str | None
    waiting_for: str | None = None
    """The signal a waiting saga waits for; ``None`` unless its status is ``waiting``."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "definition": self.definition_name,
            "version": self.definition_version,
            "status": self.status.value,
            "current_step": self.current_step,
            "step": self.step_name,
            "journey": self.journey,
            "attempt": self.step_attempt,
            "phase": self.phase.value,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "step_started_at": self.step_started_at,
            "error": self.error,
            "waiting_for": self.waiting_for,
        }


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--status``, ``--definition``, ``--journey``, ``--since``, ``--until``,
    ``--stuck-for``, ``--parked``, ``--waiting-for`` and ``--children-of`` to ``parser``;
    read them with :func:`filter_from_args`."""
    group = parser.add_argument_group("which sagas")
    statuses = ", ".join(s.value for s in SagaStatus)
    group.add_argument(
        "--status",
        dest="filter_status",
        action="append",
        metavar="STATUS",
        help=f"any of these statuses (repeatable or comma-separated): {statuses}",
    )
    group.add_argument(
        "--definition",
        dest="filter_definition",
        action="append",
        metavar="NAME",
        help="sagas of this definition (repeatable or comma-separated)",
    )
    group.add_argument(
        "--journey",
        dest="filter_journey",
        action="append",
        metavar="JOURNEY",
        help="sagas whose current step belongs to this journey (repeatable or comma-separated)",
    )
    group.add_argument(
        "--since",
        dest="filter_since",
        metavar="WHEN",
        help=f"started at or after WHEN: {TIME_FORMS}",
    )
    group.add_argument(
        "--until", dest="filter_until", metavar="WHEN", help="started before WHEN (same forms)"
    )
    group.add_argument(
        "--stuck-for",
        dest="filter_stuck_for",
        metavar="DURATION",
        help=f"in flight, the current attempt dispatched longer ago than this ({DURATION_FORMS})",
    )
    group.add_argument(
        "--parked",
        dest="filter_parked",
        action="store_true",
        help="parked sagas (the same as --status parked)",
    )
    group.add_argument(
        "--waiting-for",
        dest="filter_waiting_for",
        action="append",
        metavar="EVENT",
        help="sagas waiting now for this signal (repeatable or comma-separated)",
    )
    group.add_argument(
        "--children-of",
        dest="filter_children_of",
        metavar="SAGA_ID",
        help="the child sagas this saga started (every attempt)",
    )


def filter_from_args(args: argparse.Namespace, *, now: datetime | None = None) -> SagaFilter:
    """The :class:`SagaFilter` the parsed arguments describe; raises
    :class:`~saga.errors.ConfigurationError` naming the flag and the bad value. ``now`` is
    what durations count back from (the current time unless given)."""
    now = now or datetime.now(UTC)
    since = _moment_or_none(getattr(args, "filter_since", None), "--since", now)
    until = _moment_or_none(getattr(args, "filter_until", None), "--until", now)
    check_window(since, until)
    stuck = getattr(args, "filter_stuck_for", None)
    parent = getattr(args, "filter_children_of", None)
    return SagaFilter(
        statuses=parse_statuses(getattr(args, "filter_status", None) or ()),
        definitions=parse_names(getattr(args, "filter_definition", None) or (), "--definition"),
        journeys=parse_names(getattr(args, "filter_journey", None) or (), "--journey"),
        started_since=since,
        started_until=until,
        stuck_for=None if stuck is None else parse_duration(stuck, "--stuck-for"),
        parked=bool(getattr(args, "filter_parked", False)),
        waiting_for=parse_names(getattr(args, "filter_waiting_for", None) or (), "--waiting-for"),
        children_of=None if parent is None else parse_saga_id(parent, "--children-of"),
    )


def parse_saga_id(text: str, flag: str | None = None) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        named = f"{flag}: " if flag else ""
        raise ConfigurationError(f"{named}not a saga id (a UUID): {text!r}") from None


def parse_count(text: str, flag: str, *, low: int, high: int | None = None) -> int:
    """A whole number within ``low..high``, checked here rather than by argparse so a bad
    one gets the same one-line error as every other input."""
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        expected = f"{low}..{high}" if high is not None else f"a whole number >= {low}"
        raise ConfigurationError(f"{flag}: expected {expected}; got {text!r}")
    return value


def parse_statuses(values: Iterable[str], flag: str = "--status") -> tuple[SagaStatus, ...]:
    """Each value may be a comma list; unknown names are refused, duplicates dropped."""
    known = {s.value: s for s in SagaStatus}
    found: list[SagaStatus] = []
    for name in _split(values, flag):
        status = known.get(name.lower())
        if status is None:
            raise ConfigurationError(
                f"{flag}: unknown status {name!r} (expected one of {', '.join(known)})"
            )
        if status not in found:
            found.append(status)
    return tuple(found)


def parse_duration(text: str, flag: str) -> timedelta:
    """``30s``, ``10m``, ``2h``, ``7d`` or a sum such as ``1h30m``; must be positive."""
    cleaned = text.strip().lower()
    if cleaned.startswith("-"):
        raise ConfigurationError(f"{flag}: a duration must be positive; got {text!r}")
    if not _DURATION.fullmatch(cleaned):
        raise ConfigurationError(
            f"{flag}: expected a duration such as {DURATION_FORMS}; got {text!r}"
        )
    seconds = sum(
        float(amount) * _UNIT_SECONDS[unit] for amount, unit in _DURATION_PART.findall(cleaned)
    )
    if seconds <= 0:
        raise ConfigurationError(f"{flag}: a duration must be positive; got {text!r}")
    return timedelta(seconds=seconds)


def parse_moment(text: str, flag: str, *, now: datetime) -> datetime:
    """An ISO time (UTC when it names no zone) or a duration before ``now``."""
    cleaned = text.strip()
    if cleaned.startswith("-") or _DURATION.fullmatch(cleaned.lower()):
        return now - parse_duration(cleaned, flag)
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise ConfigurationError(f"{flag}: expected {TIME_FORMS}; got {text!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def check_window(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and since >= until:
        raise ConfigurationError(
            f"--since ({since.isoformat()}) must be before --until ({until.isoformat()})"
        )


def _moment_or_none(text: str | None, flag: str, now: datetime) -> datetime | None:
    return None if text is None else parse_moment(text, flag, now=now)


def parse_names(values: Iterable[str], flag: str) -> tuple[str, ...]:
    """Names given repeatedly or as comma lists, duplicates dropped, order kept."""
    names: list[str] = []
    for name in _split(values, flag):
        if name not in names:
            names.append(name)
    return tuple(names)


def _split(values: Iterable[str], flag: str) -> list[str]:
    """``["a,b", "c"]`` → ``["a", "b", "c"]``; an empty item is a typo, not a wildcard."""
    items: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                raise ConfigurationError(f"{flag}: empty name in {value!r}")
            items.append(item)
    return items


def phase_sql(alias: str) -> str:
    """SQL for the phase of the saga row ``alias`` (columns ``id``, ``status``,
    ``current_step``): its status says while it is in flight. A saga no longer in flight
    does not say whether it stopped in a step or in its compensation: the last row its
    current step logged does (replies the coordinator ignored do not count), the same
    reading the manual actions make."""
    return f"""
        CASE {alias}.status
            WHEN 'running' THEN 'execute'
            WHEN 'compensating' THEN 'compensate'
            ELSE coalesce(
                (SELECT l.action FROM shared.saga_step_log l
                 WHERE l.saga_instance_id = {alias}.id
                   AND l.step_index = {alias}.current_step
                   AND l.status <> 'ignored'
                 ORDER BY l.created_at DESC, l.started_at DESC
                 LIMIT 1),
                'execute')
        END"""


# The step's name and journey come from the stored definition of the saga's version; the
# phase is worked out only for the page of sagas selected.
_SELECT = f"""
WITH listed AS (
    SELECT i.id, i.definition_name, i.definition_version, i.status, i.current_step,
           i.step_attempt, i.started_at, i.finished_at, i.step_started_at, i.error,
           CASE WHEN i.status = 'waiting' THEN i.shape_state ->> 'waiting_for' END
               AS waiting_for,
           d.steps -> i.current_step AS step
    FROM shared.saga_instance i
    JOIN shared.saga_definition d ON d.id = i.saga_definition_id
    WHERE ($1::text[] IS NULL OR i.status = ANY($1::text[]))
      AND ($2::text[] IS NULL OR i.definition_name = ANY($2::text[]))
      AND ($3::text[] IS NULL OR d.steps -> i.current_step ->> 'journey' = ANY($3::text[]))
      AND ($4::timestamptz IS NULL OR i.started_at >= $4)
      AND ($5::timestamptz IS NULL OR i.started_at < $5)
      AND ($6::interval IS NULL
           OR (i.status IN ('running', 'compensating') AND i.step_started_at < now() - $6))
      AND ($9::text[] IS NULL
           OR (i.status = 'waiting' AND i.shape_state ->> 'waiting_for' = ANY($9::text[])))
      AND ($10::uuid IS NULL OR i.parent_id = $10)
    ORDER BY i.started_at DESC, i.id
    LIMIT $7 OFFSET $8
)
SELECT listed.*, step ->> 'name' AS step_name, step ->> 'journey' AS journey,
       {phase_sql("listed")} AS phase
FROM listed
ORDER BY started_at DESC, id
"""


async def select_sagas(
    conn: DriverConnection, f: SagaFilter, *, limit: int, offset: int = 0
) -> list[SagaListing]:
    """The sagas ``f`` selects, newest first (``started_at`` descending, then id)."""
    if limit < 1 or offset < 0:
        raise ValueError(f"limit must be >= 1 and offset >= 0; got {limit}, {offset}")
    rows = await conn.fetch(
        _SELECT,
        _array_or_none(s.value for s in f.effective_statuses),
        _array_or_none(f.definitions),
        _array_or_none(f.journeys),
        f.started_since,
        f.started_until,
        f.stuck_for,
        limit,
        offset,
        _array_or_none(f.waiting_for),
        f.children_of,
    )
    return [SagaListing(**listing_fields(row), waiting_for=row["waiting_for"]) for row in rows]


def listing_fields(row: Any) -> dict[str, Any]:
    """A :class:`SagaListing`'s fields from a row with its columns (``saga show``'s
    detail has them too)."""
    return {
        "id": row["id"],
        "definition_name": row["definition_name"],
        "definition_version": row["definition_version"],
        "status": SagaStatus(row["status"]),
        "current_step": row["current_step"],
        "step_name": row["step_name"],
        "journey": row["journey"],
        "step_attempt": row["step_attempt"],
        "phase": Phase(row["phase"]),
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "step_started_at": row["step_started_at"],
        "error": row["error"],
    }


def _array_or_none(values: Iterable[str]) -> Sequence[str] | None:
    items = list(values)
    return items or None
