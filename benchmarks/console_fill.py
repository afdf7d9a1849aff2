"""The console benchmark's saga log: N finished sagas of a month, written set-based.

A real log of a million sagas takes weeks to make through the engine; its shape is what
the console's queries feel, so it is made here directly, with ``INSERT ... SELECT`` over
``generate_series`` in chunks (one transaction each), from the same definitions and the
same kinds of rows the engine writes:

- four definitions registered through :func:`saga.store.definitions.register` (so their
  stored ``steps`` documents are the real ones), each declaring ``user_id`` and
  ``slot_id`` as search attributes, so the insert trigger of migration 20261203090000
  fills ``saga_instance.search_attributes`` as it does for the engine's starts;
- sagas spread evenly over the last 30 days, in time order (as the engine inserts them,
  so the table's physical order follows ``started_at``): about 88 % completed (5 % of
  them after a retried attempt), 10 % compensated, 1 % parked (a compensation out of
  attempts), 0.5 % aborted by an operator, and 0.5 % still in flight, started in the
  last two hours (running or compensating; a fifth of them stuck for more than a minute)
  or waiting for a claim review since up to three days;
- payloads naming one of 200,000 members (``user_id``, the same UUID every time for a
  member: :func:`member_id`) and a slot; an idempotency key on 30 % of them;
- the step log as the engine writes it: a ``dispatched`` row per attempt (open: no
  ``finished_at``) and its outcome (``succeeded``, ``failed``, ``retried``) as a row of
  its own, compensations likewise, a ``waiting`` row at a wait and an operator's
  ``aborted`` row; 3 to 11 rows per saga, 6.3 on average.

Everything random comes from PostgreSQL's ``random()`` after ``setseed``, so two fills of
the same size are alike (the ids from ``gen_random_uuid()`` aside).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass

import asyncpg

from saga.coordinator.commands import ENGINE_JOURNEY
from saga.definition import AwaitEvent, NoCompensation, SagaDefinition, Step
from saga.settings import Settings, to_plain_url
from saga.store import Database, definitions
from saga.store.driver import DriverConnection

MEMBERS = 200_000
DAYS = 30
SEARCH_ATTRIBUTES = ("user_id", "slot_id")
WAIT_EVENT = "claim_reviewed"


def member_id(member: int) -> uuid.UUID:
    """Member ``member``'s ``user_id``, as the fill writes it (``md5('member-<n>')``)."""
    digest = hashlib.md5(f"member-{member}".encode(), usedforsecurity=False).hexdigest()
    return uuid.UUID(digest)


def _step(name: str, journey: str, action: str, undo: str | None, timeout: float) -> Step:
    if undo is None:
        return Step(
            name=name,
            journey=journey,
            action=action,
            no_compensation=NoCompensation.LAST,
            timeout=timeout,
        )
    return Step(name=name, journey=journey, action=action, compensation=undo, timeout=timeout)


# Key, definition, share of the sagas. Every one has three positions (the step log
# scripts below are written for three); the claim waits at its second.
DEFINITIONS: tuple[tuple[str, SagaDefinition, float], ...] = (
    (
        "book1",
        SagaDefinition(
            "book_appointment",
            1,
            [
                _step("reserve_slot", "care", "reserve_slot", "release_slot", 10.0),
                _step(
                    "authorize_coverage", "plan", "authorize_coverage", "void_authorization", 10.0
                ),
                _step("award_points", "gamification", "award_points", None, 10.0),
            ],
            search_attributes=SEARCH_ATTRIBUTES,
        ),
        0.15,
    ),
    (
        "book2",
        SagaDefinition(
            "book_appointment",
            2,
            [
                _step("reserve_slot", "care", "reserve_slot", "release_slot", 10.0),
                _step(
                    "authorize_coverage", "plan", "authorize_coverage", "void_authorization", 20.0
                ),
                _step("award_points", "gamification", "award_points", None, 10.0),
            ],
            search_attributes=SEARCH_ATTRIBUTES,
        ),
        0.40,
    ),
    (
        "claim",
        SagaDefinition(
            "submit_claim",
            1,
            [
                _step("create_claim", "plan", "create_claim", "cancel_claim", 10.0),
                AwaitEvent("review", WAIT_EVENT, timeout=7 * 86400.0),
                _step("pay_claim", "plan", "pay_claim", None, 10.0),
            ],
            search_attributes=SEARCH_ATTRIBUTES,
        ),
        0.25,
    ),
    (
        "goal",
        SagaDefinition(
            "complete_health_goal",
            1,
            [
                _step("complete_goal", "health", "complete_goal", "reopen_goal", 10.0),
                _step("award_goal_points", "gamification", "award_points", "revoke_points", 10.0),
                _step("apply_wellness_credit", "plan", "apply_wellness_credit", None, 10.0),
            ],
            search_attributes=SEARCH_ATTRIBUTES,
        ),
        0.20,
    ),
)


@dataclass(frozen=True)
class Scenario:
    """One way a saga went: its share, its final row and its step-log script."""

    name: str
    share: float
    status: str
    current_step: int
    step_attempt: int
    error: str | None
    """``{p0}``..``{p2}`` stand for the positions' names."""
    script: tuple[tuple[int, str, str, int, str | None], ...]
    """(position, action, status, attempt, error), in order; a ``dispatched`` row opens an
    attempt and the next row of that position and action is its outcome."""

    @property
    def needs_step(self) -> bool:
        """Whether its second position must be a step: it fails or runs there, which a
        wait (the claim's second position) cannot; such sagas book appointments instead."""
        return self.status == "running" or any(
            position == 1 and action == E and status not in ("dispatched", "succeeded")
            for position, action, status, _, _ in self.script
        )


E, C = "execute", "compensate"
REFUSED = "not covered: limit exceeded (requested 25000, remaining 5000 of 30000 cents)"
LATE_REFUSAL = "refused: the member's profile is suspended"
FAULT = "journey unavailable: connection reset by peer"


def _ok(position: int, action: str = E, attempt: int = 1) -> list[tuple[int, str, str, int, None]]:
    return [
        (position, action, "dispatched", attempt, None),
        (position, action, "succeeded", attempt, None),
    ]


_PARKED_SCRIPT = (
    *_ok(0),
    (1, E, "dispatched", 1, None),
    (1, E, "failed", 1, REFUSED),
    (0, C, "dispatched", 1, None),
    (0, C, "retried", 1, FAULT),
    (0, C, "dispatched", 2, None),
    (0, C, "retried", 2, FAULT),
    (0, C, "dispatched", 3, None),
    (0, C, "failed", 3, FAULT),
)
_PARKED_ERROR = (
    "compensation of step '{p0}' failed after 3 attempts: " + FAULT + " (compensating "
    "because: step '{p1}' failed: " + REFUSED + ")"
)

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("completed", 0.83, "completed", 2, 1, None, (*_ok(0), *_ok(1), *_ok(2))),
    Scenario(
        "completed_after_retry",
        0.05,
        "completed",
        2,
        1,
        None,
        (
            (0, E, "dispatched", 1, None),
            (0, E, "retried", 1, FAULT),
            *_ok(0, attempt=2),
            *_ok(1),
            *_ok(2),
        ),
    ),
    Scenario(
        "compensated_early",
        0.06,
        "compensated",
        0,
        1,
        "step '{p1}' failed: " + REFUSED,
        (*_ok(0), (1, E, "dispatched", 1, None), (1, E, "failed", 1, REFUSED), *_ok(0, C)),
    ),
    Scenario(
        "compensated_late",
        0.04,
        "compensated",
        0,
        1,
        "step '{p2}' failed: " + LATE_REFUSAL,
        (
            *_ok(0),
            *_ok(1),
            (2, E, "dispatched", 1, None),
            (2, E, "failed", 1, LATE_REFUSAL),
            *_ok(1, C),
            *_ok(0, C),
        ),
    ),
    Scenario("parked", 0.01, "parked", 0, 3, _PARKED_ERROR, _PARKED_SCRIPT),
    Scenario(
        "aborted",
        0.005,
        "aborted",
        0,
        3,
        "aborted by ops.marina: journey fixed by hand (was parked: " + _PARKED_ERROR + ")",
        (*_PARKED_SCRIPT, (0, C, "aborted", 3, "aborted by ops.marina: journey fixed by hand")),
    ),
    Scenario("running", 0.003, "running", 1, 1, None, (*_ok(0), (1, E, "dispatched", 1, None))),
    Scenario(
        "compensating",
        0.001,
        "compensating",
        0,
        1,
        "step '{p1}' failed: " + REFUSED,
        (
            *_ok(0),
            (1, E, "dispatched", 1, None),
            (1, E, "failed", 1, REFUSED),
            (0, C, "dispatched", 1, None),
        ),
    ),
    # A wait's row: "dispatched" becomes "waiting" (the script is shared with the steps).
    Scenario("waiting", 0.001, "waiting", 1, 1, None, (*_ok(0), (1, E, "dispatched", 1, None))),
)

IN_FLIGHT = ("running", "compensating")


def _check_tables() -> None:
    # Every scenario's shares add up to the whole, and so do the definitions'.
    assert abs(sum(s.share for s in SCENARIOS) - 1.0) < 1e-9
    assert abs(sum(share for _, _, share in DEFINITIONS) - 1.0) < 1e-9


ScriptRow = tuple[str, int, int, str, str, int, str | None, bool]


def _script_rows() -> list[ScriptRow]:
    """Each scenario's rows, numbered: row ``seq`` happens ``seq`` time slots after the
    start. An outcome ends at its own slot (it started with its dispatch, the slot
    before); an operator's ``aborted`` row comes hours later (``delayed``)."""
    rows: list[ScriptRow] = []
    for scenario in SCENARIOS:
        for seq, (position, action, status, attempt, error) in enumerate(scenario.script):
            delayed = status == "aborted"
            rows.append((scenario.name, seq, position, action, status, attempt, error, delayed))
    return rows


SETUP = """
CREATE TEMP TABLE fill_definition (
    key text PRIMARY KEY, id uuid, name text, version int, low float8, high float8,
    p0 text, p1 text, p2 text);
CREATE TEMP TABLE fill_position (
    key text, pos int, name text, journey text, is_wait bool, PRIMARY KEY (key, pos));
CREATE TEMP TABLE fill_scenario (
    name text PRIMARY KEY, low float8, high float8, status text, current_step int,
    step_attempt int, error text, last_seq int, transitions int, needs_step bool);
CREATE TEMP TABLE fill_script (
    scenario text, seq int, pos int, action text, status text, attempt int, error text,
    delayed bool);
CREATE TEMP TABLE fill_chunk (
    id uuid, n bigint, scenario text, definition text, gap_ms float8, w float8,
    started_at timestamptz, payload jsonb, idempotency_key text);
"""

# Sagas n = $1..$2 of $3, the last one started just before $4 (the fill's "now"), over
# $6 days, members drawn from 1..$5. A saga's time slots are gap_ms apart (8-38 ms, as
# steps take on a quiet system); the in-flight ones started lately whatever their n.
CHUNK = """
WITH drawn AS (
    SELECT n, random() AS u, random() AS v, random() AS w, random() AS k,
           1 + floor(random() * $5)::int AS member, 8 + random() * 30 AS gap_ms
    FROM generate_series($1::bigint, $2::bigint) AS n
), placed AS (
    SELECT d.*, s.name AS scenario, s.needs_step,
           (SELECT key FROM fill_definition WHERE d.v >= low AND d.v < high) AS drawn
    FROM drawn d JOIN fill_scenario s ON d.u >= s.low AND d.u < s.high
)
INSERT INTO fill_chunk
SELECT gen_random_uuid(), p.n, p.scenario,
       CASE WHEN p.scenario = 'waiting' THEN 'claim'
            WHEN p.needs_step AND p.drawn = 'claim' THEN 'book2'
            ELSE p.drawn END,
       p.gap_ms, p.w,
       CASE WHEN p.scenario IN ('running', 'compensating') THEN
                $4::timestamptz - CASE WHEN p.w < 0.8 THEN p.w / 0.8 * interval '60 seconds'
                                       ELSE (p.w - 0.8) / 0.2 * interval '2 hours' END
            WHEN p.scenario = 'waiting' THEN $4::timestamptz - p.w * interval '3 days'
            ELSE $4::timestamptz - make_interval(days => $6)
                 + (p.n - 1 + p.w) / $3::float8 * make_interval(days => $6)
                 - interval '5 seconds' END,
       jsonb_build_object(
           'user_id', md5('member-' || p.member)::uuid,
           'slot_id', md5('slot-' || p.n)::uuid,
           'amount_cents', 5000 * (1 + floor(p.v * 10)::int),
           'points', 50,
           'reason', 'consulta',
           'source_journey', 'care'),
       CASE WHEN p.k < 0.3 THEN 'request-' || p.n END
FROM placed p
"""

# The time of slot {slot} of saga c (an operator's row comes {delay} later), written
# once so that equal slots give equal times to the microsecond.
_AT = "c.started_at + {delay} + ({slot} * c.gap_ms) * interval '1 millisecond'"
_OPERATOR_DELAY = "c.w * interval '6 hours'"

# The time of a saga's last row: its finish, or where it stands now.
_LAST_AT = _AT.format(
    slot="s.last_seq",
    delay=f"CASE WHEN s.name = 'aborted' THEN {_OPERATOR_DELAY} ELSE interval '0' END",
)

INSERT_SAGAS = f"""
INSERT INTO shared.saga_instance (
    id, saga_definition_id, definition_name, definition_version, status, current_step,
    step_attempt, step_deadline, payload, context, idempotency_key, deadline, error,
    version, started_at, finished_at, created_at, updated_at, step_started_at, shape_state)
SELECT c.id, d.id, d.name, d.version, s.status, s.current_step, s.step_attempt,
       CASE WHEN s.status IN ('running', 'compensating')
            THEN t.last_at + interval '10 seconds' END,
       c.payload,
       CASE WHEN s.status = 'completed' THEN jsonb_build_object(
                'appointment_id', md5('appointment-' || c.n)::uuid,
                'authorization_id', md5('authorization-' || c.n)::uuid,
                'points_awarded', 50)
            ELSE '{{}}'::jsonb END,
       c.idempotency_key,
       CASE WHEN s.status = 'waiting' THEN t.last_at + interval '7 days' END,
       replace(replace(replace(s.error, '{{p0}}', d.p0), '{{p1}}', d.p1), '{{p2}}', d.p2),
       s.transitions, c.started_at,
       CASE WHEN s.status IN ('completed', 'compensated', 'aborted') THEN t.last_at END,
       c.started_at, t.last_at,
       CASE WHEN s.status IN ('running', 'compensating', 'waiting') THEN t.last_at END,
       CASE WHEN s.status = 'waiting'
            THEN jsonb_build_object('waiting_for', $1::text, 'clock', '{{}}'::jsonb) END
FROM fill_chunk c
JOIN fill_definition d ON d.key = c.definition
JOIN fill_scenario s ON s.name = c.scenario
CROSS JOIN LATERAL (SELECT {_LAST_AT} AS last_at) t
ORDER BY c.n
"""

# A wait's "dispatched" row is its "waiting" row, which starts and ends at its slot.
INSERT_STEPS = f"""
INSERT INTO shared.saga_step_log (
    saga_instance_id, step_index, step_name, journey, action, status, attempt, message_id,
    request, response, error, actor, started_at, finished_at, created_at, updated_at)
SELECT c.id, r.pos, p.name, p.journey, r.action, t.status, r.attempt,
       CASE WHEN t.status = 'dispatched' THEN gen_random_uuid() END,
       CASE WHEN t.status = 'dispatched' THEN c.payload END,
       CASE WHEN r.status = 'succeeded' AND r.action = 'execute' THEN jsonb_build_object(
                'ref', left(md5(c.n || '.' || r.pos), 12), 'ok', true) END,
       r.error,
       CASE WHEN r.status = 'aborted' THEN 'ops.marina' END,
       t.started_at, t.finished_at,
       coalesce(t.finished_at, t.started_at), coalesce(t.finished_at, t.started_at)
FROM fill_chunk c
JOIN fill_script r ON r.scenario = c.scenario
JOIN fill_position p ON p.key = c.definition AND p.pos = r.pos
CROSS JOIN LATERAL (
    SELECT CASE WHEN p.is_wait AND r.status = 'dispatched' THEN 'waiting'
                ELSE r.status END AS status,
           CASE WHEN r.delayed THEN {_OPERATOR_DELAY} ELSE interval '0' END AS delay,
           -- An outcome started with its dispatch, the slot before its own.
           r.seq - CASE WHEN r.status IN ('dispatched', 'waiting', 'aborted')
                        THEN 0 ELSE 1 END AS first_slot
) k
CROSS JOIN LATERAL (
    SELECT k.status,
           {_AT.format(slot="k.first_slot", delay="k.delay")} AS started_at,
           CASE WHEN k.status <> 'dispatched'
                THEN {_AT.format(slot="r.seq", delay="k.delay")} END AS finished_at
) t
-- Undoing passes through a wait: nothing is sent to undo it.
WHERE NOT (p.is_wait AND r.action = 'compensate')
ORDER BY c.n, r.seq
"""


@dataclass(frozen=True)
class FillReport:
    sagas: int
    step_rows: int
    seconds: float
    analyze_seconds: float
    by_status: dict[str, int]
    sizes: dict[str, dict[str, int]]
    """Per table: ``table``, ``indexes`` and ``total`` bytes, and ``rows``."""


async def register_definitions(settings: Settings, url: str) -> dict[str, uuid.UUID]:
    """The benchmark's definitions, stored as the engine stores them; their ids by key."""
    database = Database.from_settings(settings, url=url, application_name="console-bench")
    ids: dict[str, uuid.UUID] = {}
    try:
        for key, definition, _ in DEFINITIONS:

            async def store(conn: DriverConnection, d: SagaDefinition = definition) -> uuid.UUID:
                stored = await definitions.register(conn, d.validate())
                return stored.id

            ids[key] = await database.run_driver(store, name="bench.register")
    finally:
        await database.dispose()
    return ids


async def fill(
    settings: Settings, url: str, sagas: int, *, chunk: int = 100_000, seed: float = 0.42
) -> FillReport:
    """Write ``sagas`` sagas and their step logs, then VACUUM ANALYZE; print progress."""
    _check_tables()
    started = time.perf_counter()
    ids = await register_definitions(settings, url)
    conn = await asyncpg.connect(to_plain_url(url))
    try:
        await _prepare(conn, ids, seed)
        now = await conn.fetchval("SELECT now()")
        rows = 0
        for first in range(1, sagas + 1, chunk):
            last = min(sagas, first + chunk - 1)
            async with conn.transaction():
                # A crash of the server loses nothing but the fill itself.
                await conn.execute("SET LOCAL synchronous_commit = off")
                await conn.execute("TRUNCATE fill_chunk")
                await conn.execute(CHUNK, first, last, sagas, now, MEMBERS, DAYS)
                await conn.execute("ANALYZE fill_chunk")
                await conn.execute(INSERT_SAGAS, WAIT_EVENT)
                status = await conn.execute(INSERT_STEPS)
                rows += int(status.split()[-1])
            took = time.perf_counter() - started
            print(
                f"  fill: {last:>10,} / {sagas:,} sagas, {rows:>11,} step rows, "
                f"{took:7.1f} s ({last / took:,.0f} sagas/s)",
                flush=True,
            )
        filled = time.perf_counter() - started
        await conn.execute("VACUUM (ANALYZE) shared.saga_instance, shared.saga_step_log")
        await conn.execute("ANALYZE shared.saga_definition")
        analyzed = time.perf_counter() - started - filled
        return FillReport(
            sagas=sagas,
            step_rows=rows,
            seconds=filled,
            analyze_seconds=analyzed,
            by_status=await _by_status(conn),
            sizes=await table_sizes(conn),
        )
    finally:
        await conn.close()


async def _prepare(conn: asyncpg.Connection, ids: dict[str, uuid.UUID], seed: float) -> None:
    """The fill's tables of definitions, positions and scenarios. A draw u in [0, 1) picks
    the row whose [low, high) holds it; the last row's high is 2, so it also takes what
    the sum of the shares misses by rounding."""
    await conn.execute(SETUP)
    await conn.execute("SELECT setseed($1)", seed)
    low = 0.0
    for key, definition, share in DEFINITIONS:
        names = [position.name for position in definition.positions]
        await conn.execute(
            "INSERT INTO fill_definition VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            key,
            ids[key],
            definition.name,
            definition.version,
            low,
            low + share if key != DEFINITIONS[-1][0] else 2.0,
            *names,
        )
        low += share
        await conn.executemany(
            "INSERT INTO fill_position VALUES ($1, $2, $3, $4, $5)",
            [
                (key, pos, p.name, getattr(p, "journey", ENGINE_JOURNEY), isinstance(p, AwaitEvent))
                for pos, p in enumerate(definition.positions)
            ],
        )
    low = 0.0
    for scenario in SCENARIOS:
        high = low + scenario.share if scenario is not SCENARIOS[-1] else 2.0
        await conn.execute(
            "INSERT INTO fill_scenario VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            scenario.name,
            low,
            high,
            scenario.status,
            scenario.current_step,
            scenario.step_attempt,
            scenario.error,
            len(scenario.script) - 1,
            1 + len(scenario.script) // 2,
            scenario.needs_step,
        )
        low = high
    await conn.executemany(
        "INSERT INTO fill_script VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", _script_rows()
    )


async def _by_status(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT status, count(*) AS n FROM shared.saga_instance GROUP BY status ORDER BY n DESC"
    )
    return {row["status"]: int(row["n"]) for row in rows}


async def table_sizes(conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
    sizes: dict[str, dict[str, int]] = {}
    for table in ("shared.saga_instance", "shared.saga_step_log", "shared.saga_definition"):
        row = await conn.fetchrow(
            "SELECT pg_table_size($1::regclass) AS table_bytes, "
            "pg_indexes_size($1::regclass) AS index_bytes, "
            "pg_total_relation_size($1::regclass) AS total_bytes, "
            "(SELECT reltuples::bigint FROM pg_class WHERE oid = $1::regclass) AS rows",
            table,
        )
        assert row is not None
        sizes[table] = {
            "table": int(row["table_bytes"]),
            "indexes": int(row["index_bytes"]),
            "total": int(row["total_bytes"]),
            "rows": int(row["rows"]),
        }
    return sizes
