"""Book an appointment: the saga the care service starts when a patient books a slot.

Version 2, a parallel group first: care reserve_slot (a hold that expires: the lock other
bookings see) and plan authorize_coverage (Serializable: it reserves the price on the
member's coverage) at the same time, since neither needs the other's result → gamification
award_points → care confirm_appointment (the last step, never undone). A slot someone
holds is refused as ``slot taken``, a coverage that cannot pay as ``not covered: ...``;
the group waits for its other branch to answer, undoes it if it succeeded, then the steps
before in reverse order. In the timeline both branches are dispatched in one transition.

The care service starts it through one call that builds the payload and returns the saga's
id at once; whoever wants the outcome waits for it:

    saga_id = await book_appointment(
        coordinator,
        user_id=member.user_id,
        slot_id=slot.slot_id,
        amount_cents=25_000,
        service_date=slot.service_date,  # the slot's date: plan authorizes for it at once
    )
    outcome = await coordinator.wait(saga_id)  # completed, compensated or parked

This script prints the definition, then books a slot (completes) and a second one past the
plan's limit (compensated), printing each saga's timeline and the rows it touched. It runs
against DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS when they are set (the database migrated),
else against an embedded PostgreSQL and broker started for the run:

    .venv/bin/python examples/book_appointment.py

It exits non-zero if a saga ends otherwise than described.
"""

from __future__ import annotations

import sys

from outline import print_outline

from journeys.care.sagas import BOOK_APPOINTMENT_V2, book_appointment
from journeys.scenarios import SCENARIOS
from saga import run_standalone

if __name__ == "__main__":
    print_outline(BOOK_APPOINTMENT_V2, book_appointment)
    sys.exit(run_standalone([s for s in SCENARIOS if s.name == "book_appointment"]))
