"""The saga benchmark's three journey services, each run as a process of its own.

``BENCH_SAGA`` books an appointment in miniature, one small real write per step in the
step's journey schema:

1. care ``reserve_slot``: inserts a held ``care_journey.care_appointment`` for the slot in
   the payload (the no-double-booking exclusion constraint checks it); ``release_slot``
   sets it ``released``.
2. plan ``authorize_coverage``: inserts an approved ``plan_journey.plan_pre_authorization``
   for the appointment (the audit trigger logs it); ``void_authorization`` sets it
   ``voided``.
3. gamification ``award_points`` (the last step, no compensation): appends 50 points to
   the patient's ``gamification.gamification_points_ledger`` (a trigger adds them to the
   profile's XP). It refuses when the payload says ``"fail": true``, so the saga
   compensates steps 2 and 1.

The rows every saga refers to (users, a provider per 64 slots, one slot per saga, plan
coverage, gamification profiles) are made once by :func:`prepare`, before the run.

    python -m benchmarks.saga_services --journey care   # until SIGTERM; settings from the env
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg

from saga.cli.run import until_signalled
from saga.definition import NoCompensation, SagaDefinition, Step
from saga.errors import StepRefused
from saga.logging import configure_logging
from saga.participant import Participant, StepContext
from saga.settings import Settings, load_settings, to_plain_url
from saga.store import Database

JOURNEYS = ("care", "plan", "gamification")
SCHEMAS = {"care": "care_journey", "plan": "plan_journey", "gamification": "gamification"}
STEP_TIMEOUT = 10.0
POINTS = 50
AMOUNT_CENTS = 25_000
USERS = 1024
SLOTS_PER_PROVIDER = 64

BENCH_SAGA = SagaDefinition(
    "bench_three_step",
    1,
    [
        Step(
            name="reserve",
            journey="care",
            action="reserve_slot",
            compensation="release_slot",
            timeout=STEP_TIMEOUT,
        ),
        Step(
            name="authorize",
            journey="plan",
            action="authorize_coverage",
            compensation="void_authorization",
            timeout=STEP_TIMEOUT,
        ),
        Step(
            name="award",
            journey="gamification",
            action="award_points",
            no_compensation=NoCompensation.LAST,
            timeout=STEP_TIMEOUT,
        ),
    ],
)


# -- care --------------------------------------------------------------------------------


async def reserve_slot(step: StepContext) -> Mapping[str, Any]:
    appointment = await step.connection.fetchval(
        """
        INSERT INTO care_journey.care_appointment
            (slot_id, provider_id, patient_id, starts_at, ends_at, status, hold_expires_at,
             reason, saga_id)
        SELECT s.id, s.provider_id, $2, s.starts_at, s.ends_at, 'held',
               now() + interval '15 minutes', 'benchmark', $3
        FROM care_journey.care_slot s
        WHERE s.id = $1 AND s.status = 'open' AND s.deleted_at IS NULL
        RETURNING id
        """,
        uuid.UUID(step.payload["slot_id"]),
        uuid.UUID(step.payload["patient_id"]),
        step.saga_id,
    )
    if appointment is None:
        raise StepRefused("the slot is not open")
    return {"appointment_id": str(appointment)}


async def release_slot(step: StepContext) -> Mapping[str, Any]:
    released = await step.connection.execute(
        "UPDATE care_journey.care_appointment SET status = 'released' "
        "WHERE saga_id = $1 AND status = 'held'",
        step.saga_id,
    )
    return {"released": released}


# -- plan --------------------------------------------------------------------------------


async def authorize_coverage(step: StepContext) -> Mapping[str, Any]:
    authorization = await step.connection.fetchval(
        """
        INSERT INTO plan_journey.plan_pre_authorization
            (member_coverage_id, user_id, appointment_id, amount_cents, status, decided_at,
             expires_at, saga_id)
        VALUES ($1, $2, $3, $4, 'approved', now(), now() + interval '30 days', $5)
        RETURNING id
        """,
        uuid.UUID(step.payload["coverage_id"]),
        uuid.UUID(step.payload["patient_id"]),
        uuid.UUID(step.context["appointment_id"]),
        int(step.payload.get("amount_cents", AMOUNT_CENTS)),
        step.saga_id,
    )
    return {"pre_authorization_id": str(authorization)}


async def void_authorization(step: StepContext) -> Mapping[str, Any]:
    voided = await step.connection.execute(
        "UPDATE plan_journey.plan_pre_authorization SET status = 'voided' "
        "WHERE saga_id = $1 AND status = 'approved'",
        step.saga_id,
    )
    return {"voided": voided}


# -- gamification ------------------------------------------------------------------------


async def award_points(step: StepContext) -> Mapping[str, Any]:
    if step.payload.get("fail"):
        raise StepRefused("the benchmark asked this saga to fail at its last step")
    entry = await step.connection.fetchval(
        """
        INSERT INTO gamification.gamification_points_ledger
            (profile_id, points, reason, source_journey, source_ref, saga_id)
        VALUES ($1, $2, 'appointment booked', 'care', $3, $4)
        RETURNING id
        """,
        uuid.UUID(step.payload["profile_id"]),
        POINTS,
        step.context["appointment_id"],
        step.saga_id,
    )
    return {"ledger_entry_id": str(entry)}


HANDLERS: dict[str, dict[str, Any]] = {
    "care": {"reserve_slot": reserve_slot, "release_slot": release_slot},
    "plan": {"authorize_coverage": authorize_coverage, "void_authorization": void_authorization},
    "gamification": {"award_points": award_points},
}


def build_participant(
    journey: str,
    settings: Settings,
    database: Database,
    *,
    max_concurrency: int = 64,
) -> Participant:
    participant = Participant(
        journey,
        schema=SCHEMAS[journey],
        settings=settings,
        database=database,
        max_concurrency=max_concurrency,
    )
    for action, handler in HANDLERS[journey].items():
        participant.register(action, handler)
    return participant


# -- reference rows, made once before a run ------------------------------------------------


async def prepare(url: str, sagas: int, *, users: int = USERS) -> list[dict[str, Any]]:
    """Create the reference rows ``sagas`` sagas need (a slot each, a patient with plan
    coverage and a gamification profile, shared round-robin) and return one payload per
    saga, without ``fail``."""
    providers = max(1, -(-sagas // SLOTS_PER_PROVIDER))
    conn = await asyncpg.connect(to_plain_url(url))
    try:
        async with conn.transaction():
            user_ids = [
                row["id"]
                for row in await conn.fetch(
                    """
                    INSERT INTO shared.shared_user (email, full_name)
                    SELECT 'bench-' || g || '@example.com', 'Paciente Benchmark ' || g
                    FROM generate_series(1, $1) g
                    RETURNING id
                    """,
                    users,
                )
            ]
            specialty = await conn.fetchval(
                "INSERT INTO care_journey.care_specialty (code, name) "
                "VALUES ('bench', 'Benchmark') RETURNING id"
            )
            provider_ids = [
                row["id"]
                for row in await conn.fetch(
                    """
                    INSERT INTO care_journey.care_provider
                        (specialty_id, full_name, crm, city, state)
                    SELECT $1, 'Dra. Benchmark ' || g, 'CRM-SP-' || (100000 + g), 'São Paulo',
                           'SP'
                    FROM generate_series(1, $2) g
                    RETURNING id
                    """,
                    specialty,
                    providers,
                )
            ]
            # Slot g: provider g % providers, every half hour from tomorrow on.
            slot_ids = [
                row["id"]
                for row in await conn.fetch(
                    """
                    INSERT INTO care_journey.care_slot (provider_id, starts_at, ends_at)
                    SELECT ($1::uuid[])[1 + g % $2],
                           date_trunc('day', now()) + interval '1 day'
                               + (g / $2) * interval '30 minutes',
                           date_trunc('day', now()) + interval '1 day'
                               + (g / $2 + 1) * interval '30 minutes'
                    FROM generate_series(0, $3 - 1) g
                    ORDER BY g
                    RETURNING id
                    """,
                    provider_ids,
                    providers,
                    sagas,
                )
            ]
            plan = await conn.fetchval(
                "INSERT INTO plan_journey.plan_insurance_plan "
                "(code, name, plan_type, annual_limit_cents) "
                "VALUES ('bench', 'Plano Benchmark', 'standard', 1000000000) RETURNING id"
            )
            coverage = {
                row["user_id"]: row["id"]
                for row in await conn.fetch(
                    """
                    INSERT INTO plan_journey.plan_member_coverage
                        (user_id, insurance_plan_id, policy_number, period_start, period_end,
                         annual_limit_cents)
                    SELECT u, $2, 'BENCH-' || ordinality, current_date - 1, current_date + 365,
                           1000000000
                    FROM unnest($1::uuid[]) WITH ORDINALITY AS u
                    RETURNING id, user_id
                    """,
                    user_ids,
                    plan,
                )
            }
            profile = {
                row["user_id"]: row["id"]
                for row in await conn.fetch(
                    """
                    INSERT INTO gamification.gamification_profile (user_id, display_name)
                    SELECT u, 'bench ' || ordinality
                    FROM unnest($1::uuid[]) WITH ORDINALITY AS u
                    RETURNING id, user_id
                    """,
                    user_ids,
                )
            }
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    payloads = []
    for n, slot in enumerate(slot_ids):
        user = user_ids[n % len(user_ids)]
        payloads.append(
            {
                "slot_id": str(slot),
                "patient_id": str(user),
                "coverage_id": str(coverage[user]),
                "profile_id": str(profile[user]),
                "amount_cents": AMOUNT_CENTS,
            }
        )
    return payloads


EFFECTS = """
SELECT
    (SELECT count(*) FROM shared.saga_instance WHERE status = 'completed') AS completed,
    (SELECT count(*) FROM shared.saga_instance WHERE status = 'compensated') AS compensated,
    (SELECT count(*) FROM care_journey.care_appointment) AS appointments,
    (SELECT count(*) FROM care_journey.care_appointment WHERE status = 'held') AS held,
    (SELECT count(*) FROM care_journey.care_appointment WHERE status = 'released') AS released,
    (SELECT count(*) FROM plan_journey.plan_pre_authorization) AS authorizations,
    (SELECT count(*) FROM plan_journey.plan_pre_authorization WHERE status = 'approved')
        AS approved,
    (SELECT count(*) FROM plan_journey.plan_pre_authorization WHERE status = 'voided')
        AS voided,
    (SELECT count(*) FROM gamification.gamification_points_ledger) AS ledger_entries,
    (SELECT coalesce(sum(points), 0) FROM gamification.gamification_points_ledger) AS points,
    (SELECT coalesce(sum(xp), 0) FROM gamification.gamification_profile) AS xp
"""


async def check_effects(conn: asyncpg.Connection) -> list[str]:
    """Every finished saga's effects, exactly once: a completed saga left a held
    appointment, an approved authorization and one ledger entry; a compensated one a
    released appointment, a voided authorization and no entry; XP is the ledger's sum.
    Returns what does not add up (nothing, when all is well)."""
    row = await conn.fetchrow(EFFECTS)
    assert row is not None
    done, undone = row["completed"], row["compensated"]
    expected = {
        "appointments": done + undone,
        "held": done,
        "released": undone,
        "authorizations": done + undone,
        "approved": done,
        "voided": undone,
        "ledger_entries": done,
        "points": POINTS * done,
        "xp": POINTS * done,
    }
    return [
        f"effects: {name} is {row[name]}, expected {value} "
        f"for {done} completed and {undone} compensated sagas"
        for name, value in expected.items()
        if row[name] != value
    ]


# -- the process --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one of the saga benchmark's journeys.")
    parser.add_argument("--journey", choices=JOURNEYS, required=True)
    parser.add_argument(
        "--concurrency", type=int, default=64, help="commands handled at once (default 64)"
    )
    args = parser.parse_args(argv)
    settings = load_settings()
    configure_logging(settings)

    async def serve() -> None:
        database = Database.from_settings(settings, application_name=f"bench-{args.journey}")
        participant = build_participant(
            args.journey, settings, database, max_concurrency=args.concurrency
        )
        try:
            await until_signalled(participant.run(), participant.stop)
        finally:
            await database.dispose()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
