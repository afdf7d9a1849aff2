"""The journeys' business rules, enforced by PostgreSQL itself (no application code)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from saga.errors import (
    CheckViolation,
    ExclusionViolation,
    InsufficientPrivilege,
    IntegrityViolation,
    UniqueViolation,
)
from saga.store import Database

pytestmark = pytest.mark.integration


async def insert(conn: AsyncConnection, table: str, row: Mapping[str, Any]) -> uuid.UUID:
    columns = ", ".join(row)
    values = ", ".join(f":{name}" for name in row)
    new_id = await conn.scalar(
        text(f"INSERT INTO {table} ({columns}) VALUES ({values}) RETURNING id"), dict(row)
    )
    assert isinstance(new_id, uuid.UUID)
    return new_id


async def new_user(conn: AsyncConnection) -> uuid.UUID:
    tag = uuid.uuid4().hex[:12]
    return await insert(
        conn, "shared.shared_user", {"email": f"{tag}@exemplo.com.br", "full_name": f"Teste {tag}"}
    )


async def new_provider(conn: AsyncConnection) -> uuid.UUID:
    tag = uuid.uuid4().hex[:8]
    specialty = await insert(
        conn, "care_journey.care_specialty", {"code": f"spec_{tag}", "name": "Cardiologia"}
    )
    return await insert(
        conn,
        "care_journey.care_provider",
        {
            "specialty_id": specialty,
            "full_name": "Dra. Teste",
            "crm": f"CRM-SP {tag}",
            "city": "São Paulo",
            "state": "SP",
        },
    )


async def new_slot(
    conn: AsyncConnection, provider: uuid.UUID, start: datetime, end: datetime
) -> uuid.UUID:
    return await insert(
        conn,
        "care_journey.care_slot",
        {"provider_id": provider, "starts_at": start, "ends_at": end},
    )


def appointment(
    slot: uuid.UUID, provider: uuid.UUID, patient: uuid.UUID, start: datetime, end: datetime
) -> dict[str, Any]:
    return {
        "slot_id": slot,
        "provider_id": provider,
        "patient_id": patient,
        "starts_at": start,
        "ends_at": end,
        "status": "confirmed",
    }


def ts(hhmm: str) -> datetime:
    hour, minute = map(int, hhmm.split(":"))
    return datetime(2031, 3, 10, hour, minute, tzinfo=UTC)


async def test_a_provider_cannot_be_double_booked(database: Database) -> None:
    async def setup(conn: AsyncConnection) -> tuple[uuid.UUID, ...]:
        provider = await new_provider(conn)
        first = await new_slot(conn, provider, ts("10:00"), ts("10:30"))
        second = await new_slot(conn, provider, ts("10:30"), ts("11:00"))
        patient_a, patient_b = await new_user(conn), await new_user(conn)
        await insert(
            conn,
            "care_journey.care_appointment",
            appointment(first, provider, patient_a, ts("10:00"), ts("10:30")),
        )
        return provider, first, second, patient_b

    provider, first, second, patient_b = await database.run(setup)

    async def overlapping(conn: AsyncConnection) -> None:
        await insert(
            conn,
            "care_journey.care_appointment",
            appointment(second, provider, patient_b, ts("10:15"), ts("10:45")),
        )

    with pytest.raises(ExclusionViolation) as caught:
        await database.run(overlapping)
    assert caught.value.constraint == "care_appointment_no_double_booking"

    async def same_slot(conn: AsyncConnection) -> None:
        await insert(
            conn,
            "care_journey.care_appointment",
            appointment(first, provider, patient_b, ts("10:00"), ts("10:30")),
        )

    with pytest.raises((UniqueViolation, ExclusionViolation)):
        await database.run(same_slot)

    async def adjacent(conn: AsyncConnection) -> None:
        await insert(
            conn,
            "care_journey.care_appointment",
            appointment(second, provider, patient_b, ts("10:30"), ts("11:00")),
        )

    await database.run(adjacent)


async def test_a_cancelled_appointment_frees_the_time(database: Database) -> None:
    async def work(conn: AsyncConnection) -> None:
        provider = await new_provider(conn)
        slot = await new_slot(conn, provider, ts("14:00"), ts("14:30"))
        patient = await new_user(conn)
        booked = await insert(
            conn,
            "care_journey.care_appointment",
            appointment(slot, provider, patient, ts("14:00"), ts("14:30")),
        )
        await conn.execute(
            text(
                "UPDATE care_journey.care_appointment "
                "SET status = 'cancelled', cancelled_reason = 'paciente desistiu' WHERE id = :id"
            ),
            {"id": booked},
        )
        await insert(
            conn,
            "care_journey.care_appointment",
            appointment(slot, provider, await new_user(conn), ts("14:00"), ts("14:30")),
        )

    await database.run(work)


async def new_coverage(
    conn: AsyncConnection, member: uuid.UUID, *, limit_cents: int = 500_000
) -> uuid.UUID:
    tag = uuid.uuid4().hex[:10]
    plan = await insert(
        conn,
        "plan_journey.plan_insurance_plan",
        {
            "code": f"plan_{tag}",
            "name": "Essencial",
            "plan_type": "standard",
            "annual_limit_cents": limit_cents,
        },
    )
    return await insert(
        conn,
        "plan_journey.plan_member_coverage",
        {
            "user_id": member,
            "insurance_plan_id": plan,
            "policy_number": f"POL-{tag}",
            "period_start": date(2026, 1, 1),
            "period_end": date(2026, 12, 31),
            "annual_limit_cents": limit_cents,
        },
    )


def claim(coverage: uuid.UUID, member: uuid.UUID, **changes: Any) -> dict[str, Any]:
    return {
        "member_coverage_id": coverage,
        "user_id": member,
        "amount_cents": 25_000,
        "service_date": date(2026, 3, 1),
        "procedure_code": "10101012",
        "diagnosis_code": "J45.0",
        **changes,
    }


@pytest.mark.parametrize(
    ("changes", "constraint"),
    [
        ({"amount_cents": 0}, "plan_claim_amount_cents_check"),
        ({"procedure_code": "ABC"}, "plan_claim_procedure_code_check"),
        ({"diagnosis_code": "asthma"}, "plan_claim_diagnosis_code_check"),
        ({"service_date": date.today() + timedelta(days=30)}, "plan_claim_service_date_check"),
        ({"status": "rejected"}, "plan_claim_rejection_reason_check"),
        ({"approved_cents": 30_000}, "plan_claim_approved_cents_check"),
    ],
)
async def test_an_invalid_claim_is_refused(
    database: Database, changes: dict[str, Any], constraint: str
) -> None:
    async def submit(conn: AsyncConnection) -> None:
        member = await new_user(conn)
        coverage = await new_coverage(conn, member)
        await insert(conn, "plan_journey.plan_claim", claim(coverage, member, **changes))

    with pytest.raises(CheckViolation) as caught:
        await database.run(submit)
    assert caught.value.constraint == constraint


async def test_no_plan_pays_past_its_limit(database: Database) -> None:
    async def overspend(conn: AsyncConnection) -> None:
        member = await new_user(conn)
        coverage = await new_coverage(conn, member, limit_cents=100_000)
        await conn.execute(
            text(
                "UPDATE plan_journey.plan_member_coverage "
                "SET used_cents = used_cents + 100001 WHERE id = :id"
            ),
            {"id": coverage},
        )

    with pytest.raises(CheckViolation) as caught:
        await database.run(overspend)
    # Both checks bound used_cents by the limit; PostgreSQL names whichever it tests first.
    assert caught.value.constraint in {
        "plan_member_coverage_used_cents_check",
        "plan_member_coverage_reserved_cents_check",
    }


async def test_an_insurance_update_writes_an_audit_row(database: Database) -> None:
    saga_id = uuid.uuid4()

    async def work(conn: AsyncConnection) -> list[Any]:
        member = await new_user(conn)
        coverage = await new_coverage(conn, member)
        await conn.execute(
            text("SELECT set_config('app.saga_id', :saga, true)"), {"saga": str(saga_id)}
        )
        await conn.execute(
            text("UPDATE plan_journey.plan_member_coverage SET used_cents = 12345 WHERE id = :id"),
            {"id": coverage},
        )
        rows = await conn.execute(
            text(
                "SELECT operation, old_row->>'used_cents', new_row->>'used_cents', saga_id "
                "FROM plan_journey.plan_audit_log "
                "WHERE table_name = 'plan_member_coverage' AND row_id = :id ORDER BY changed_at"
            ),
            {"id": coverage},
        )
        return list(rows.all())

    rows = await database.run(work)
    assert [row[0] for row in rows] == ["INSERT", "UPDATE"]
    assert rows[1][1:] == ("0", "12345", saga_id)


async def test_the_audit_trail_cannot_be_rewritten(database: Database) -> None:
    async def tamper(conn: AsyncConnection) -> None:
        member = await new_user(conn)
        coverage = await new_coverage(conn, member)
        await conn.execute(
            text("DELETE FROM plan_journey.plan_audit_log WHERE row_id = :id"), {"id": coverage}
        )

    with pytest.raises(IntegrityViolation, match="append-only"):
        await database.run(tamper)


async def test_row_level_security_hides_other_members_claims(database: Database) -> None:
    async def setup(conn: AsyncConnection) -> tuple[uuid.UUID, uuid.UUID]:
        member_a, member_b = await new_user(conn), await new_user(conn)
        for member in (member_a, member_b):
            coverage = await new_coverage(conn, member)
            await insert(conn, "plan_journey.plan_claim", claim(coverage, member))
        return member_a, member_b

    member_a, member_b = await database.run(setup)

    async def visible_claim_owners(conn: AsyncConnection, member: uuid.UUID | None) -> set[Any]:
        await conn.execute(text("SET LOCAL ROLE austa_plan_member"))
        if member is not None:
            await conn.execute(
                text("SELECT set_config('app.current_member_id', :m, true)"), {"m": str(member)}
            )
        rows = await conn.execute(text("SELECT DISTINCT user_id FROM plan_journey.plan_claim"))
        return {row[0] for row in rows}

    assert await database.run(lambda c: visible_claim_owners(c, member_a)) == {member_a}
    assert await database.run(lambda c: visible_claim_owners(c, member_b)) == {member_b}
    assert await database.run(lambda c: visible_claim_owners(c, None)) == set()

    async def as_service(conn: AsyncConnection) -> set[Any]:
        await conn.execute(text("SET LOCAL ROLE austa_plan_journey"))
        rows = await conn.execute(
            text("SELECT user_id FROM plan_journey.plan_claim WHERE user_id IN (:a, :b)"),
            {"a": member_a, "b": member_b},
        )
        return {row[0] for row in rows}

    assert await database.run(as_service) == {member_a, member_b}


async def test_a_service_role_cannot_read_another_journey(database: Database) -> None:
    async def peek(conn: AsyncConnection) -> None:
        await conn.execute(text("SET LOCAL ROLE austa_care_journey"))
        await conn.execute(text("SELECT count(*) FROM plan_journey.plan_claim"))

    with pytest.raises(InsufficientPrivilege):
        await database.run(peek)


async def test_xp_follows_the_ledger_which_is_append_only(database: Database) -> None:
    async def award(conn: AsyncConnection) -> tuple[uuid.UUID, uuid.UUID]:
        user = await new_user(conn)
        profile = await insert(
            conn, "gamification.gamification_profile", {"user_id": user, "display_name": "Ana"}
        )
        entry = await insert(
            conn,
            "gamification.gamification_points_ledger",
            {
                "profile_id": profile,
                "points": 150,
                "reason": "consulta agendada",
                "source_journey": "care",
                "source_ref": "appointment:1",
                "saga_id": uuid.uuid4(),
            },
        )
        return profile, entry

    profile, entry = await database.run(award)
    xp = await database.run(
        lambda c: c.scalar(
            text("SELECT xp FROM gamification.gamification_profile WHERE id = :id"),
            {"id": profile},
        )
    )
    assert xp == 150

    async def edit(conn: AsyncConnection) -> None:
        await conn.execute(
            text("UPDATE gamification.gamification_points_ledger SET points = 1 WHERE id = :id"),
            {"id": entry},
        )

    with pytest.raises(IntegrityViolation, match="append-only"):
        await database.run(edit)


async def test_an_implausible_health_metric_is_refused(database: Database) -> None:
    async def record(conn: AsyncConnection) -> None:
        await insert(
            conn,
            "health_journey.health_metric",
            {
                "user_id": await new_user(conn),
                "metric_type": "heart_rate",
                "value": 420,
                "unit": "bpm",
                "recorded_at": datetime(2026, 11, 20, 8, tzinfo=UTC),
                "source": "manual",
            },
        )

    with pytest.raises(CheckViolation) as caught:
        await database.run(record)
    assert caught.value.constraint is not None
    assert caught.value.constraint.startswith("health_metric")
