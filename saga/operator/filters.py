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
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from saga.errors import ConfigurationError
from saga.machine import Phase, SagaStatus
from saga.masking import mask
from saga.store.driver import DriverConnection, document
from saga.validation import SEARCH_ATTRIBUTE_PATTERN

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
    attributes: tuple[tuple[str, str], ...] = ()
    """``--attr NAME=VALUE`` (repeatable): sagas whose definition declares the search
    attribute NAME and whose payload had VALUE there; all must hold."""
    idempotency_key: str | None = None
    """``--key KEY``: the saga started with this idempotency key (one per definition)."""
    saga_ids: tuple[uuid.UUID, ...] = ()
    """Any of these sagas (the console's live update reads its rows by id)."""

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
            and not self.attributes
            and self.idempotency_key is None
            and not self.saga_ids
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
    search_attributes: Mapping[str, str] | None = None
    """The values of its definition's search attributes (masked when shown)."""

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
            "attributes": mask(dict(self.search_attributes or {})),
        }


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--status``, ``--definition``, ``--journey``, ``--since``, ``--until``,
    ``--stuck-for``, ``--parked``, ``--waiting-for``, ``--children-of``, ``--attr`` and
    ``--key`` to ``parser``;
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
    group.add_argument(
        "--attr",
        dest="filter_attr",
        action="append",
        metavar="NAME=VALUE",
        help="sagas whose search attribute NAME (declared by their definition) is VALUE "
        "(repeatable: all must hold)",
    )
    group.add_argument(
        "--key",
        dest="filter_key",
        metavar="KEY",
        help="the saga started with this idempotency key",
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
        attributes=parse_attributes(getattr(args, "filter_attr", None) or ()),
        idempotency_key=parse_key(getattr(args, "filter_key", None)),
    )


MAX_SEARCH_VALUE = 200


def parse_attributes(values: Iterable[str], flag: str = "--attr") -> tuple[tuple[str, str], ...]:
    """``["user_id=42", ...]`` → ``(("user_id", "42"), ...)``; a name given twice with two
    values can match nothing, so it is refused rather than silently empty."""
    found: dict[str, str] = {}
    for text in values:
        name, sign, value = text.partition("=")
        name, value = name.strip(), value.strip()
        if not sign or not value:
            raise ConfigurationError(f"{flag}: expected NAME=VALUE; got {text[:80]!r}")
        if not SEARCH_ATTRIBUTE_PATTERN.match(name):
            raise ConfigurationError(
                f"{flag}: {name[:80]!r} is not a search attribute name (lower-case letters, "
                "digits and '_', starting with a letter)"
            )
        if len(value) > MAX_SEARCH_VALUE:
            raise ConfigurationError(
                f"{flag}: the value of {name!r} is longer than {MAX_SEARCH_VALUE} characters"
            )
        if found.get(name, value) != value:
            raise ConfigurationError(f"{flag}: {name!r} is given two different values")
        found[name] = value
    return tuple(found.items())


def parse_key(text: str | None, flag: str = "--key") -> str | None:
    if text is None:
        return None
    key = text.strip()
    if not key or len(key) > MAX_SEARCH_VALUE:
        raise ConfigurationError(
            f"{flag}: an idempotency key of 1-{MAX_SEARCH_VALUE} characters; got {text[:80]!r}"
        )
    return key


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


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page of ``saga ls`` (newest first) ended: the next page starts after this
    saga. Keyset pagination: page 5,000 costs what page 1 does."""

    started_at: datetime
    saga_id: uuid.UUID

    @classmethod
    def after(cls, listing: SagaListing) -> Cursor:
        return cls(listing.started_at, listing.id)

    def text(self) -> str:
        """An opaque token for a URL or a command line."""
        return f"{self.started_at.astimezone(UTC).isoformat()}_{self.saga_id}"

    @classmethod
    def parse(cls, text: str, flag: str = "cursor") -> Cursor:
        moment, _, saga_id = text.strip().rpartition("_")
        try:
            started_at = datetime.fromisoformat(moment)
            parsed_id = uuid.UUID(saga_id)
        except ValueError:
            raise ConfigurationError(f"{flag}: not a page cursor: {text[:80]!r}") from None
        if started_at.tzinfo is None:
            raise ConfigurationError(f"{flag}: not a page cursor: {text[:80]!r}")
        return cls(started_at, parsed_id)


# Only the criteria given become conditions: each combination is a statement of its own
# (asyncpg prepares and caches each), so the planner sees the real conditions and uses
# the index each one needs (the search attributes' GIN, the idempotency key's unique
# index) rather than one generic plan for "$n IS NULL OR ...".
_LISTED = """
WITH listed AS (
    SELECT i.id, i.definition_name, i.definition_version, i.status, i.current_step,
           i.step_attempt, i.started_at, i.finished_at, i.step_started_at, i.error,
           CASE WHEN i.status = 'waiting' THEN i.shape_state ->> 'waiting_for' END
               AS waiting_for,
           i.search_attributes,
           d.steps -> i.current_step AS step
    FROM shared.saga_instance i
    JOIN shared.saga_definition d ON d.id = i.saga_definition_id
    WHERE {conditions}
    ORDER BY i.started_at DESC, i.id
    LIMIT {limit} OFFSET {offset}
)
SELECT listed.*, step ->> 'name' AS step_name, step ->> 'journey' AS journey,
       {phase} AS phase
FROM listed
ORDER BY started_at DESC, id
"""


class _Conditions:
    """SQL conditions and their arguments, numbered as they are added."""

    def __init__(self) -> None:
        self.sql: list[str] = []
        self.args: list[Any] = []

    def add(self, template: str, *values: Any) -> None:
        """``template`` names its arguments ``{0}``, ``{1}``, ...."""
        numbers = [f"${len(self.args) + n + 1}" for n in range(len(values))]
        self.sql.append(template.format(*numbers))
        self.args.extend(values)


def _conditions(f: SagaFilter, cursor: Cursor | None) -> _Conditions:
    c = _Conditions()
    if f.effective_statuses:
        c.add("i.status = ANY({0}::text[])", [s.value for s in f.effective_statuses])
    if f.definitions:
        c.add("i.definition_name = ANY({0}::text[])", list(f.definitions))
    if f.journeys:
        c.add("d.steps -> i.current_step ->> 'journey' = ANY({0}::text[])", list(f.journeys))
    if f.started_since is not None:
        c.add("i.started_at >= {0}", f.started_since)
    if f.started_until is not None:
        c.add("i.started_at < {0}", f.started_until)
    if f.stuck_for is not None:
        c.add(
            "i.status IN ('running', 'compensating') AND i.step_started_at < now() - {0}::interval",
            f.stuck_for,
        )
    if f.waiting_for:
        c.add(
            "i.status = 'waiting' AND i.shape_state ->> 'waiting_for' = ANY({0}::text[])",
            list(f.waiting_for),
        )
    if f.children_of is not None:
        c.add("i.parent_id = {0}", f.children_of)
    if f.attributes:
        c.add("i.search_attributes @> {0}::jsonb", json.dumps(dict(f.attributes)))
    if f.idempotency_key is not None:
        # The key is unique per definition: one probe of that index per definition.
        c.add(
            "i.idempotency_key = {0} "
            "AND i.definition_name IN (SELECT name FROM shared.saga_definition)",
            f.idempotency_key,
        )
    if f.saga_ids:
        c.add("i.id = ANY({0}::uuid[])", list(f.saga_ids))
    if cursor is not None:
        c.add(
            "(i.started_at < {0} OR (i.started_at = {0} AND i.id > {1}))",
            cursor.started_at,
            cursor.saga_id,
        )
    return c


async def select_sagas(
    conn: DriverConnection,
    f: SagaFilter,
    *,
    limit: int,
    offset: int = 0,
    after: Cursor | None = None,
) -> list[SagaListing]:
    """The sagas ``f`` selects, newest first (``started_at`` descending, then id),
    starting after the ``after`` cursor when one is given."""
    if limit < 1 or offset < 0:
        raise ValueError(f"limit must be >= 1 and offset >= 0; got {limit}, {offset}")
    c = _conditions(f, after)
    sql = _LISTED.format(
        conditions=" AND ".join(c.sql) or "true",
        limit=int(limit),
        offset=int(offset),
        phase=phase_sql("listed"),
    )
    rows = await conn.fetch(sql, *c.args)
    return [
        SagaListing(
            **listing_fields(row),
            waiting_for=row["waiting_for"],
            search_attributes=document(row["search_attributes"]) or {},
        )
        for row in rows
    ]


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
