"""saga.testing: each fault the kit injects, run through the real journey handlers on a
real PostgreSQL, with the outcome checked in the journeys' tables and in the timeline."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Mapping
from typing import Any

import pytest

from journeys import world
from journeys.care.sagas import BOOK_APPOINTMENT
from saga.coordinator import SignalOutcome
from saga.definition import AwaitEvent, OnTimeout, SagaDefinition
from saga.machine import SagaStatus
from saga.participant import StepContext
from saga.participant.journey import JourneyService, discover_journeys
from saga.retry import RetryPolicy
from saga.settings import Settings
from saga.store.driver import DriverConnection
from saga.testing import Faults, SagaTestEnvironment
from saga.timeline import Timeline

pytestmark = pytest.mark.integration


def environment(
    settings: Settings,
    url: str,
    faults: Faults | None = None,
    *,
    journeys: list[JourneyService] | None = None,
    definitions: tuple[SagaDefinition, ...] = (),
) -> SagaTestEnvironment:
    return SagaTestEnvironment(
        settings=settings,
        database_url=url,
        journeys=journeys or list(discover_journeys().values()),
        faults=faults,
        definitions=definitions,
    )


async def booking_payload(
    env: SagaTestEnvironment, *, limit_cents: int = 100_000
) -> dict[str, Any]:
    async def build(conn: DriverConnection) -> dict[str, Any]:
        member = await world.create_member(conn, limit_cents=limit_cents)
        provider = await world.create_provider(conn)
        slot = (await world.create_slots(conn, provider, 1))[0]
        return {
            "user_id": str(member.user_id),
            "slot_id": str(slot.slot_id),
            "amount_cents": 20_000,
            "reason": None,
            "points": 10,
            "source_journey": "care",
            "award_reason": "appointment_booked",
        }

    return await env.scene(build)


def attempts(timeline: Timeline, step: str, action: str = "execute") -> list[str]:
    return [e.status for e in timeline.entries if e.step_name == step and e.action == action]


async def effects(env: SagaTestEnvironment, saga_id: uuid.UUID) -> dict[str, Any]:
    """What a booking left behind: its appointment, authorization and points."""
    appointment = await env.query(
        "SELECT status FROM care_journey.care_appointment WHERE saga_id = $1", saga_id
    )
    authorized = await env.query(
        "SELECT status FROM plan_journey.plan_pre_authorization WHERE saga_id = $1", saga_id
    )
    points = await env.query(
        "SELECT points FROM gamification.gamification_points_ledger WHERE saga_id = $1 "
        "ORDER BY created_at",
        saga_id,
    )
    return {
        "appointment": [r["status"] for r in appointment],
        "authorization": [r["status"] for r in authorized],
        "points": [r["points"] for r in points],
    }


async def test_a_booking_completes_in_well_under_a_second(
    settings: Settings, kit_database: str
) -> None:
    async with environment(settings, kit_database) as env:
        payload = await booking_payload(env)
        began = time.perf_counter()
        outcome = await env.run(BOOK_APPOINTMENT, payload)
        took = time.perf_counter() - began
        print(f"\none booking through the kit took {took * 1000:.0f} ms")
        assert outcome.status is SagaStatus.COMPLETED, outcome.error
        timeline = await env.timeline(outcome.id)
        assert [e.status for e in timeline.entries] == ["succeeded"] * 4
        assert (await effects(env, outcome.id))["appointment"] == ["confirmed"]
        assert env.clock.now == 0.0  # nothing had to wait


async def test_a_refused_step_compensates_the_steps_before(
    settings: Settings, kit_database: str
) -> None:
    faults = Faults().refuse("authorize_coverage", "not covered: the test says so")
    async with environment(settings, kit_database, faults) as env:
        outcome = await env.run(BOOK_APPOINTMENT, await booking_payload(env))
        assert outcome.status is SagaStatus.COMPENSATED
        assert outcome.error == ("step 'authorize_coverage' failed: not covered: the test says so")
        timeline = await env.timeline(outcome.id)
        assert attempts(timeline, "authorize_coverage") == ["failed"]
        assert attempts(timeline, "reserve_slot", "compensate") == ["succeeded"]
        assert attempts(timeline, "award_points") == []
        assert await effects(env, outcome.id) == {
            "appointment": ["released"],
            "authorization": [],
            "points": [],
        }


async def test_a_step_that_errors_twice_is_retried_after_its_backoff(
    settings: Settings, kit_database: str
) -> None:
    async with environment(settings, kit_database, Faults().error("award_points", times=2)) as env:
        outcome = await env.run(BOOK_APPOINTMENT, await booking_payload(env))
        assert outcome.status is SagaStatus.COMPLETED, outcome.error
        timeline = await env.timeline(outcome.id)
        assert attempts(timeline, "award_points") == ["retried", "retried", "succeeded"]
        retried = [e for e in timeline.entries if e.status == "retried"]
        assert all(
            "InjectedFault: injected error in award_points" in (e.error or "") for e in retried
        )
        # The backoffs were waited out on the test clock, not in real time.
        assert env.clock.now > 0
        assert (await effects(env, outcome.id))["points"] == [10]


async def test_a_step_that_never_answers_times_out_and_is_undone(
    settings: Settings, kit_database: str
) -> None:
    async with environment(settings, kit_database, Faults().time_out("award_points")) as env:
        outcome = await env.run(BOOK_APPOINTMENT, await booking_payload(env))
        assert outcome.status is SagaStatus.COMPENSATED
        assert outcome.error is not None
        assert "out of attempts (3): no reply within 20 s" in outcome.error
        timeline = await env.timeline(outcome.id)
        assert attempts(timeline, "award_points") == ["timed_out", "timed_out", "failed"]
        # Its compensation finds nothing to undo: the command never reached gamification.
        undo = [e for e in timeline.entries if e.action == "compensate"]
        assert [e.step_name for e in undo] == ["award_points", "authorize_coverage", "reserve_slot"]
        assert undo[0].response == {"undone": False, "why": "the step never ran here"}
        # Three attempts of five seconds each, on the test clock.
        failed = next(e for e in timeline.entries if e.status == "failed")
        assert failed.finished_at is not None
        assert (failed.finished_at - timeline.started_at).total_seconds() >= 3 * 5.0
        assert await effects(env, outcome.id) == {
            "appointment": ["released"],
            "authorization": ["voided"],
            "points": [],
        }


async def test_an_answer_within_the_timeout_just_takes_longer(
    settings: Settings, kit_database: str
) -> None:
    faults = Faults().answer_late("award_points", seconds=3)
    async with environment(settings, kit_database, faults) as env:
        outcome = await env.run(BOOK_APPOINTMENT, await booking_payload(env))
        assert outcome.status is SagaStatus.COMPLETED, outcome.error
        timeline = await env.timeline(outcome.id)
        assert attempts(timeline, "award_points") == ["succeeded"]
        award = next(e for e in timeline.entries if e.step_name == "award_points")
        assert award.duration_ms is not None
        assert award.duration_ms >= 3000
        assert 3.0 <= env.clock.now < 5.0


async def test_an_answer_after_the_timeout_settles_the_resent_step(
    settings: Settings, kit_database: str
) -> None:
    faults = Faults().answer_late("award_points", seconds=7, times=1)
    async with environment(settings, kit_database, faults) as env:
        outcome = await env.run(BOOK_APPOINTMENT, await booking_payload(env))
        assert outcome.status is SagaStatus.COMPLETED, outcome.error
        timeline = await env.timeline(outcome.id)
        # Attempt 1 timed out at 5 s and was sent again; the re-sent command was answered
        # from the inbox, and the late first answer was ignored as a duplicate (or the
        # other way round): the points were awarded once.
        assert attempts(timeline, "award_points")[:1] == ["timed_out"]
        assert "succeeded" in attempts(timeline, "award_points")
        assert (await effects(env, outcome.id))["points"] == [10]


async def test_every_message_delivered_twice_has_every_effect_once(
    settings: Settings, kit_database: str
) -> None:
    async with environment(settings, kit_database, Faults().deliver_twice()) as env:
        outcome = await env.run(BOOK_APPOINTMENT, await booking_payload(env))
        assert outcome.status is SagaStatus.COMPLETED, outcome.error
        timeline = await env.timeline(outcome.id)
        assert [e.status for e in timeline.entries if e.status != "ignored"] == ["succeeded"] * 4
        assert [e.status for e in timeline.entries].count("ignored") >= 4
        assert await effects(env, outcome.id) == {
            "appointment": ["confirmed"],
            "authorization": ["approved"],
            "points": [10],
        }
        duplicates = sum(p.stats.duplicates for p in env.participants.values())
        assert duplicates == 4  # each command's second copy was answered from the inbox


async def test_a_reply_lost_in_a_crash_is_sent_by_the_relay(
    settings: Settings, kit_database: str
) -> None:
    faults = Faults().crash_before_reply("reserve_slot")
    async with environment(settings, kit_database, faults) as env:
        outcome = await env.run(BOOK_APPOINTMENT, await booking_payload(env))
        assert outcome.status is SagaStatus.COMPLETED, outcome.error
        assert len(env.switchboard.crashed) == 1
        assert env.participants["care"].runtime.publisher.relayed == 1
        timeline = await env.timeline(outcome.id)
        assert attempts(timeline, "reserve_slot") == ["succeeded"]
        # The relay takes a row only once its writer has had the grace period to send it.
        reserved = timeline.entries[0]
        assert reserved.duration_ms is not None
        assert reserved.duration_ms >= 1000
        unsent = await env.query(
            "SELECT count(*) AS n FROM care_journey.care_outbox WHERE published_at IS NULL"
        )
        assert unsent == [{"n": 0}]


async def test_a_retry_backoff_fires_when_the_clock_reaches_it(
    settings: Settings, kit_database: str
) -> None:
    slow = RetryPolicy(max_attempts=2, initial_delay=30.0, max_delay=30.0, jitter=0.0)
    steps = [
        dataclasses.replace(step, retry=slow) if step.name == "award_points" else step
        for step in BOOK_APPOINTMENT.steps
    ]
    definition = SagaDefinition("book_appointment_slow_retry", 1, steps)
    faults = Faults().error("award_points", times=1)
    async with environment(settings, kit_database, faults, definitions=(definition,)) as env:
        saga_id = await env.start(definition, await booking_payload(env))
        await env.deliver()
        await env.advance(29.0)
        timeline = await env.timeline(saga_id)
        assert attempts(timeline, "award_points") == ["retried", "dispatched"]
        assert attempts(timeline, "confirm_appointment") == []
        await env.advance(1.5)
        outcome = await env.settle(saga_id)
        assert outcome.status is SagaStatus.COMPLETED, outcome.error
        timeline = await env.timeline(saga_id)
        retry = [e for e in timeline.entries if e.step_name == "award_points"][-1]
        assert (retry.started_at - timeline.started_at).total_seconds() >= 30.0


async def test_a_handler_bug_is_raised_into_the_test(settings: Settings, kit_database: str) -> None:
    journeys = discover_journeys()

    async def broken(step: StepContext) -> Mapping[str, Any]:
        return {"points": step.payload["no_such_field"]}

    gamification = journeys["gamification"]
    journeys["gamification"] = dataclasses.replace(
        gamification, handlers={**gamification.handlers, "award_points": broken}
    )
    async with environment(settings, kit_database, journeys=list(journeys.values())) as env:
        with pytest.raises(KeyError, match="no_such_field"):
            await env.run(BOOK_APPOINTMENT, await booking_payload(env))


# -- a saga waiting for a signal ---------------------------------------------------------

APPROVED = "booking_approved"
APPROVAL_TIMEOUT = 600.0


def booking_after_approval(on_timeout: OnTimeout = OnTimeout.COMPENSATE) -> SagaDefinition:
    """The booking with a wait for ``booking_approved`` after the slot is held."""
    first, *rest = BOOK_APPOINTMENT.steps
    approval = AwaitEvent("approval", APPROVED, APPROVAL_TIMEOUT, on_timeout=on_timeout)
    return SagaDefinition(f"booking_after_approval_{on_timeout.value}", 1, [first, approval, *rest])


async def test_a_saga_waiting_for_a_signal_settles_as_waiting(
    settings: Settings, kit_database: str
) -> None:
    definition = booking_after_approval()
    async with environment(settings, kit_database, definitions=(definition,)) as env:
        outcome = await env.run(definition, await booking_payload(env))
        assert outcome.status is SagaStatus.WAITING
        # The clock was not moved towards the wait's timeout: only the test knows whether
        # the signal comes.
        assert env.clock.now == 0.0
        timeline = await env.timeline(outcome.id)
        assert attempts(timeline, "approval") == ["waiting"]
        # Short of the timeout, settling again leaves it waiting.
        await env.advance(APPROVAL_TIMEOUT - 1)
        again = await env.settle(outcome.id)
        assert again.status is SagaStatus.WAITING
        assert (await effects(env, outcome.id))["appointment"] == ["held"]


async def test_a_signal_then_settle_completes(settings: Settings, kit_database: str) -> None:
    definition = booking_after_approval()
    async with environment(settings, kit_database, definitions=(definition,)) as env:
        waiting = await env.run(definition, await booking_payload(env))
        receipt = await env.signal(
            waiting.id, APPROVED, {"by": "dr.ana"}, actor="dr.ana", reason="laudo ok"
        )
        assert receipt.outcome is SignalOutcome.ACCEPTED
        outcome = await env.settle(waiting.id)
        assert outcome.status is SagaStatus.COMPLETED, outcome.error
        assert outcome.context["approval"] == {"by": "dr.ana"}
        [row] = await env.query(
            "SELECT actor FROM shared.saga_step_log WHERE saga_instance_id = $1 "
            "AND step_name = 'approval' AND status = 'succeeded'",
            waiting.id,
        )
        assert row == {"actor": "dr.ana"}
        assert (await effects(env, waiting.id))["appointment"] == ["confirmed"]


async def test_past_the_wait_timeout_settle_compensates(
    settings: Settings, kit_database: str
) -> None:
    definition = booking_after_approval()
    async with environment(settings, kit_database, definitions=(definition,)) as env:
        waiting = await env.run(definition, await booking_payload(env))
        await env.advance(APPROVAL_TIMEOUT + 1)
        outcome = await env.settle(waiting.id)
        assert outcome.status is SagaStatus.COMPENSATED
        assert f"wait 'approval': no '{APPROVED}' signal within" in (outcome.error or "")
        assert await effects(env, waiting.id) == {
            "appointment": ["released"],
            "authorization": [],
            "points": [],
        }


async def test_past_the_wait_timeout_settle_goes_on_when_the_wait_says_continue(
    settings: Settings, kit_database: str
) -> None:
    definition = booking_after_approval(OnTimeout.CONTINUE)
    async with environment(settings, kit_database, definitions=(definition,)) as env:
        waiting = await env.run(definition, await booking_payload(env))
        await env.advance(APPROVAL_TIMEOUT + 1)
        outcome = await env.settle(waiting.id)
        assert outcome.status is SagaStatus.COMPLETED, outcome.error
        assert "approval" not in outcome.context
        assert (await effects(env, waiting.id))["appointment"] == ["confirmed"]
