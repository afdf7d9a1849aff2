"""The journeys workload's sagas: how many of each kind, the scene they need, and a
starter per saga calling the start functions of ``journeys/*/sagas.py``.

Half the sagas book an appointment, a quarter submit a claim, a quarter complete a health
goal, interleaved at random (a fixed seed). Each claim has a completed appointment of its
own and each goal-completion a goal of its own, so each is claimed or completed once. A
booking has a free slot of its own, except that about 3 % take the slot of the booking
started just before them (usually still in flight): those are refused ``slot taken``
unless the first one gave the slot back. 15 % of the members have a small limit (room
for about one booking and one claim), so some of their bookings and claims are refused
``not covered``; 5 % of the goals belong to users with no coverage, whose wellness credit
is refused after the points were awarded.

Bookings are book_appointment v2 (the slot and the coverage in one parallel group) and
claims submit_claim v2, under the review threshold by default so that none waits. The
reliability suite asks for a share of reviewed claims (``reviewed_share``): their
threshold is under their amount, so each waits for ``claim_reviewed``, and the mix says
which (``Mix.reviewed``; benchmarks.reliability.reviews sends the signals).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from decimal import Decimal

from benchmarks.saga_bench.journey_scene import Scene, SceneSize
from benchmarks.saga_bench.workload import Starter
from journeys.care.sagas import BOOK_APPOINTMENT, book_appointment
from journeys.health.sagas import COMPLETE_HEALTH_GOAL, complete_health_goal
from journeys.plan.sagas import SUBMIT_CLAIM, submit_claim

SHARES = {BOOK_APPOINTMENT.name: 0.50, SUBMIT_CLAIM.name: 0.25, COMPLETE_HEALTH_GOAL.name: 0.25}
COLLIDING_SHARE = 0.03
SMALL_LIMIT_SHARE = 0.15
UNCOVERED_GOAL_SHARE = 0.05
SAGAS_PER_MEMBER = 5
SLOTS_PER_PROVIDER = 40
BOOKING_CENTS = 25_000
CLAIM_CENTS = 15_000
CONSULTATION = "10101012"  # TUSS: consulta em consultório
STEPS = Decimal(9_000)  # over the goals' 8,000
SEED = 20261125


@dataclass(frozen=True, slots=True)
class Mix:
    kinds: list[str]
    """The definition of each saga, in start order."""
    colliding: list[bool]
    """Per booking: whether it takes the slot of the booking before it."""
    booking_members: list[int]
    size: SceneSize
    reviewed: list[bool] = field(default_factory=list)
    """Per claim: whether it is above its review threshold, so it waits for a review."""


def plan_mix(sagas: int, *, reviewed_share: float = 0.0) -> Mix:
    draw = random.Random(SEED)
    bookings = round(sagas * SHARES[BOOK_APPOINTMENT.name])
    claims = round(sagas * SHARES[SUBMIT_CLAIM.name])
    goals = sagas - bookings - claims
    kinds = (
        [BOOK_APPOINTMENT.name] * bookings
        + [SUBMIT_CLAIM.name] * claims
        + [COMPLETE_HEALTH_GOAL.name] * goals
    )
    draw.shuffle(kinds)
    members = max(20, sagas // SAGAS_PER_MEMBER)
    uncovered = max(1, members // 20)
    colliding = [n > 0 and draw.random() < COLLIDING_SHARE for n in range(bookings)]
    own_slots = bookings - sum(colliding)
    size = SceneSize(
        members=members,
        small_limit_members=round(members * SMALL_LIMIT_SHARE),
        uncovered_users=uncovered,
        providers=max(2, -(-own_slots // SLOTS_PER_PROVIDER)),
        slots=own_slots,
        appointments=[draw.randrange(members) for _ in range(claims)],
        goals=[
            members + draw.randrange(uncovered)
            if draw.random() < UNCOVERED_GOAL_SHARE
            else draw.randrange(members)
            for _ in range(goals)
        ],
    )
    booking_members = [draw.randrange(members) for _ in range(bookings)]
    if not 0.0 <= reviewed_share <= 1.0:
        raise ValueError(f"reviewed_share must be within 0..1, got {reviewed_share!r}")
    # A generator of its own, so the rest of the mix is the same whatever the share.
    reviews = random.Random(SEED + 1)
    reviewed = [reviews.random() < reviewed_share for _ in range(claims)]
    return Mix(kinds, colliding, booking_members, size, reviewed)


def starters(mix: Mix, scene: Scene) -> list[Starter]:
    """A starter per saga of ``mix``, on the rows of ``scene``."""
    bookings = iter(range(len(mix.colliding)))
    claims = iter(range(len(mix.size.appointments)))
    slots = iter(scene.slots)
    appointments = iter(scene.appointments)
    goals = iter(scene.goals)
    slot = None
    result: list[Starter] = []
    for kind in mix.kinds:
        if kind == BOOK_APPOINTMENT.name:
            n = next(bookings)
            if slot is None or not mix.colliding[n]:
                slot = next(slots)
            member = scene.members[mix.booking_members[n]]
            result.append(
                functools.partial(
                    book_appointment,
                    user_id=member,
                    slot_id=slot.slot_id,
                    amount_cents=BOOKING_CENTS,
                    service_date=slot.service_date,
                )
            )
        elif kind == SUBMIT_CLAIM.name:
            appointment = next(appointments)
            reviewed = mix.reviewed[next(claims)] if mix.reviewed else False
            result.append(
                functools.partial(
                    submit_claim,
                    user_id=appointment.user_id,
                    appointment_id=appointment.appointment_id,
                    amount_cents=CLAIM_CENTS,
                    service_date=appointment.service_date,
                    procedure_code=CONSULTATION,
                    # Explicit either way: the mix is the same whatever the setting.
                    review_threshold_cents=CLAIM_CENTS - 1 if reviewed else CLAIM_CENTS,
                )
            )
        else:
            goal = next(goals)
            result.append(
                functools.partial(
                    complete_health_goal,
                    user_id=goal.user_id,
                    goal_id=goal.goal_id,
                    completion_value=STEPS,
                    metric_type="steps",
                )
            )
    return result
