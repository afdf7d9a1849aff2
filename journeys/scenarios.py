"""The three cross-journey sagas shown end to end, each once succeeding and once failing at
a later step: the examples run one each, the demo runs all three. The booking runs as
version 2 (the slot and the coverage in one parallel group); the claim that succeeds is
above the review threshold, so it waits for a plan auditor's ``claim_reviewed`` signal,
which the scenario sends by running ``saga signal`` as a process of its own, as the
auditor would; the health goal starts its wellness credit as a child saga
(``grant_wellness_credit``), whose timeline follows its parent's.

Each scenario builds its own scene (a member, a provider, slots, a goal) with
:mod:`journeys.world`, starts the sagas through the services that own them, waits for them
to end, and prints each saga's timeline and the rows it touched. A saga that does not end
the way the scenario expects raises :class:`ScenarioFailed`.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from journeys import world
from journeys.care.sagas import book_appointment
from journeys.health.sagas import complete_health_goal
from journeys.plan.sagas import CLAIM_REVIEWED, submit_claim
from saga import Connection, RunningServices, SagaStatus, Say, Scenario, load_timeline

CONSULTATION = "10101012"  # TUSS: consulta em consultório
AUDITOR = "auditor.marina"
# Seconds a `saga` command of a scenario may take: it starts a Python process, connects
# and commits one transaction.
COMMAND_TIMEOUT = 60.0


class ScenarioFailed(AssertionError):
    """A saga of a scenario ended otherwise than the scenario expects."""


async def _expect(
    services: RunningServices, saga_id: uuid.UUID, expected: SagaStatus, say: Say
) -> None:
    summary = await services.coordinator.wait(saga_id, timeout=60)
    timeline = await services.database.run_driver(
        lambda conn: load_timeline(conn, saga_id), transaction=False
    )
    for line in timeline.render():
        say(line)
    if summary.status is not expected:
        raise ScenarioFailed(
            f"saga {saga_id} ended {summary.status.value}, expected {expected.value}"
            f" ({summary.error or 'no reason given'})"
        )


async def _expect_child(
    services: RunningServices, parent_id: uuid.UUID, expected: SagaStatus, say: Say
) -> None:
    """Print the timeline of the parent's one child saga, as ``saga show`` lists it."""

    async def children(conn: Connection) -> list[uuid.UUID]:
        rows = await conn.fetch(
            "SELECT id FROM shared.saga_instance WHERE parent_id = $1 ORDER BY started_at, id",
            parent_id,
        )
        return [row["id"] for row in rows]

    found = await services.database.run_driver(children, transaction=False)
    if len(found) != 1:
        raise ScenarioFailed(f"saga {parent_id} started {len(found)} child sagas, expected 1")
    say(f"its child saga (saga show {parent_id} lists it):")
    await _expect(services, found[0], expected, say)


def _reais(cents: int) -> str:
    """Cents as Brazilians write them: R$ 6.000,00."""
    whole = f"{cents // 100:,}".replace(",", ".")
    return f"R$ {whole},{cents % 100:02d}"


async def _until_waiting(services: RunningServices, saga_id: uuid.UUID, say: Say) -> None:
    """Wait (up to a minute) until the saga waits for its signal, then say since when."""
    for _ in range(600):
        summary = await services.coordinator.status(saga_id)
        if summary.status is SagaStatus.WAITING:
            say(f"saga {saga_id} is waiting for {CLAIM_REVIEWED!r}")
            return
        if not summary.status.in_flight:
            break
        await asyncio.sleep(0.1)
    raise ScenarioFailed(f"saga {saga_id} is {summary.status.value}, expected it to wait")


async def _review(
    services: RunningServices, saga_id: uuid.UUID, decision: dict[str, Any], say: Say
) -> None:
    """The plan auditor's review, sent as an auditor sends it: ``saga signal`` in a process
    of its own, pointed at the scenario's database (the signal needs nothing else; the
    broker is there so that the next command goes out at once, not at the relay's sweep)."""
    argv = [
        "saga",
        "signal",
        str(saga_id),
        CLAIM_REVIEWED,
        "--data",
        json.dumps(decision),
        "--actor",
        AUDITOR,
        "--reason",
        str(decision.get("reason", "")),
        "--signal-id",
        f"review-{saga_id}",
        "--json",
    ]
    say(f"the plan auditor runs: {shlex.join(argv)}")
    out = await _command(services, argv)
    for line in out.splitlines():
        say(f"  {line}")
    try:
        outcome = json.loads(out)["outcome"]
    except (ValueError, TypeError, KeyError):
        raise ScenarioFailed(f"`saga signal --json` printed no receipt: {out!r}") from None
    if outcome != "accepted":
        raise ScenarioFailed(f"saga {saga_id} did not accept the review: {outcome}")


async def _command(services: RunningServices, argv: Sequence[str]) -> str:
    """Run the ``saga`` command ``argv`` as a process of its own, without holding up the
    services running in this one; its standard output, or :class:`ScenarioFailed`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *argv,
        env=services.process_environment(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            out, err = await process.communicate()
    except TimeoutError:
        raise ScenarioFailed(
            f"`{shlex.join(argv)}` did not finish within {COMMAND_TIMEOUT:g} s"
        ) from None
    finally:
        # Timed out or cancelled: the command must not outlive the scenario.
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise ScenarioFailed(
            f"`{shlex.join(argv)}` exited {process.returncode}: "
            f"{err.decode(errors='replace').strip() or '(nothing on stderr)'}"
        )
    return out.decode()


async def _show(services: RunningServices, say: Say, title: str, sql: str, *args: object) -> None:
    async def fetch(conn: Connection) -> list[dict[str, object]]:
        return [dict(row) for row in await conn.fetch(sql, *args)]

    rows = await services.database.run_driver(fetch, transaction=False)
    say(f"{title}:")
    for row in rows:
        say("  " + ", ".join(f"{key}={value}" for key, value in row.items()))
    if not rows:
        say("  (none)")


async def booking(services: RunningServices, say: Say) -> None:
    """Book a slot, holding it and authorizing the coverage at once (completes), then book
    another past the plan's limit: plan refuses, care releases the hold it took meanwhile."""

    async def scene(conn: Connection) -> tuple[world.Member, list[world.Slot]]:
        member = await world.create_member(conn, limit_cents=30_000, name="Ana Souza")
        provider = await world.create_provider(conn, "Dra. Beatriz Lima")
        return member, await world.create_slots(conn, provider, 2)

    member, slots = await services.database.run_driver(scene)
    say(
        "booking a consultation of R$ 250,00 (limit R$ 300,00): "
        "the slot and the coverage at the same time"
    )
    first = await book_appointment(
        services.coordinator,
        user_id=member.user_id,
        slot_id=slots[0].slot_id,
        amount_cents=25_000,
        service_date=slots[0].service_date,
    )
    await _expect(services, first, SagaStatus.COMPLETED, say)
    say("booking a second one of R$ 250,00: past the limit, so the hold taken meanwhile goes")
    second = await book_appointment(
        services.coordinator,
        user_id=member.user_id,
        slot_id=slots[1].slot_id,
        amount_cents=25_000,
        service_date=slots[1].service_date,
    )
    await _expect(services, second, SagaStatus.COMPENSATED, say)
    await _show(
        services,
        say,
        "care_appointment",
        "SELECT status, starts_at, hold_expires_at, cancelled_reason "
        "FROM care_journey.care_appointment WHERE patient_id = $1 ORDER BY starts_at",
        member.user_id,
    )
    await _show(
        services,
        say,
        "care_slot",
        "SELECT starts_at, status FROM care_journey.care_slot WHERE id = ANY($1) ORDER BY 1",
        [slot.slot_id for slot in slots],
    )
    await _coverage(services, say, member)
    await _points(services, say, member.user_id)


async def claim(services: RunningServices, say: Say) -> None:
    """Claim a completed consultation above the review threshold: it waits for the plan
    auditor, who approves it (completes); then one the patient missed: care will not bill
    it, so plan cancels the claim (compensated)."""

    async def scene(
        conn: Connection,
    ) -> tuple[world.Member, world.CompletedAppointment, world.CompletedAppointment]:
        member = await world.create_member(conn, limit_cents=100_000_000, name="Carlos Pereira")
        provider = await world.create_provider(conn, "Dr. Daniel Rocha")
        done = await world.create_completed_appointment(conn, member.user_id, provider)
        missed = await world.create_completed_appointment(
            conn, member.user_id, provider, days_ago=2, status="confirmed"
        )
        return member, done, missed

    member, done, missed = await services.database.run_driver(scene)
    threshold = services.coordinator.settings.claim_review_threshold_cents
    high = threshold + 100_000
    say(
        f"claiming {_reais(high)} for a procedure that took place "
        f"(above the review threshold of {_reais(threshold)})"
    )
    first = await submit_claim(
        services.coordinator,
        user_id=member.user_id,
        appointment_id=done.appointment_id,
        amount_cents=high,
        service_date=done.service_date,
        procedure_code=CONSULTATION,
        diagnosis_code="J45.0",
    )
    await _until_waiting(services, first, say)
    await _review(services, first, {"approved": True, "reason": "laudo confere"}, say)
    await _expect(services, first, SagaStatus.COMPLETED, say)
    say("claiming R$ 180,00 for a consultation the patient missed")
    second = await submit_claim(
        services.coordinator,
        user_id=member.user_id,
        appointment_id=missed.appointment_id,
        amount_cents=18_000,
        service_date=missed.service_date,
        procedure_code=CONSULTATION,
    )
    await _expect(services, second, SagaStatus.COMPENSATED, say)
    await _show(
        services,
        say,
        "plan_claim",
        "SELECT status, amount_cents, approved_cents, service_date "
        "FROM plan_journey.plan_claim WHERE user_id = $1 ORDER BY service_date",
        member.user_id,
    )
    await _show(
        services,
        say,
        "care_appointment",
        "SELECT status, starts_at FROM care_journey.care_appointment "
        "WHERE patient_id = $1 ORDER BY starts_at",
        member.user_id,
    )
    await _coverage(services, say, member)
    await _points(services, say, member.user_id)


async def health_goal(services: RunningServices, say: Say) -> None:
    """Complete a steps goal (completes, its child saga granting the credit), then another
    member's goal with no coverage to credit: plan refuses, the child is compensated,
    gamification revokes the points, health reopens the goal."""

    async def scene(conn: Connection) -> tuple[world.Member, uuid.UUID, uuid.UUID, uuid.UUID]:
        member = await world.create_member(conn, name="Fernanda Alves")
        goal = await world.create_goal(conn, member.user_id)
        uncovered = await world.create_user(conn, "Gustavo Ribeiro")
        other_goal = await world.create_goal(conn, uncovered)
        return member, goal, uncovered, other_goal

    member, goal, uncovered, other_goal = await services.database.run_driver(scene)
    say("completing a goal of 8,000 daily steps with 9,500")
    first = await complete_health_goal(
        services.coordinator,
        user_id=member.user_id,
        goal_id=goal,
        completion_value=Decimal(9500),
        metric_type="steps",
    )
    await _expect(services, first, SagaStatus.COMPLETED, say)
    await _expect_child(services, first, SagaStatus.COMPLETED, say)
    say("completing the same kind of goal for a member with no active coverage")
    second = await complete_health_goal(
        services.coordinator,
        user_id=uncovered,
        goal_id=other_goal,
        completion_value=Decimal(9500),
        metric_type="steps",
    )
    await _expect(services, second, SagaStatus.COMPENSATED, say)
    await _expect_child(services, second, SagaStatus.COMPENSATED, say)
    await _show(
        services,
        say,
        "health_goal",
        "SELECT user_id, status, completion_value, completed_at "
        "FROM health_journey.health_goal WHERE id = ANY($1) ORDER BY user_id",
        [goal, other_goal],
    )
    await _show(
        services,
        say,
        "plan_wellness_credit",
        "SELECT status, amount_cents, reason FROM plan_journey.plan_wellness_credit "
        "WHERE user_id = ANY($1)",
        [member.user_id, uncovered],
    )
    await _points(services, say, member.user_id)
    await _points(services, say, uncovered)


async def _coverage(services: RunningServices, say: Say, member: world.Member) -> None:
    await _show(
        services,
        say,
        "plan_member_coverage",
        "SELECT annual_limit_cents, used_cents, reserved_cents "
        "FROM plan_journey.plan_member_coverage WHERE id = $1",
        member.coverage_id,
    )
    await _show(
        services,
        say,
        "plan_pre_authorization",
        "SELECT status, amount_cents, decision_reason "
        "FROM plan_journey.plan_pre_authorization WHERE member_coverage_id = $1 "
        "ORDER BY created_at",
        member.coverage_id,
    )


async def _points(services: RunningServices, say: Say, user_id: uuid.UUID) -> None:
    await _show(
        services,
        say,
        f"gamification ledger of {user_id}",
        "SELECT l.points, l.reason, p.xp AS profile_xp "
        "FROM gamification.gamification_points_ledger l "
        "JOIN gamification.gamification_profile p ON p.id = l.profile_id "
        "WHERE p.user_id = $1 ORDER BY l.created_at",
        user_id,
    )


SCENARIOS: Sequence[Scenario] = (
    Scenario("book_appointment", "Book an appointment", booking),
    Scenario("submit_claim", "Submit a claim", claim),
    Scenario("complete_health_goal", "Complete a health goal", health_goal),
)
