"""The plan journey's service, run by `saga run participant --journey plan`."""

from __future__ import annotations

from journeys.plan.maintenance import VOID_ORPHAN_AUTHORIZATIONS
from journeys.plan.sagas import GRANT_WELLNESS_CREDIT, SUBMIT_CLAIM_VERSIONS
from journeys.plan.steps import HANDLERS
from saga import JourneyService, RetryPolicy

SERVICE = JourneyService(
    name="plan",
    schema="plan_journey",
    database_role="austa_plan_journey",
    handlers=HANDLERS,
    definitions=(*SUBMIT_CLAIM_VERSIONS, GRANT_WELLNESS_CREDIT),
    # Every authorization and claim of a member updates their coverage row at
    # Serializable, so concurrent ones conflict and are re-run; give them room.
    retry=RetryPolicy(max_attempts=40, initial_delay=0.002, max_delay=0.1),
    maintenance=(VOID_ORPHAN_AUTHORIZATIONS,),
    # The coverage ledger is updated by every authorization and claim (and by their
    # Serializable re-runs); pre-authorizations and claims change status as sagas move.
    churning_tables=(
        "plan_journey.plan_member_coverage",
        "plan_journey.plan_pre_authorization",
        "plan_journey.plan_claim",
    ),
    # submit_claim's payload says what the patient had and what was done (ICD-10, TUSS).
    sensitive_fields=frozenset({"diagnosis_code", "procedure_code"}),
)
