"""Submit a claim: the saga the plan service starts when a member claims a consultation.

Version 2: plan create_claim (Serializable: validated, counted against the coverage's
limit) → a wait for ``claim_reviewed`` when the claim is above the review threshold
(``CLAIM_REVIEW_THRESHOLD_CENTS``, R$ 5.000,00 unless the caller passes another) → plan
apply_review → care mark_billed → gamification grant_achievement (and its points). An
invalid claim is refused as ``claim invalid: ...``, one past the limit as ``not covered:
...``, an appointment that did not happen as ``appointment not completed``, one the
auditor rejects as ``claim rejected by the plan auditor: <reason>``, one nobody reviews
within three days as ``wait 'review': no 'claim_reviewed' signal within ...``; the steps
before are undone in reverse order.

A plan auditor reviews a waiting claim from a shell (``saga ls --status waiting`` lists
them); the payload lands in the saga's context under ``review``:

    saga signal SAGA_ID claim_reviewed --data '{"approved": true, "reason": "laudo confere"}' \
        --actor auditor.marina

or from code, ``await coordinator.signal(saga_id, "claim_reviewed", {"approved": False,
"reason": "..."}, signal_id=..., actor=...)``. A review sent before the claim reaches its
wait is kept for it; the same ``--signal-id`` twice changes nothing; a review after the
saga ended is refused.

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

This script prints the definition, then claims a procedure above the threshold that took
place (it waits; the script runs the auditor's ``saga signal ... --json`` as a process of
its own, pointed at the same database, and prints the command line and its receipt; then
the claim completes) and one the patient missed (compensated), printing each saga's
timeline and the rows it touched. It runs against DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS
when they are set (the database migrated), else against an embedded PostgreSQL and broker
started for the run:

    .venv/bin/python examples/submit_claim.py

It exits non-zero if a saga ends otherwise than described.
"""

from __future__ import annotations

import sys

from outline import print_outline

from journeys.plan.sagas import SUBMIT_CLAIM_V2, submit_claim
from journeys.scenarios import SCENARIOS
from saga import run_standalone

if __name__ == "__main__":
    print_outline(SUBMIT_CLAIM_V2, submit_claim)
    sys.exit(run_standalone([s for s in SCENARIOS if s.name == "submit_claim"]))
