"""Rows the cross-journey sagas act on, made on demand: members with coverage, providers
with open slots, completed appointments to claim, goals to complete.

The examples, the demo, the tests and the benchmarks build their scenes with these
instead of depending on which sample rows a seed happened to make. Every function takes
an open connection (the database owner's: it writes several journeys' schemas) and
returns the ids it made. Names and e-mails are unique per call, so scenes never collide.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from journeys.shared.payload import OPERATOR_TIMEZONE
from saga import Connection


@dataclass(frozen=True, slots=True)
class Member:
    user_id: uuid.UUID
    coverage_id: uuid.UUID
    limit_cents: int


@dataclass(frozen=True, slots=True)
class Slot:
    slot_id: uuid.UUID
    provider_id: uuid.UUID
    starts_at: datetime
    ends_at: datetime

    @property
    def service_date(self) -> date:
        """The slot's date as the operator (and book_appointment v2) counts it."""
        return self.starts_at.astimezone(ZoneInfo(OPERATOR_TIMEZONE)).date()


@dataclass(frozen=True, slots=True)
class CompletedAppointment:
    appointment_id: uuid.UUID
    service_date: date


async def create_user(conn: Connection, name: str = "Paciente de Teste") -> uuid.UUID:
    tag = uuid.uuid4().hex[:12]
    user_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO shared.shared_user (email, full_name) VALUES ($1, $2) RETURNING id",
        f"paciente.{tag}@exemplo.example",
        name,
    )
    return user_id


async def create_member(
    conn: Connection,
    *,
    limit_cents: int = 1_000_000,
    name: str = "Paciente de Teste",
    used_cents: int = 0,
) -> Member:
    """A user covered today by a plan of their own with ``limit_cents`` a year.

    ``used_cents`` opens the coverage part-used with no claims behind it, so the
    invariant check's coverage books will not balance for this member."""
    user_id = await create_user(conn, name)
    tag = uuid.uuid4().hex[:12]
    plan_id = await conn.fetchval(
        """
        INSERT INTO plan_journey.plan_insurance_plan (code, name, plan_type, annual_limit_cents)
        VALUES ($1, $2, 'standard', $3) RETURNING id
        """,
        f"teste_{tag}",
        f"Plano de teste {tag}",
        limit_cents,
    )
    today = datetime.now(UTC).date()
    coverage_id = await conn.fetchval(
        """
        INSERT INTO plan_journey.plan_member_coverage (
            user_id, insurance_plan_id, policy_number, period_start, period_end,
            annual_limit_cents, used_cents
        ) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id
        """,
        user_id,
        plan_id,
        f"TST-{tag}",
        today - timedelta(days=365),
        today + timedelta(days=365),
        limit_cents,
        used_cents,
    )
    return Member(user_id, coverage_id, limit_cents)


async def create_provider(conn: Connection, name: str = "Dra. Teste") -> uuid.UUID:
    tag = uuid.uuid4().hex[:12]
    specialty_id = await conn.fetchval(
        """
        INSERT INTO care_journey.care_specialty (code, name)
        VALUES ('clinica_geral', 'Clínica Geral')
        ON CONFLICT (code) DO UPDATE SET code = EXCLUDED.code RETURNING id
        """
    )
    provider_id: uuid.UUID = await conn.fetchval(
        """
        INSERT INTO care_journey.care_provider (specialty_id, full_name, crm, city, state)
        VALUES ($1, $2, $3, 'São Paulo', 'SP') RETURNING id
        """,
        specialty_id,
        name,
        f"CRM-SP {tag}",
    )
    return provider_id


async def create_slots(
    conn: Connection,
    provider_id: uuid.UUID,
    count: int,
    *,
    first: datetime | None = None,
    minutes: int = 30,
) -> list[Slot]:
    """``count`` open back-to-back slots from ``first`` (tomorrow 09:00 UTC by default)."""
    if first is None:
        tomorrow = datetime.now(UTC).date() + timedelta(days=1)
        first = datetime.combine(tomorrow, datetime.min.time(), UTC) + timedelta(hours=9)
    length = timedelta(minutes=minutes)
    starts = [first + n * length for n in range(count)]
    rows = await conn.fetch(
        """
        INSERT INTO care_journey.care_slot (provider_id, starts_at, ends_at)
        SELECT $1, s, s + $3::interval FROM unnest($2::timestamptz[]) AS s
        RETURNING id, starts_at, ends_at
        """,
        provider_id,
        starts,
        length,
    )
    return [Slot(r["id"], provider_id, r["starts_at"], r["ends_at"]) for r in rows]


async def create_completed_appointment(
    conn: Connection,
    user_id: uuid.UUID,
    provider_id: uuid.UUID,
    *,
    days_ago: int = 3,
    status: str = "completed",
) -> CompletedAppointment:
    """An appointment of ``days_ago`` that took place (or, with ``status='confirmed'``,
    one the patient missed: it may not be billed)."""
    day = datetime.now(UTC).date() - timedelta(days=days_ago)
    first = datetime.combine(day, datetime.min.time(), UTC) + timedelta(
        hours=13, minutes=int(uuid.uuid4().int % 16) * 30
    )
    # A random half hour of the afternoon; a clash with an earlier one is retried.
    for offset in range(48):
        starts = first + timedelta(minutes=30 * offset)
        slot = await conn.fetchrow(
            """
            INSERT INTO care_journey.care_slot (provider_id, starts_at, ends_at, status)
            SELECT $1, $2::timestamptz, $2::timestamptz + interval '30 minutes', 'booked'
            WHERE NOT EXISTS (
                SELECT FROM care_journey.care_slot
                WHERE provider_id = $1 AND deleted_at IS NULL
                  AND tstzrange(starts_at, ends_at, '[)')
                      && tstzrange($2::timestamptz, $2::timestamptz + interval '30 minutes'))
            RETURNING id, starts_at, ends_at
            """,
            provider_id,
            starts,
        )
        if slot is not None:
            break
    else:
        raise RuntimeError(f"provider {provider_id} has no free half hour on {day}")
    appointment_id: uuid.UUID = await conn.fetchval(
        """
        INSERT INTO care_journey.care_appointment (
            slot_id, provider_id, patient_id, starts_at, ends_at, status
        ) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id
        """,
        slot["id"],
        provider_id,
        user_id,
        slot["starts_at"],
        slot["ends_at"],
        status,
    )
    return CompletedAppointment(appointment_id, day)


async def create_goal(
    conn: Connection,
    user_id: uuid.UUID,
    *,
    goal_type: str = "daily_steps",
    unit: str = "steps",
    target_value: Decimal = Decimal(8000),
    points_reward: int = 50,
) -> uuid.UUID:
    """An active goal of this week for ``user_id``."""
    today = datetime.now(UTC).date()
    goal_id: uuid.UUID = await conn.fetchval(
        """
        INSERT INTO health_journey.health_goal (
            user_id, goal_type, target_value, unit, period_start, period_end, points_reward
        ) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id
        """,
        user_id,
        goal_type,
        target_value,
        unit,
        today - timedelta(days=6),
        today,
        points_reward,
    )
    return goal_id
