"""The plan journey's step handlers, called directly as ``austa_plan_journey`` the way the
participant runtime calls them: one Serializable transaction each.

Besides each handler's rows, every test checks the books: a coverage's ``used_cents`` is
what its approved claims approved, its ``reserved_cents`` what its unclaimed approved
pre-authorizations promise, and the audit trail names the saga that changed it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from journeys import world
from journeys.plan.service import SERVICE
from journeys.plan.steps import WELLNESS_CREDIT_REASON
from saga import Row
from saga.errors import StepRefused
from saga.retry import RetryPolicy
from saga.store import Database
from tests.integration.conftest import SagaEnvironment
from tests.integration.journey_steps import refusal, role_database, run_step

pytestmark = pytest.mark.integration

SAO_PAULO = ZoneInfo("America/Sao_Paulo")
# Enough for ten transactions colliding on one coverage row.
PATIENT = RetryPolicy(max_attempts=50, initial_delay=0.001, max_delay=0.05)


def today() -> date:
    return datetime.now(SAO_PAULO).date()


async def row(db: Database, query: str, *args: Any) -> Row:
    found = await db.run_driver(lambda conn: conn.fetchrow(query, *args))
    assert found is not None, f"no row for {query} {args}"
    return found


async def rows(db: Database, query: str, *args: Any) -> list[Row]:
    return await db.run_driver(lambda conn: conn.fetch(query, *args))


@pytest.fixture
async def plan(saga_env: SagaEnvironment) -> AsyncIterator[Database]:
    """A Database logged in as the plan journey's own role."""
    async with role_database(saga_env, SERVICE) as db:
        yield db


async def new_member(owner: Database, limit_cents: int = 100_000, used: int = 0) -> world.Member:
    return await owner.run_driver(
        lambda conn: world.create_member(conn, limit_cents=limit_cents, used_cents=used)
    )


async def coverage(owner: Database, member: world.Member) -> Row:
    return await row(
        owner,
        "SELECT used_cents, reserved_cents, annual_limit_cents "
        "FROM plan_journey.plan_member_coverage WHERE id = $1",
        member.coverage_id,
    )


BOOKS = """
    SELECT m.used_cents, m.reserved_cents,
           (SELECT coalesce(sum(c.approved_cents), 0) FROM plan_journey.plan_claim AS c
            WHERE c.member_coverage_id = m.id AND c.status IN ('approved', 'paid')
              AND c.deleted_at IS NULL) AS claimed,
           (SELECT coalesce(sum(p.amount_cents), 0) FROM plan_journey.plan_pre_authorization AS p
            WHERE p.member_coverage_id = m.id AND p.status = 'approved' AND p.deleted_at IS NULL
              AND NOT EXISTS (
                  SELECT FROM plan_journey.plan_claim AS c
                  WHERE c.pre_authorization_id = p.id
                    AND c.status NOT IN ('rejected', 'cancelled') AND c.deleted_at IS NULL
              )) AS promised
    FROM plan_journey.plan_member_coverage AS m WHERE m.id = $1
"""


async def assert_books(
    owner: Database, member: world.Member, *, used: int, reserved: int, opening: int = 0
) -> None:
    """The coverage holds ``used``/``reserved`` and its claims and pre-authorizations
    account for exactly that, beyond the ``opening`` use the scene started it with
    (world.create_member sets ``used_cents`` without claims behind it)."""
    books = await row(owner, BOOKS, member.coverage_id)
    assert (books["used_cents"], books["reserved_cents"]) == (used, reserved)
    assert (books["claimed"] + opening, books["promised"]) == (used, reserved)


async def coverage_audit(owner: Database, member: world.Member) -> list[Row]:
    return await rows(
        owner,
        "SELECT operation, saga_id, old_row, new_row FROM plan_journey.plan_audit_log "
        "WHERE table_name = 'plan_member_coverage' AND row_id = $1 ORDER BY changed_at, id",
        member.coverage_id,
    )


async def audited_sagas(owner: Database, table: str, row_id: Any) -> list[tuple[str, Any]]:
    found = await rows(
        owner,
        "SELECT operation, saga_id FROM plan_journey.plan_audit_log "
        "WHERE table_name = $1 AND row_id = $2::uuid ORDER BY changed_at, id",
        table,
        row_id,
    )
    return [(r["operation"], r["saga_id"]) for r in found]


def booking(member: world.Member, amount: int) -> dict[str, Any]:
    return {"user_id": str(member.user_id), "amount_cents": amount}


def booked(appointment_id: uuid.UUID | None = None, on: date | None = None) -> dict[str, Any]:
    """The context reserve_slot leaves for authorize_coverage."""
    return {
        "appointment_id": str(appointment_id or uuid.uuid4()),
        "service_date": (on or today()).isoformat(),
    }


def claim(
    member: world.Member, appointment_id: uuid.UUID, amount: int, /, **changes: Any
) -> dict[str, Any]:
    payload = {
        "user_id": str(member.user_id),
        "appointment_id": str(appointment_id),
        "amount_cents": amount,
        "service_date": (today() - timedelta(days=3)).isoformat(),
        "procedure_code": "10101012",
        "diagnosis_code": "J45.0",
    }
    return payload | changes


# -- authorize_coverage / void_authorization ------------------------------------------


async def test_authorize_coverage_reserves_and_void_gives_back(
    plan: Database, owner: Database
) -> None:
    member = await new_member(owner)
    saga_id, appointment_id = uuid.uuid4(), uuid.uuid4()
    service_date = today() + timedelta(days=1)

    result = await run_step(
        plan,
        SERVICE,
        "authorize_coverage",
        saga_id,
        booking(member, 25_000),
        context=booked(appointment_id, service_date),
    )

    authorization = await row(
        owner,
        "SELECT * FROM plan_journey.plan_pre_authorization WHERE id = $1::uuid",
        result["pre_authorization_id"],
    )
    assert dict(result) == {
        "pre_authorization_id": str(authorization["id"]),
        "member_coverage_id": str(member.coverage_id),
        "authorized_cents": 25_000,
    }
    assert authorization["status"] == "approved"
    assert authorization["amount_cents"] == 25_000
    assert authorization["appointment_id"] == appointment_id
    assert authorization["user_id"] == member.user_id
    assert authorization["member_coverage_id"] == member.coverage_id
    assert authorization["saga_id"] == saga_id
    assert authorization["decided_at"] is not None
    expiry = datetime.combine(service_date + timedelta(days=30), datetime.min.time(), SAO_PAULO)
    assert authorization["expires_at"] == expiry
    await assert_books(owner, member, used=0, reserved=25_000)
    audit = await coverage_audit(owner, member)
    assert [(a["operation"], a["saga_id"]) for a in audit] == [
        ("INSERT", None),
        ("UPDATE", saga_id),
    ]
    assert await audited_sagas(owner, "plan_pre_authorization", authorization["id"]) == [
        ("INSERT", saga_id)
    ]

    # void_authorization (its compensation) gives the reservation back, once.
    first = await run_step(plan, SERVICE, "void_authorization", saga_id, booking(member, 25_000))
    again = await run_step(plan, SERVICE, "void_authorization", saga_id, booking(member, 25_000))

    assert first == {
        "undone": True,
        "pre_authorization_id": result["pre_authorization_id"],
        "released_cents": 25_000,
    }
    assert again == {"undone": False}
    voided = await row(
        owner,
        "SELECT status, decision_reason FROM plan_journey.plan_pre_authorization "
        "WHERE id = $1::uuid",
        result["pre_authorization_id"],
    )
    assert voided["status"] == "voided"
    assert str(saga_id) in voided["decision_reason"]
    await assert_books(owner, member, used=0, reserved=0)
    audit = await coverage_audit(owner, member)
    assert [(a["operation"], a["saga_id"]) for a in audit] == [
        ("INSERT", None),
        ("UPDATE", saga_id),
        ("UPDATE", saga_id),
    ]
    assert audit[-1]["new_row"]["reserved_cents"] == 0


async def test_authorize_coverage_refusals_write_nothing(plan: Database, owner: Database) -> None:
    member = await new_member(owner, limit_cents=100_000, used=90_000)
    uncovered = await owner.run_driver(world.create_user)
    sagas = [uuid.uuid4() for _ in range(6)]

    reason = await refusal(
        plan, SERVICE, "authorize_coverage", sagas[0], booking(member, 20_000), context=booked()
    )
    assert (
        reason == "not covered: limit exceeded (requested 20000, remaining 10000 of 100000 cents)"
    )
    stranger = {"user_id": str(uncovered), "amount_cents": 1_000}
    reason = await refusal(
        plan, SERVICE, "authorize_coverage", sagas[1], stranger, context=booked()
    )
    assert reason.startswith("not covered: no active coverage")
    after_period = booked(on=today() + timedelta(days=400))
    reason = await refusal(
        plan,
        SERVICE,
        "authorize_coverage",
        sagas[2],
        booking(member, 1_000),
        context=after_period,
    )
    assert reason.startswith("not covered: no active coverage")
    reason = await refusal(
        plan, SERVICE, "authorize_coverage", sagas[3], booking(member, 0), context=booked()
    )
    assert reason.startswith("invalid payload: amount_cents")
    reason = await refusal(
        plan, SERVICE, "authorize_coverage", sagas[4], booking(member, True), context=booked()
    )
    assert reason.startswith("invalid payload: amount_cents")
    reason = await refusal(
        plan, SERVICE, "authorize_coverage", sagas[5], booking(member, 1_000), context={}
    )
    assert reason.startswith("invalid payload: appointment_id")

    await assert_books(owner, member, used=90_000, reserved=0, opening=90_000)
    written = await rows(
        owner,
        "SELECT table_name FROM plan_journey.plan_audit_log WHERE saga_id = ANY($1::uuid[])",
        sagas,
    )
    assert written == []


async def test_concurrent_authorizations_never_pass_the_limit(
    plan: Database, owner: Database
) -> None:
    member = await new_member(owner, limit_cents=100_000)

    outcomes = await asyncio.gather(
        *(
            run_step(
                plan,
                SERVICE,
                "authorize_coverage",
                uuid.uuid4(),
                booking(member, 30_000),
                context=booked(),
                retry=PATIENT,
            )
            for _ in range(10)
        ),
        return_exceptions=True,
    )

    approved = [o for o in outcomes if isinstance(o, Mapping)]
    refusals = [o for o in outcomes if isinstance(o, StepRefused)]
    # Anything else (a conflict surfacing, retries exhausted) fails here.
    assert len(approved) + len(refusals) == 10, outcomes
    assert len(approved) == 3
    assert all(r.reason.startswith("not covered: limit exceeded") for r in refusals)
    await assert_books(owner, member, used=0, reserved=90_000)
    # The transactions did collide, and the conflicts were re-run rather than answered.
    assert plan.retries.by_sqlstate["40001"] > 0


# -- create_claim / cancel_claim ------------------------------------------------------


async def test_create_claim_counts_the_amount_as_used(plan: Database, owner: Database) -> None:
    member = await new_member(owner)
    saga_id, appointment_id = uuid.uuid4(), uuid.uuid4()
    payload = claim(member, appointment_id, 40_000, diagnosis_code="j45")

    result = await run_step(plan, SERVICE, "create_claim", saga_id, payload)

    made = await row(
        owner, "SELECT * FROM plan_journey.plan_claim WHERE id = $1::uuid", result["claim_id"]
    )
    assert dict(result) == {
        "claim_id": str(made["id"]),
        "member_coverage_id": str(member.coverage_id),
        "approved_cents": 40_000,
        "pre_authorization_id": None,
    }
    assert made["status"] == "approved"
    assert (made["amount_cents"], made["approved_cents"]) == (40_000, 40_000)
    assert made["appointment_id"] == appointment_id
    assert made["user_id"] == member.user_id
    assert made["service_date"] == today() - timedelta(days=3)
    assert (made["procedure_code"], made["diagnosis_code"]) == ("10101012", "J45")
    assert made["pre_authorization_id"] is None
    assert made["decided_at"] is not None
    assert made["saga_id"] == saga_id
    await assert_books(owner, member, used=40_000, reserved=0)
    assert await audited_sagas(owner, "plan_claim", made["id"]) == [("INSERT", saga_id)]
    assert (await coverage_audit(owner, member))[-1]["saga_id"] == saga_id


async def test_create_claim_refusals_write_nothing(plan: Database, owner: Database) -> None:
    member = await new_member(owner, limit_cents=100_000)
    appointment_id = uuid.uuid4()
    tomorrow = (today() + timedelta(days=1)).isoformat()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"procedure_code": "1010101"}, "claim invalid: procedure_code"),
        ({"procedure_code": "1010101x"}, "claim invalid: procedure_code"),
        ({"procedure_code": None}, "claim invalid: procedure_code"),
        ({"diagnosis_code": "J4"}, "claim invalid: diagnosis_code"),
        ({"diagnosis_code": "45J"}, "claim invalid: diagnosis_code"),
        ({"amount_cents": 0}, "claim invalid: amount_cents"),
        ({"amount_cents": -500}, "claim invalid: amount_cents"),
        ({"amount_cents": "500"}, "claim invalid: amount_cents"),
        ({"service_date": tomorrow}, f"claim invalid: service_date {tomorrow} is in the future"),
        ({"service_date": "03/11/2026"}, "invalid payload: service_date"),
        ({"appointment_id": None}, "invalid payload: appointment_id"),
    ]
    for changes, expected in cases:
        reason = await refusal(
            plan,
            SERVICE,
            "create_claim",
            uuid.uuid4(),
            claim(member, appointment_id, 10_000, **changes),
        )
        assert reason.startswith(expected), (changes, reason)

    assert await rows(owner, "SELECT id FROM plan_journey.plan_claim") == []
    await assert_books(owner, member, used=0, reserved=0)

    # Refusals that depend on the books.
    uncovered = await owner.run_driver(world.create_user)
    await run_step(
        plan, SERVICE, "create_claim", uuid.uuid4(), claim(member, appointment_id, 70_000)
    )

    reason = await refusal(
        plan, SERVICE, "create_claim", uuid.uuid4(), claim(member, appointment_id, 10)
    )
    assert reason == "claim invalid: appointment already claimed"
    reason = await refusal(
        plan, SERVICE, "create_claim", uuid.uuid4(), claim(member, uuid.uuid4(), 30_001)
    )
    assert reason.startswith("not covered: limit exceeded (requested 30001, remaining 30000")
    stranger = claim(member, uuid.uuid4(), 10) | {"user_id": str(uncovered)}
    reason = await refusal(plan, SERVICE, "create_claim", uuid.uuid4(), stranger)
    assert reason.startswith("not covered: no active coverage")
    long_ago = claim(member, uuid.uuid4(), 10, service_date="2001-01-01")
    reason = await refusal(plan, SERVICE, "create_claim", uuid.uuid4(), long_ago)
    assert reason == "not covered: no active coverage on 2001-01-01"

    assert len(await rows(owner, "SELECT id FROM plan_journey.plan_claim")) == 1
    await assert_books(owner, member, used=70_000, reserved=0)


async def test_claim_consumes_the_pre_authorization_and_cancel_restores_it(
    plan: Database, owner: Database
) -> None:
    member = await new_member(owner, limit_cents=100_000)
    booking_saga, claim_saga = uuid.uuid4(), uuid.uuid4()
    appointment_id = uuid.uuid4()
    authorized = await run_step(
        plan,
        SERVICE,
        "authorize_coverage",
        booking_saga,
        booking(member, 60_000),
        context=booked(appointment_id),
    )

    # 60 000 reserved + 80 000 would pass the limit: the claim fits only because the
    # reservation it consumes is released first.
    made = await run_step(
        plan, SERVICE, "create_claim", claim_saga, claim(member, appointment_id, 80_000)
    )

    assert made["pre_authorization_id"] == authorized["pre_authorization_id"]
    linked = await row(
        owner,
        "SELECT pre_authorization_id FROM plan_journey.plan_claim WHERE id = $1::uuid",
        made["claim_id"],
    )
    assert str(linked["pre_authorization_id"]) == authorized["pre_authorization_id"]
    await assert_books(owner, member, used=80_000, reserved=0)

    first = await run_step(
        plan, SERVICE, "cancel_claim", claim_saga, claim(member, appointment_id, 80_000)
    )
    again = await run_step(
        plan, SERVICE, "cancel_claim", claim_saga, claim(member, appointment_id, 80_000)
    )

    assert first == {"undone": True, "claim_id": made["claim_id"]}
    assert again == {"undone": False}
    cancelled = await row(
        owner, "SELECT status FROM plan_journey.plan_claim WHERE id = $1::uuid", made["claim_id"]
    )
    assert cancelled["status"] == "cancelled"
    await assert_books(owner, member, used=0, reserved=60_000)
    assert (await coverage_audit(owner, member))[-1]["saga_id"] == claim_saga

    # The appointment may be claimed again, and the restored reservation is consumed again.
    retry_saga = uuid.uuid4()
    remade = await run_step(
        plan, SERVICE, "create_claim", retry_saga, claim(member, appointment_id, 50_000)
    )
    assert remade["pre_authorization_id"] == authorized["pre_authorization_id"]
    await assert_books(owner, member, used=50_000, reserved=0)

    # Voiding a pre-authorization a live claim consumed gives back no reservation.
    voided = await run_step(
        plan, SERVICE, "void_authorization", booking_saga, booking(member, 60_000)
    )
    assert voided["released_cents"] == 0
    await assert_books(owner, member, used=50_000, reserved=0)


# -- apply_wellness_credit / reverse_wellness_credit -----------------------------------


def credit(member: world.Member, goal_id: uuid.UUID, cents: int = 5_000) -> dict[str, Any]:
    return {"user_id": str(member.user_id), "goal_id": str(goal_id), "credit_cents": cents}


async def test_wellness_credit_applies_once_per_goal_and_reverses(
    plan: Database, owner: Database
) -> None:
    member = await new_member(owner, used=10_000)
    uncovered = await owner.run_driver(world.create_user)
    saga_id, goal_id = uuid.uuid4(), uuid.uuid4()

    applied = await run_step(
        plan, SERVICE, "apply_wellness_credit", saga_id, credit(member, goal_id)
    )

    made = await row(
        owner,
        "SELECT * FROM plan_journey.plan_wellness_credit WHERE id = $1::uuid",
        applied["wellness_credit_id"],
    )
    assert dict(applied) == {"wellness_credit_id": str(made["id"]), "credit_cents": 5_000}
    assert made["status"] == "applied"
    assert made["amount_cents"] == 5_000
    assert made["source_goal_id"] == goal_id
    assert made["member_coverage_id"] == member.coverage_id
    assert made["user_id"] == member.user_id
    assert made["reason"] == WELLNESS_CREDIT_REASON
    assert made["saga_id"] == saga_id
    assert made["reversed_at"] is None
    assert await audited_sagas(owner, "plan_wellness_credit", made["id"]) == [("INSERT", saga_id)]
    # Credits leave the limits alone.
    await assert_books(owner, member, used=10_000, reserved=0, opening=10_000)

    reason = await refusal(
        plan, SERVICE, "apply_wellness_credit", uuid.uuid4(), credit(member, goal_id)
    )
    assert reason == "not covered: credit already applied for this goal"
    stranger = credit(member, uuid.uuid4()) | {"user_id": str(uncovered)}
    reason = await refusal(plan, SERVICE, "apply_wellness_credit", uuid.uuid4(), stranger)
    assert reason.startswith("not covered: no active coverage")
    reason = await refusal(
        plan, SERVICE, "apply_wellness_credit", uuid.uuid4(), credit(member, goal_id, 0)
    )
    assert reason.startswith("invalid payload: credit_cents")

    first = await run_step(
        plan, SERVICE, "reverse_wellness_credit", saga_id, credit(member, goal_id)
    )
    again = await run_step(
        plan, SERVICE, "reverse_wellness_credit", saga_id, credit(member, goal_id)
    )

    assert first == {"undone": True, "wellness_credit_id": str(made["id"])}
    assert again == {"undone": False}
    reversed_credit = await row(
        owner,
        "SELECT status, reversed_at FROM plan_journey.plan_wellness_credit WHERE id = $1",
        made["id"],
    )
    assert reversed_credit["status"] == "reversed"
    assert reversed_credit["reversed_at"] is not None
    # Reversed, the goal may be credited again.
    await run_step(plan, SERVICE, "apply_wellness_credit", uuid.uuid4(), credit(member, goal_id))
    credits = await rows(
        owner,
        "SELECT status FROM plan_journey.plan_wellness_credit WHERE source_goal_id = $1 "
        "ORDER BY created_at",
        goal_id,
    )
    assert [c["status"] for c in credits] == ["reversed", "applied"]
