"""The journeys' own worker jobs against a real PostgreSQL and broker: expired holds of
finished or vanished sagas released (journeys/care/maintenance.py), pre-authorizations
nobody can use voided (journeys/plan/maintenance.py), the leaderboard refreshed
(journeys/gamification/maintenance.py).

Each orphan is made on purpose: the journey rows by the real step handlers, run as the
journey's role, and the saga rows inserted in the status the case needs.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from journeys import world
from journeys.care.maintenance import RELEASE_EXPIRED_HOLDS
from journeys.care.sagas import BOOK_APPOINTMENT
from journeys.care.service import SERVICE as CARE
from journeys.gamification.maintenance import REFRESH_LEADERBOARD
from journeys.gamification.service import SERVICE as GAMIFICATION
from journeys.invariants import check_invariants
from journeys.plan.maintenance import VOID_ORPHAN_AUTHORIZATIONS
from journeys.plan.service import SERVICE as PLAN
from journeys.shared.payload import operator_today
from saga import Row
from saga.participant.journey import discover_journeys
from saga.store import Database
from saga.store.definitions import register
from saga.store.driver import DriverConnection
from saga.worker.job import Job, lock_key
from saga.worker.scheduler import Worker
from tests.integration.conftest import SagaEnvironment
from tests.integration.journey_steps import role_database, run_step

pytestmark = pytest.mark.integration

RUNNING, COMPENSATING, PARKED = "running", "compensating", "parked"
COMPLETED, COMPENSATED = "completed", "compensated"


# -- helpers ---------------------------------------------------------------------------


async def fetch(db: Database, query: str, *args: Any) -> list[Row]:
    return await db.run_driver(lambda conn: conn.fetch(query, *args))


async def execute(db: Database, query: str, *args: Any) -> None:
    await db.run_driver(lambda conn: conn.execute(query, *args))


async def new_saga(owner: Database, status: str) -> uuid.UUID:
    """A book_appointment saga row in ``status`` (the definition stored first)."""

    async def unit(conn: DriverConnection) -> uuid.UUID:
        stored = await register(conn, BOOK_APPOINTMENT)
        saga_id: uuid.UUID = await conn.fetchval(
            """
            INSERT INTO shared.saga_instance (
                saga_definition_id, definition_name, definition_version, status, payload,
                error, finished_at
            ) VALUES ($1, $2, $3, $4, $5::jsonb, $6,
                      CASE WHEN $4 IN ('completed', 'compensated') THEN now() END)
            RETURNING id
            """,
            stored.id,
            BOOK_APPOINTMENT.name,
            BOOK_APPOINTMENT.version,
            status,
            json.dumps({"points": 10}),
            "parked by the test" if status == PARKED else None,
        )
        return saga_id

    return await owner.run_driver(unit)


async def drop_saga(owner: Database, saga_id: uuid.UUID) -> None:
    await execute(owner, "DELETE FROM shared.saga_instance WHERE id = $1", saga_id)


async def archive_saga(owner: Database, saga_id: uuid.UUID) -> None:
    """Move a finished saga to shared.saga_instance_archive, as saga retention does."""
    await execute(
        owner,
        """
        WITH gone AS (DELETE FROM shared.saga_instance WHERE id = $1 RETURNING *)
        INSERT INTO shared.saga_instance_archive (
            id, saga_definition_id, definition_name, definition_version, status,
            current_step, step_attempt, payload, context, version, started_at, finished_at
        )
        SELECT id, saga_definition_id, definition_name, definition_version, status,
               current_step, step_attempt, payload, context, version, started_at, finished_at
        FROM gone
        """,
        saga_id,
    )


@asynccontextmanager
async def worker(
    env: SagaEnvironment, job: Job, *, batch: int | None = None, max_batches: int | None = None
) -> AsyncIterator[Worker]:
    update: dict[str, Any] = {}
    if batch is not None:
        update["worker_schedule"] = f"{job.name}={job.interval:g}/{batch}"
    if max_batches is not None:
        update["worker_max_batches_per_run"] = max_batches
    running = Worker(
        settings=env.settings.model_copy(update=update),
        database=env.database,
        journeys=list(discover_journeys().values()),
        jobs=[job],
        bootstrap_servers=env.bootstrap,
    )
    try:
        yield running
    finally:
        await running.close()


async def invariant_violations(owner: Database) -> list[str]:
    return (await check_invariants(owner)).violations


def mentioning(violations: Sequence[str], *ids: uuid.UUID) -> list[str]:
    return [v for v in violations if any(str(i) in v for i in ids)]


# -- care: release_expired_holds --------------------------------------------------------


@pytest.fixture
async def care(saga_env: SagaEnvironment) -> AsyncIterator[Database]:
    async with role_database(saga_env, CARE) as db:
        yield db


async def new_slots(owner: Database, count: int) -> list[world.Slot]:
    async def unit(conn: DriverConnection) -> list[world.Slot]:
        return await world.create_slots(conn, await world.create_provider(conn), count)

    return await owner.run_driver(unit)


async def hold(
    care: Database, owner: Database, slot: world.Slot, saga_id: uuid.UUID, *, expired: bool
) -> uuid.UUID:
    """reserve_slot's hold of ``slot`` for ``saga_id``, its expiry moved into the past."""
    user = await owner.run_driver(world.create_user)
    result = await run_step(
        care,
        CARE,
        "reserve_slot",
        saga_id,
        {"slot_id": str(slot.slot_id), "user_id": str(user), "reason": None},
    )
    appointment_id = uuid.UUID(result["appointment_id"])
    if expired:
        await execute(
            owner,
            "UPDATE care_journey.care_appointment "
            "SET hold_expires_at = now() - interval '1 minute' WHERE id = $1",
            appointment_id,
        )
    return appointment_id


async def holds(owner: Database, appointment_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """Each appointment's status, hold expiry, cancelled reason and its slot's status."""
    rows = await fetch(
        owner,
        """
        SELECT a.id, a.status, a.hold_expires_at, a.cancelled_reason, s.status AS slot_status
        FROM care_journey.care_appointment a JOIN care_journey.care_slot s ON s.id = a.slot_id
        WHERE a.id = ANY($1::uuid[])
        """,
        list(appointment_ids),
    )
    return {row["id"]: row for row in rows}


async def test_expired_holds_of_finished_or_vanished_sagas_are_released(
    saga_env: SagaEnvironment, care: Database
) -> None:
    owner = saga_env.database
    slots = iter(await new_slots(owner, 9))

    async def case(status: str | None, *, expired: bool = True) -> tuple[uuid.UUID, uuid.UUID]:
        saga_id = uuid.uuid4() if status is None else await new_saga(owner, status)
        return saga_id, await hold(care, owner, next(slots), saga_id, expired=expired)

    compensated = await case(COMPENSATED)
    completed = await case(COMPLETED)
    never_existed = await case(None)
    gone = await case(RUNNING)
    await drop_saga(owner, gone[0])
    no_saga = await case(COMPENSATED)
    await execute(
        owner, "UPDATE care_journey.care_appointment SET saga_id = NULL WHERE id = $1", no_saga[1]
    )
    running = await case(RUNNING)
    compensating = await case(COMPENSATING)
    parked = await case(PARKED)
    unexpired = await case(COMPENSATED, expired=False)
    orphans = [compensated, completed, never_existed, gone, no_saga]
    kept = [running, compensating, parked, unexpired]

    # The invariant check already reports the holds of finished sagas.
    before = await invariant_violations(owner)
    for saga_id, appointment_id in (compensated, completed, unexpired):
        assert any(v.startswith("[hold]") and str(appointment_id) in v for v in before), (
            f"no [hold] violation for saga {saga_id}: {before}"
        )

    async with worker(saga_env, RELEASE_EXPIRED_HOLDS) as w:
        report = await w.run_job(RELEASE_EXPIRED_HOLDS.name)
        assert report.claimed == len(orphans)
        assert report.counts == {"released": len(orphans)}
        # Nothing is left for a second run: released holds are not held any more.
        again = await w.run_job(RELEASE_EXPIRED_HOLDS.name)
        assert (again.claimed, again.counts["released"]) == (0, 0)

    found = await holds(owner, [appointment for _, appointment in orphans + kept])
    for saga_id, appointment_id in orphans:
        row = found[appointment_id]
        assert row["status"] == "released", (saga_id, dict(row))
        assert row["hold_expires_at"] is None
        assert row["slot_status"] == "open"
        assert row["cancelled_reason"].startswith("reserva expirada")
    assert str(compensated[0]) in found[compensated[1]]["cancelled_reason"]
    assert "não existe mais" in found[gone[1]]["cancelled_reason"]
    assert "não existe mais" in found[never_existed[1]]["cancelled_reason"]
    assert "nenhuma saga" in found[no_saga[1]]["cancelled_reason"]
    for saga_id, appointment_id in kept:
        row = found[appointment_id]
        assert (row["status"], row["slot_status"]) == ("held", "held"), (saga_id, dict(row))
        assert row["hold_expires_at"] is not None
        assert row["cancelled_reason"] is None

    # No hold of the released sagas is reported any more, and the compensated saga leaves
    # nothing behind; the unexpired hold of a finished saga stays reported until it expires.
    after = await invariant_violations(owner)
    held = [v for v in after if v.startswith("[hold]")]
    assert len(held) == 1, held
    assert str(unexpired[1]) in held[0]
    assert not mentioning(after, compensated[0], compensated[1])


async def orphan_holds(saga_env: SagaEnvironment, care: Database, count: int) -> list[uuid.UUID]:
    owner = saga_env.database
    slots = await new_slots(owner, count)
    sagas = [await new_saga(owner, COMPENSATED) for _ in range(count)]
    return list(
        await asyncio.gather(
            *(
                hold(care, owner, slot, saga_id, expired=True)
                for slot, saga_id in zip(slots, sagas, strict=True)
            )
        )
    )


async def test_two_workers_release_each_hold_once(
    saga_env: SagaEnvironment, care: Database
) -> None:
    appointments = await orphan_holds(saga_env, care, 24)
    async with (
        worker(saga_env, RELEASE_EXPIRED_HOLDS, batch=4) as first,
        worker(saga_env, RELEASE_EXPIRED_HOLDS, batch=4) as second,
    ):
        reports = await asyncio.gather(
            first.run_job(RELEASE_EXPIRED_HOLDS.name), second.run_job(RELEASE_EXPIRED_HOLDS.name)
        )
    # SKIP LOCKED gave each hold to one worker: the claims add up to the holds exactly.
    assert sum(r.claimed for r in reports) == len(appointments)
    assert sum(r.counts["released"] for r in reports) == len(appointments)
    found = await holds(saga_env.database, appointments)
    assert {(row["status"], row["slot_status"]) for row in found.values()} == {("released", "open")}
    assert len(found) == len(appointments)


async def test_a_batch_takes_at_most_its_size(saga_env: SagaEnvironment, care: Database) -> None:
    appointments = await orphan_holds(saga_env, care, 5)
    expiries = await holds(saga_env.database, appointments)
    oldest = sorted(appointments, key=lambda a: (expiries[a]["hold_expires_at"], a))[:3]
    async with worker(saga_env, RELEASE_EXPIRED_HOLDS, batch=3, max_batches=1) as w:
        report = await w.run_job(RELEASE_EXPIRED_HOLDS.name)
        assert (report.batches, report.claimed, report.counts["released"]) == (1, 3, 3)
        found = await holds(saga_env.database, appointments)
        # The batch took the three holds that expired first, and only those.
        assert {a for a, row in found.items() if row["status"] == "released"} == set(oldest)
        assert [row["status"] for row in found.values()].count("held") == 2
        rest = await w.run_job(RELEASE_EXPIRED_HOLDS.name)
        assert (rest.batches, rest.claimed, rest.counts["released"]) == (1, 2, 2)
    found = await holds(saga_env.database, appointments)
    assert {row["status"] for row in found.values()} == {"released"}


# -- plan: void_orphan_authorizations -----------------------------------------------------


@pytest.fixture
async def plan(saga_env: SagaEnvironment) -> AsyncIterator[Database]:
    async with role_database(saga_env, PLAN) as db:
        yield db


async def authorize(
    plan: Database,
    owner: Database,
    member: world.Member,
    saga_id: uuid.UUID,
    amount: int,
    *,
    expired: bool = False,
) -> tuple[uuid.UUID, uuid.UUID]:
    """authorize_coverage's pre-authorization of a new appointment for ``saga_id``, its
    expiry moved into the past when ``expired``; returns (pre-authorization, appointment)."""
    appointment_id = uuid.uuid4()
    result = await run_step(
        plan,
        PLAN,
        "authorize_coverage",
        saga_id,
        {"user_id": str(member.user_id), "amount_cents": amount},
        context={
            "appointment_id": str(appointment_id),
            "service_date": operator_today().isoformat(),
        },
    )
    authorization_id = uuid.UUID(result["pre_authorization_id"])
    if expired:
        await execute(
            owner,
            "UPDATE plan_journey.plan_pre_authorization "
            "SET expires_at = now() - interval '1 day' WHERE id = $1",
            authorization_id,
        )
    return authorization_id, appointment_id


async def authorizations(owner: Database, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Any]:
    rows = await fetch(
        owner,
        "SELECT id, status, decision_reason, amount_cents "
        "FROM plan_journey.plan_pre_authorization WHERE id = ANY($1::uuid[])",
        list(ids),
    )
    return {row["id"]: row for row in rows}


async def reserved(owner: Database, member: world.Member) -> tuple[int, int]:
    """The coverage's reserved_cents and what its unclaimed approved pre-authorizations
    promise (the invariant check's books)."""
    rows = await fetch(
        owner,
        """
        SELECT m.reserved_cents,
               (SELECT coalesce(sum(p.amount_cents), 0)
                FROM plan_journey.plan_pre_authorization p
                WHERE p.member_coverage_id = m.id AND p.status = 'approved'
                  AND p.deleted_at IS NULL AND NOT EXISTS (
                      SELECT FROM plan_journey.plan_claim c
                      WHERE c.pre_authorization_id = p.id
                        AND c.status NOT IN ('rejected', 'cancelled') AND c.deleted_at IS NULL
                  ))::bigint AS promised
        FROM plan_journey.plan_member_coverage m WHERE m.id = $1
        """,
        member.coverage_id,
    )
    return rows[0]["reserved_cents"], rows[0]["promised"]


async def test_orphan_pre_authorizations_are_voided_and_their_reservation_given_back(
    saga_env: SagaEnvironment, plan: Database
) -> None:
    owner = saga_env.database
    member = await owner.run_driver(world.create_member)

    async def case(status: str | None, amount: int, **options: Any) -> tuple[uuid.UUID, ...]:
        saga_id = uuid.uuid4() if status is None else await new_saga(owner, status)
        return (saga_id, *await authorize(plan, owner, member, saga_id, amount, **options))

    # Distinct amounts, so that the books show which reservations were given back.
    compensated = await case(COMPENSATED, 1_100)
    archived_compensated = await case(COMPENSATED, 500)
    await archive_saga(owner, archived_compensated[0])
    completed_expired = await case(COMPLETED, 2_200, expired=True)
    gone_expired = await case(RUNNING, 4_400, expired=True)
    await drop_saga(owner, gone_expired[0])
    never_existed_expired = await case(None, 8_800, expired=True)
    completed_live = await case(COMPLETED, 16_000)
    gone_live = await case(None, 32_000)
    running_expired = await case(RUNNING, 64_000, expired=True)
    compensating_expired = await case(COMPENSATING, 128_000, expired=True)
    parked_expired = await case(PARKED, 256_000, expired=True)
    # Expired, its saga completed, but a claim consumed it: it is in use, not an orphan.
    claimed_expired = await case(COMPLETED, 3_000, expired=True)
    await run_step(
        plan,
        PLAN,
        "create_claim",
        uuid.uuid4(),
        {
            "user_id": str(member.user_id),
            "appointment_id": str(claimed_expired[2]),
            "amount_cents": 3_000,
            "service_date": operator_today().isoformat(),
            "procedure_code": "10101012",
            "diagnosis_code": None,
        },
    )
    voided = [
        compensated,
        archived_compensated,
        completed_expired,
        gone_expired,
        never_existed_expired,
    ]
    kept = [
        completed_live,
        gone_live,
        running_expired,
        compensating_expired,
        parked_expired,
        claimed_expired,
    ]
    # The claimed one reserves nothing any more: its claim turned it into use.
    kept_reserving = 16_000 + 32_000 + 64_000 + 128_000 + 256_000
    total = kept_reserving + 1_100 + 500 + 2_200 + 4_400 + 8_800
    assert await reserved(owner, member) == (total, total)

    before = await invariant_violations(owner)
    assert mentioning(before, compensated[0]), "the compensated saga's standing authorization"

    async with worker(saga_env, VOID_ORPHAN_AUTHORIZATIONS) as w:
        report = await w.run_job(VOID_ORPHAN_AUTHORIZATIONS.name)
        assert (report.claimed, report.counts["voided"]) == (len(voided), len(voided))
        again = await w.run_job(VOID_ORPHAN_AUTHORIZATIONS.name)
        assert (again.claimed, again.counts["voided"]) == (0, 0)

    # Exactly the orphans' reservations were given back, and the books still balance.
    assert await reserved(owner, member) == (kept_reserving, kept_reserving)
    found = await authorizations(owner, [case[1] for case in voided + kept])
    for saga_id, authorization_id, _ in voided:
        assert found[authorization_id]["status"] == "voided", saga_id
        assert found[authorization_id]["decision_reason"].startswith("anulada")
    assert "compensada" in found[compensated[1]]["decision_reason"]
    assert "compensada" in found[archived_compensated[1]]["decision_reason"]
    assert "expirou" in found[completed_expired[1]]["decision_reason"]
    for saga_id, authorization_id, _ in kept:
        assert found[authorization_id]["status"] == "approved", saga_id

    # The audit trail names the saga of each coverage change the worker made, as the
    # handlers' stamps do; the pre-authorization rows carry it themselves.
    audit = await fetch(
        owner,
        """
        SELECT saga_id,
               (old_row ->> 'reserved_cents')::bigint - (new_row ->> 'reserved_cents')::bigint
                   AS given_back
        FROM plan_journey.plan_audit_log
        WHERE table_name = 'plan_member_coverage' AND row_id = $1 AND operation = 'UPDATE'
          AND changed_by = session_user  -- the worker's (the owner's), not the handlers'
          AND (new_row ->> 'reserved_cents')::bigint < (old_row ->> 'reserved_cents')::bigint
        """,
        member.coverage_id,
    )
    assert {(row["saga_id"], row["given_back"]) for row in audit} == {
        (saga_id, found[authorization_id]["amount_cents"])
        for saga_id, authorization_id, _ in voided
    }
    voided_rows = await fetch(
        owner,
        "SELECT row_id, saga_id FROM plan_journey.plan_audit_log "
        "WHERE table_name = 'plan_pre_authorization' AND new_row ->> 'status' = 'voided'",
    )
    assert {(row["row_id"], row["saga_id"]) for row in voided_rows} == {
        (authorization_id, saga_id) for saga_id, authorization_id, _ in voided
    }

    after = await invariant_violations(owner)
    assert not mentioning(after, compensated[0])
    assert not [v for v in after if v.startswith("[coverage]")]


async def test_two_workers_void_each_pre_authorization_once(
    saga_env: SagaEnvironment, plan: Database
) -> None:
    owner = saga_env.database
    members = [await owner.run_driver(world.create_member) for _ in range(12)]
    sagas = [await new_saga(owner, COMPENSATED) for _ in members]
    await asyncio.gather(
        *(
            authorize(plan, owner, member, saga_id, 5_000)
            for member, saga_id in zip(members, sagas, strict=True)
        )
    )
    async with (
        worker(saga_env, VOID_ORPHAN_AUTHORIZATIONS, batch=3) as first,
        worker(saga_env, VOID_ORPHAN_AUTHORIZATIONS, batch=3) as second,
    ):
        reports = await asyncio.gather(
            first.run_job(VOID_ORPHAN_AUTHORIZATIONS.name),
            second.run_job(VOID_ORPHAN_AUTHORIZATIONS.name),
        )
    # One pre-authorization per coverage, so neither worker skips the other's coverage:
    # the claims and voids add up exactly, and a second void would show in the books.
    assert sum(r.claimed for r in reports) == len(members)
    assert sum(r.counts["voided"] for r in reports) == len(members)
    for member in members:
        assert await reserved(owner, member) == (0, 0)
    statuses = await fetch(
        owner,
        "SELECT status, count(*) AS n FROM plan_journey.plan_pre_authorization GROUP BY status",
    )
    assert {(row["status"], row["n"]) for row in statuses} == {("voided", len(members))}


# -- gamification: refresh_leaderboard -----------------------------------------------------


async def leaderboard_xp(owner: Database, user_id: uuid.UUID) -> int | None:
    rows = await fetch(
        owner, "SELECT xp FROM gamification.gamification_leaderboard WHERE user_id = $1", user_id
    )
    return rows[0]["xp"] if rows else None


async def test_refresh_leaderboard_shows_new_points_and_skips_when_locked(
    saga_env: SagaEnvironment,
) -> None:
    owner = saga_env.database
    user = await owner.run_driver(world.create_user)

    async with role_database(saga_env, GAMIFICATION) as gamification:

        async def award(points: int) -> None:
            payload = {
                "user_id": str(user),
                "points": points,
                "source_journey": "care",
                "award_reason": "appointment_booked",
            }
            await run_step(gamification, GAMIFICATION, "award_points", uuid.uuid4(), payload)

        await award(40)
        assert await leaderboard_xp(owner, user) is None  # not refreshed yet

        async with worker(saga_env, REFRESH_LEADERBOARD) as w:
            report = await w.run_job(REFRESH_LEADERBOARD.name)
            assert (report.batches, report.claimed, report.counts) == (1, 1, {"refreshed": 1})
            assert await leaderboard_xp(owner, user) == 40

            # Another worker holds the job's lock: this one skips its turn.
            await award(25)
            locked, release = asyncio.Event(), asyncio.Event()

            async def hold_lock(conn: DriverConnection) -> None:
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1)", lock_key(REFRESH_LEADERBOARD.name)
                )
                locked.set()
                await release.wait()

            holder = asyncio.create_task(owner.run_driver(hold_lock))
            await locked.wait()
            try:
                skipped = await w.run_job(REFRESH_LEADERBOARD.name)
            finally:
                release.set()
                await holder
            assert (skipped.claimed, sum(skipped.counts.values())) == (0, 0)
            assert await leaderboard_xp(owner, user) == 40

            refreshed = await w.run_job(REFRESH_LEADERBOARD.name)
            assert refreshed.counts == {"refreshed": 1}
            assert await leaderboard_xp(owner, user) == 65
