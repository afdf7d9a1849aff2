"""The rows the journeys workload acts on, made in bulk: a statement per table where
:mod:`journeys.world` makes one row per call (too slow for thousands of rows).

Members have a coverage of their own (most a large limit, some a small one, so that some
bookings and claims are refused for the limit); a few users have none (their goals'
wellness credit is refused). Providers have open half-hour slots from tomorrow on, and
completed appointments in the past, one per claim; every goal is active this week.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg

from journeys.shared.payload import OPERATOR_TIMEZONE

LARGE_LIMIT_CENTS = 100_000_000
SMALL_LIMIT_CENTS = 40_000
GOAL_TARGET_STEPS = 8_000
GOAL_POINTS = 50
PAST_PER_DAY = 20  # completed appointments per provider and day, from 12:00 UTC


@dataclass(frozen=True, slots=True)
class SceneSize:
    members: int
    small_limit_members: int
    uncovered_users: int
    providers: int
    slots: int
    """Open future slots, spread over the providers."""
    appointments: list[int]
    """Per completed appointment: the index of its patient among the members."""
    goals: list[int]
    """Per goal: the index of its owner among the members, then the uncovered users."""


@dataclass(frozen=True, slots=True)
class Appointment:
    appointment_id: uuid.UUID
    user_id: uuid.UUID
    service_date: date


@dataclass(frozen=True, slots=True)
class Goal:
    goal_id: uuid.UUID
    user_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Slot:
    slot_id: uuid.UUID
    service_date: date
    """The slot's date as the operator counts it (book_appointment v2 authorizes for it)."""


@dataclass(frozen=True, slots=True)
class Scene:
    members: list[uuid.UUID]
    uncovered: list[uuid.UUID]
    slots: list[Slot]
    appointments: list[Appointment]
    goals: list[Goal]


async def _ids(conn: asyncpg.Connection, sql: str, *args: object) -> list[uuid.UUID]:
    return [row["id"] for row in await conn.fetch(sql, *args)]


async def _users(conn: asyncpg.Connection, count: int, tag: str) -> list[uuid.UUID]:
    return await _ids(
        conn,
        """
        INSERT INTO shared.shared_user (email, full_name)
        SELECT 'bench.' || $2 || '.' || g || '@exemplo.example', 'Paciente ' || $2 || ' ' || g
        FROM generate_series(1, $1) g ORDER BY g
        RETURNING id
        """,
        count,
        tag,
    )


async def _coverages(conn: asyncpg.Connection, members: list[uuid.UUID], small: int) -> None:
    """A coverage per member from a year ago to a year ahead; the first ``small`` get the
    small limit."""
    today = datetime.now(UTC).date()
    limits = [SMALL_LIMIT_CENTS if n < small else LARGE_LIMIT_CENTS for n in range(len(members))]
    plans = {
        limit: await conn.fetchval(
            """
            INSERT INTO plan_journey.plan_insurance_plan
                (code, name, plan_type, annual_limit_cents)
            VALUES ($1, $2, 'standard', $3) RETURNING id
            """,
            f"bench_{limit}",
            f"Plano benchmark {limit}",
            limit,
        )
        for limit in sorted(set(limits))
    }
    await conn.execute(
        """
        INSERT INTO plan_journey.plan_member_coverage (
            user_id, insurance_plan_id, policy_number, period_start, period_end,
            annual_limit_cents
        )
        SELECT u, p, 'BENCH-' || n, $4::date - 365, $4::date + 365, l
        FROM unnest($1::uuid[], $2::uuid[], $3::bigint[]) WITH ORDINALITY AS t(u, p, l, n)
        """,
        members,
        [plans[limit] for limit in limits],
        limits,
        today,
    )


async def _providers(conn: asyncpg.Connection, count: int) -> list[uuid.UUID]:
    specialty = await conn.fetchval(
        """
        INSERT INTO care_journey.care_specialty (code, name)
        VALUES ('clinica_geral', 'Clínica Geral')
        ON CONFLICT (code) DO UPDATE SET code = EXCLUDED.code RETURNING id
        """
    )
    return await _ids(
        conn,
        """
        INSERT INTO care_journey.care_provider (specialty_id, full_name, crm, city, state)
        SELECT $1, 'Dra. Benchmark ' || g, 'CRM-SP BENCH-' || g, 'São Paulo', 'SP'
        FROM generate_series(1, $2) g ORDER BY g
        RETURNING id
        """,
        specialty,
        count,
    )


async def _future_slots(
    conn: asyncpg.Connection, providers: list[uuid.UUID], count: int
) -> list[Slot]:
    """``count`` open slots, provider by provider in turn, back to back from tomorrow
    09:00 UTC: slot g is provider g % P's (g / P)-th half hour."""
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    first = datetime.combine(tomorrow, datetime.min.time(), UTC) + timedelta(hours=9)
    rows = await conn.fetch(
        """
        INSERT INTO care_journey.care_slot (provider_id, starts_at, ends_at)
        SELECT ($1::uuid[])[1 + g % $2],
               $3::timestamptz + (g / $2) * interval '30 minutes',
               $3::timestamptz + (g / $2 + 1) * interval '30 minutes'
        FROM generate_series(0, $4 - 1) g ORDER BY g
        RETURNING id, (starts_at AT TIME ZONE $5)::date AS service_date
        """,
        providers,
        len(providers),
        first,
        count,
        OPERATOR_TIMEZONE,
    )
    return [Slot(row["id"], row["service_date"]) for row in rows]


async def _completed_appointments(
    conn: asyncpg.Connection, providers: list[uuid.UUID], patients: list[uuid.UUID]
) -> list[Appointment]:
    """A booked past slot and a completed appointment on it per patient in ``patients``:
    appointment g is provider g % P's, on the (g / P)-th half hour counted back from two
    days ago, at most PAST_PER_DAY a day from 12:00 UTC (so it is that day in Brazil too)."""
    two_days_ago = datetime.now(UTC).date() - timedelta(days=2)
    starts: list[datetime] = []
    owners: list[uuid.UUID] = []
    for g in range(len(patients)):
        turn = g // len(providers)
        day = two_days_ago - timedelta(days=turn // PAST_PER_DAY)
        noon = datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=12)
        starts.append(noon + timedelta(minutes=30 * (turn % PAST_PER_DAY)))
        owners.append(providers[g % len(providers)])
    rows = await conn.fetch(
        """
        WITH wanted AS (
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[])
                WITH ORDINALITY AS t(provider_id, patient_id, starts_at, n)
        ), slot AS (
            INSERT INTO care_journey.care_slot (provider_id, starts_at, ends_at, status)
            SELECT provider_id, starts_at, starts_at + interval '30 minutes', 'booked'
            FROM wanted ORDER BY n
            RETURNING id, provider_id, starts_at, ends_at
        ), appointment AS (
            INSERT INTO care_journey.care_appointment (
                slot_id, provider_id, patient_id, starts_at, ends_at, status
            )
            SELECT s.id, s.provider_id, w.patient_id, s.starts_at, s.ends_at, 'completed'
            FROM slot s JOIN wanted w USING (provider_id, starts_at)
            RETURNING id, provider_id, patient_id, starts_at
        )
        SELECT a.id, a.patient_id, a.starts_at FROM appointment a
        JOIN wanted w USING (provider_id, starts_at)
        ORDER BY w.n
        """,
        owners,
        patients,
        starts,
    )
    return [
        Appointment(row["id"], row["patient_id"], row["starts_at"].astimezone(UTC).date())
        for row in rows
    ]


async def _goals(conn: asyncpg.Connection, owners: list[uuid.UUID]) -> list[Goal]:
    """An active daily-steps goal of this week per entry of ``owners``."""
    today = datetime.now(UTC).date()
    rows = await conn.fetch(
        """
        INSERT INTO health_journey.health_goal (
            user_id, goal_type, target_value, unit, period_start, period_end, points_reward
        )
        SELECT u, 'daily_steps', $2, 'steps', $3::date - 6, $3::date, $4
        FROM unnest($1::uuid[]) WITH ORDINALITY AS t(u, n) ORDER BY n
        RETURNING id, user_id
        """,
        owners,
        GOAL_TARGET_STEPS,
        today,
        GOAL_POINTS,
    )
    return [Goal(row["id"], row["user_id"]) for row in rows]


async def build_scene(conn: asyncpg.Connection, size: SceneSize) -> Scene:
    """Every row of the scene, in one transaction; the tables analyzed afterwards."""
    tag = uuid.uuid4().hex[:8]
    async with conn.transaction():
        members = await _users(conn, size.members, f"m{tag}")
        uncovered = await _users(conn, size.uncovered_users, f"u{tag}")
        await _coverages(conn, members, size.small_limit_members)
        providers = await _providers(conn, size.providers)
        slots = await _future_slots(conn, providers, size.slots)
        appointments = await _completed_appointments(
            conn, providers, [members[n] for n in size.appointments]
        )
        owners = members + uncovered
        goals = await _goals(conn, [owners[n] for n in size.goals])
    await conn.execute("ANALYZE")
    return Scene(members, uncovered, slots, appointments, goals)
