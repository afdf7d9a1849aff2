"""Submit a claim: the saga the plan service starts when a member claims a consultation.

plan create_claim (Serializable: validated, counted against the coverage's limit) → care
mark_billed → gamification grant_achievement (and its points). An invalid claim is refused
as ``claim invalid: ...``, one past the limit as ``not covered: ...``, an appointment that
did not happen as ``appointment not completed``; the steps before are undone in reverse
order.

The plan service starts it through one call that builds the payload and returns the saga's
id at once; whoever wants the outcome waits for it:

    saga_id = await submit_claim(
        coordinator,
        user_id=member.user_id,
        appointment_id=appointment.appointment_id,
        amount_cents=18_000,
        service_date=appointment.service_date,
        procedure_code="10101012",  # TUSS: a consultation
        diagnosis_code="J45.0",  # ICD-10
    )
    outcome = await coordinator.wait(saga_id)  # completed, compensated or parked

This script prints the definition, then claims a consultation that took place (completes)
and one the patient missed (compensated), printing each saga's timeline and the rows it
touched. It runs against DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS when they are set (the
database migrated), else against an embedded PostgreSQL and broker started for the run:

    .venv/bin/python examples/submit_claim.py

It exits non-zero if a saga ends otherwise than described.
"""

from __future__ import annotations

import sys

from outline import print_outline

from journeys.plan.sagas import SUBMIT_CLAIM, submit_claim
from journeys.scenarios import SCENARIOS
from saga import run_standalone

if __name__ == "__main__":
    print_outline(SUBMIT_CLAIM, submit_claim)
    sys.exit(run_standalone([s for s in SCENARIOS if s.name == "submit_claim"]))
