"""The plan journey's step handlers: authorizing a consultation against a member's
coverage (book_appointment), claiming it (submit_claim) and crediting a completed health
goal (complete_health_goal), each with its compensation.

Money rules the invariant check verifies, kept by every handler here:

- ``used_cents`` of a coverage = the ``approved_cents`` of its ``approved``/``paid`` claims;
- ``reserved_cents`` = the ``amount_cents`` of its ``approved`` pre-authorizations that no
  live claim links (a claim converts its pre-authorization's reservation into use).

Every handler first stamps the transaction with the saga id (``app.saga_id``) so that
the audit trigger records which saga changed a coverage (coverages have no saga column).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import date
from typing import Any

from journeys.shared.payload import OPERATOR_TIMEZONE, operator_today, payload_uuid
from saga import CheckViolation, Connection, Handler, Row, StepContext, StepRefused, UniqueViolation

# The operator's dates (service dates, coverage periods) are Brazilian.
# A pre-authorization may be claimed until this many days after the service date.
AUTHORIZATION_DAYS = 30
WELLNESS_CREDIT_REASON = "meta de saúde concluída"

# The same rules as the plan_claim CHECK constraints (migration 20261125150300).
TUSS_CODE = re.compile(r"[0-9]{8}")
ICD10_CODE = re.compile(r"[A-Z][0-9]{2}(\.?[0-9A-Z]{1,4})?")

LIVE_CLAIM = "status NOT IN ('rejected', 'cancelled') AND deleted_at IS NULL"


# -- payload checks -----------------------------------------------------------------


def _positive_cents(source: Mapping[str, Any], key: str) -> int:
    value = source.get(key)
    # bool is an int to Python, never to a payload's author.
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise StepRefused(f"invalid payload: {key} must be a positive integer of cents, got {value!r}")


def _date(source: Mapping[str, Any], key: str) -> date:
    value = source.get(key)
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise StepRefused(f"invalid payload: {key} must be a YYYY-MM-DD date, got {value!r}")


# -- coverage -------------------------------------------------------------------------


STAMP_SAGA = "SELECT set_config('app.saga_id', $1, true)"

LOCK_COVERAGE = """
    SELECT id, annual_limit_cents, used_cents, reserved_cents
    FROM plan_journey.plan_member_coverage
    WHERE user_id = $1 AND status = 'active' AND deleted_at IS NULL
      AND period_start <= $2 AND period_end >= $2
    ORDER BY period_start DESC, id
    LIMIT 1
    FOR UPDATE
"""


async def _stamp(step: StepContext) -> Connection:
    """The step's connection, its transaction stamped with the saga id for the audit."""
    await step.connection.execute(STAMP_SAGA, str(step.saga_id))
    return step.connection


async def _active_coverage(conn: Connection, user_id: uuid.UUID, on: date) -> Row:
    """The member's active coverage on ``on``, locked; refused when there is none."""
    coverage = await conn.fetchrow(LOCK_COVERAGE, user_id, on)
    if coverage is None:
        raise StepRefused(f"not covered: no active coverage on {on.isoformat()}")
    return coverage


def _check_limit(coverage: Row, amount: int, *, released: int = 0) -> None:
    """Refuse ``amount`` if it does not fit in what the coverage has left, counting
    ``released`` cents of reservation as given back."""
    committed = coverage["used_cents"] + coverage["reserved_cents"] - released
    remaining = coverage["annual_limit_cents"] - committed
    if amount > remaining:
        raise StepRefused(
            f"not covered: limit exceeded (requested {amount}, remaining {remaining} "
            f"of {coverage['annual_limit_cents']} cents)"
        )


# -- book_appointment: authorize_coverage / void_authorization ------------------------


AUTHORIZE = f"""
    WITH approved AS (
        INSERT INTO plan_journey.plan_pre_authorization (
            member_coverage_id, user_id, appointment_id, amount_cents, status,
            decided_at, expires_at, saga_id
        ) VALUES (
            $1, $2, $3, $4, 'approved', now(),
            ($5::date + {AUTHORIZATION_DAYS})::timestamp AT TIME ZONE '{OPERATOR_TIMEZONE}',
            $6
        )
        RETURNING id
    ), reserved AS (
        UPDATE plan_journey.plan_member_coverage
        SET reserved_cents = reserved_cents + $4
        WHERE id = $1
    )
    SELECT id FROM approved
"""


async def authorize_coverage(step: StepContext) -> dict[str, Any]:
    """Approve a pre-authorization of the consultation and reserve its amount.

    The appointment and its date come from reserve_slot's result (book_appointment v1) or,
    when the slot is reserved at the same time (v2's parallel group), from the payload.
    """
    user_id = payload_uuid(step.payload, "user_id")
    amount = _positive_cents(step.payload, "amount_cents")
    booking = step.context if "appointment_id" in step.context else step.payload
    appointment_id = payload_uuid(booking, "appointment_id")
    service_date = _date(booking, "service_date")
    conn = await _stamp(step)
    coverage = await _active_coverage(conn, user_id, service_date)
    _check_limit(coverage, amount)
    try:
        authorization_id = await conn.fetchval(
            AUTHORIZE, coverage["id"], user_id, appointment_id, amount, service_date, step.saga_id
        )
    except UniqueViolation:
        raise StepRefused(
            f"not covered: appointment {appointment_id} already has a live pre-authorization"
        ) from None
    return {
        "pre_authorization_id": str(authorization_id),
        "member_coverage_id": str(coverage["id"]),
        "authorized_cents": amount,
    }


# A standing pre-authorization reserves its amount until a live claim converts it into use.
RESERVING = f"""
    p.status = 'approved' AND NOT EXISTS (
        SELECT FROM plan_journey.plan_claim AS c
        WHERE c.pre_authorization_id = p.id AND c.{LIVE_CLAIM}
    )
"""


def voiding(target: str) -> str:
    """Void the pre-authorizations ``target`` selects (``id``, ``reserving``, ``reason``)
    and give back what they reserved: the compensation and the worker's clean-up make
    the same row changes."""
    return f"""
    WITH target AS ({target}), voided AS (
        UPDATE plan_journey.plan_pre_authorization AS p
        SET status = 'voided', decision_reason = t.reason
        FROM target AS t WHERE p.id = t.id
        RETURNING p.id, p.member_coverage_id, p.amount_cents, t.reserving
    ), released AS (
        UPDATE plan_journey.plan_member_coverage AS m
        SET reserved_cents = m.reserved_cents - v.amount
        FROM (
            SELECT member_coverage_id, sum(amount_cents) AS amount
            FROM voided WHERE reserving GROUP BY member_coverage_id
        ) AS v
        WHERE m.id = v.member_coverage_id
    )
    SELECT id, CASE WHEN reserving THEN amount_cents ELSE 0 END AS released_cents
    FROM voided
    """


VOID = voiding(
    f"""
    SELECT p.id, {RESERVING} AS reserving, $2::text AS reason
    FROM plan_journey.plan_pre_authorization AS p
    WHERE p.saga_id = $1 AND p.status IN ('approved', 'pending') AND p.deleted_at IS NULL
    FOR UPDATE OF p
    """
)


async def void_authorization(step: StepContext) -> dict[str, Any]:
    """Compensation of authorize_coverage: the saga's pre-authorization ``voided`` and
    its reservation given back."""
    conn = await _stamp(step)
    why = f"anulada: a saga {step.saga_id} não pôde ser concluída"
    rows = await conn.fetch(VOID, step.saga_id, why)
    if not rows:
        return {"undone": False}
    return {
        "undone": True,
        "pre_authorization_id": str(rows[0]["id"]),
        "released_cents": sum(row["released_cents"] for row in rows),
    }


# -- submit_claim: create_claim / cancel_claim -----------------------------------------


def _claim_request(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The claim's fields, validated before any statement runs."""
    procedure = payload.get("procedure_code")
    if not isinstance(procedure, str) or TUSS_CODE.fullmatch(procedure) is None:
        raise StepRefused(
            f"claim invalid: procedure_code must be a TUSS code of 8 digits, got {procedure!r}"
        )
    diagnosis = payload.get("diagnosis_code")
    if diagnosis is not None:
        if (
            not isinstance(diagnosis, str)
            or ICD10_CODE.fullmatch(diagnosis.strip().upper()) is None
        ):
            raise StepRefused(
                "claim invalid: diagnosis_code must be an ICD-10 code such as J45 or J45.0, "
                f"got {diagnosis!r}"
            )
        diagnosis = diagnosis.strip().upper()
    amount = payload.get("amount_cents")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise StepRefused(f"claim invalid: amount_cents must be a positive integer, got {amount!r}")
    service_date = _date(payload, "service_date")
    if service_date > operator_today():
        raise StepRefused(
            f"claim invalid: service_date {service_date.isoformat()} is in the future"
        )
    return {
        "user_id": payload_uuid(payload, "user_id"),
        "appointment_id": payload_uuid(payload, "appointment_id"),
        "amount": amount,
        "service_date": service_date,
        "procedure_code": procedure,
        "diagnosis_code": diagnosis,
    }


CLAIMED = f"""
    SELECT EXISTS (
        SELECT FROM plan_journey.plan_claim WHERE appointment_id = $1 AND {LIVE_CLAIM}
    )
"""

# The appointment's approved pre-authorization on this coverage that no live claim
# has consumed yet.
UNCLAIMED_AUTHORIZATION = f"""
    SELECT p.id, p.amount_cents
    FROM plan_journey.plan_pre_authorization AS p
    WHERE p.appointment_id = $1 AND p.member_coverage_id = $2 AND p.user_id = $3
      AND p.status = 'approved' AND p.deleted_at IS NULL
      AND NOT EXISTS (
          SELECT FROM plan_journey.plan_claim AS c
          WHERE c.pre_authorization_id = p.id AND c.{LIVE_CLAIM}
      )
    FOR UPDATE OF p
"""

CREATE_CLAIM = """
    WITH claim AS (
        INSERT INTO plan_journey.plan_claim (
            member_coverage_id, user_id, appointment_id, pre_authorization_id,
            amount_cents, approved_cents, service_date, status, procedure_code,
            diagnosis_code, decided_at, saga_id
        ) VALUES ($1, $2, $3, $4, $5, $5, $6, 'approved', $7, $8, now(), $9)
        RETURNING id
    ), counted AS (
        UPDATE plan_journey.plan_member_coverage
        SET used_cents = used_cents + $5, reserved_cents = reserved_cents - $10
        WHERE id = $1
    )
    SELECT id FROM claim
"""


async def create_claim(step: StepContext) -> dict[str, Any]:
    """Approve a claim for a completed appointment and count it as used; an approved
    pre-authorization of the appointment is consumed (its reservation becomes use)."""
    claim = _claim_request(step.payload)
    conn = await _stamp(step)
    if await conn.fetchval(CLAIMED, claim["appointment_id"]):
        raise StepRefused("claim invalid: appointment already claimed")
    coverage = await _active_coverage(conn, claim["user_id"], claim["service_date"])
    authorization = await conn.fetchrow(
        UNCLAIMED_AUTHORIZATION, claim["appointment_id"], coverage["id"], claim["user_id"]
    )
    released = 0 if authorization is None else int(authorization["amount_cents"])
    _check_limit(coverage, claim["amount"], released=released)
    try:
        claim_id = await conn.fetchval(
            CREATE_CLAIM,
            coverage["id"],
            claim["user_id"],
            claim["appointment_id"],
            None if authorization is None else authorization["id"],
            claim["amount"],
            claim["service_date"],
            claim["procedure_code"],
            claim["diagnosis_code"],
            step.saga_id,
            released,
        )
    except UniqueViolation:
        raise StepRefused("claim invalid: appointment already claimed") from None
    except CheckViolation as exc:
        # The Python checks mirror the constraints; this is the edge they cannot see
        # (a service date that is "today" across midnight, say).
        raise StepRefused(f"claim invalid: {exc.constraint or exc}") from None
    result: dict[str, Any] = {
        "claim_id": str(claim_id),
        "member_coverage_id": str(coverage["id"]),
        "approved_cents": claim["amount"],
        "pre_authorization_id": None if authorization is None else str(authorization["id"]),
    }
    threshold = step.payload.get("review_threshold_cents")
    # submit_claim v2 waits for a plan auditor's review unless this flag says no. Without
    # a threshold the flag is left out, and a missing flag means the saga waits.
    if isinstance(threshold, int) and not isinstance(threshold, bool):
        result["needs_review"] = claim["amount"] > threshold
    return result


# -- submit_claim v2: apply_review -------------------------------------------------------


def _review(context: Mapping[str, Any], wait: str) -> Mapping[str, Any] | None:
    """The auditor's signal the saga consumed at the wait ``wait``, if it waited."""
    review = context.get(wait)
    if review is None:
        return None
    if not isinstance(review, Mapping) or not isinstance(review.get("approved"), bool):
        raise StepRefused(
            f"claim rejected: the review must say approved true or false, got {review!r}"
        )
    return review


async def apply_review(step: StepContext) -> dict[str, Any]:
    """Let the claim stand or refuse it, as the plan auditor decided (submit_claim v2).

    The decision is the ``claim_reviewed`` signal's payload, stored in the context under
    the wait's name (``review``); a claim under the review threshold skipped the wait and
    stands. A rejection refuses the step, so the saga cancels the claim. Undoing this step
    is cancelling the claim (``cancel_claim``): accepting the review is what made it stand.
    """
    review = _review(step.context, "review")
    if review is None:
        return {"reviewed": False}
    if not review["approved"]:
        why = review.get("reason") or "no reason given"
        raise StepRefused(f"claim rejected by the plan auditor: {why}")
    return {"reviewed": True}


# Rejected claims keep their rejection (the CHECK ties it to the status) and were never
# counted; anything else of the saga's is cancelled.
CANCEL_CLAIM = """
    UPDATE plan_journey.plan_claim AS c SET status = 'cancelled'
    FROM (
        SELECT id, status FROM plan_journey.plan_claim
        WHERE saga_id = $1 AND status IN ('submitted', 'under_review', 'approved', 'paid')
          AND deleted_at IS NULL
        FOR UPDATE
    ) AS old
    WHERE c.id = old.id
    RETURNING c.id, c.member_coverage_id, c.pre_authorization_id,
              CASE WHEN old.status IN ('approved', 'paid') THEN c.approved_cents ELSE 0 END
                  AS counted_cents
"""

# The claim is cancelled by now, so the pre-authorization it linked reserves again if it
# is still approved and no other live claim took it.
UNCOUNT_CLAIM = f"""
    UPDATE plan_journey.plan_member_coverage AS m
    SET used_cents = m.used_cents - $2,
        reserved_cents = m.reserved_cents + coalesce((
            SELECT p.amount_cents FROM plan_journey.plan_pre_authorization AS p
            WHERE p.id = $3 AND p.member_coverage_id = m.id
              AND p.status = 'approved' AND p.deleted_at IS NULL
              AND NOT EXISTS (
                  SELECT FROM plan_journey.plan_claim AS c
                  WHERE c.pre_authorization_id = p.id AND c.{LIVE_CLAIM}
              )
        ), 0)
    WHERE m.id = $1
    RETURNING m.reserved_cents
"""


async def cancel_claim(step: StepContext) -> dict[str, Any]:
    """Compensation of create_claim: the saga's claim ``cancelled``, its use given back
    and its pre-authorization's reservation restored."""
    conn = await _stamp(step)
    cancelled = await conn.fetch(CANCEL_CLAIM, step.saga_id)
    for claim in cancelled:
        await conn.execute(
            UNCOUNT_CLAIM,
            claim["member_coverage_id"],
            claim["counted_cents"],
            claim["pre_authorization_id"],
        )
    if not cancelled:
        return {"undone": False}
    return {"undone": True, "claim_id": str(cancelled[0]["id"])}


# -- complete_health_goal: apply_wellness_credit / reverse_wellness_credit -------------


APPLY_CREDIT = """
    INSERT INTO plan_journey.plan_wellness_credit (
        member_coverage_id, user_id, amount_cents, reason, source_goal_id, status, saga_id
    )
    SELECT $1, $2, $3, $4, $5, 'applied', $6
    WHERE NOT EXISTS (
        SELECT FROM plan_journey.plan_wellness_credit
        WHERE source_goal_id = $5 AND status = 'applied' AND deleted_at IS NULL
    )
    RETURNING id
"""


async def apply_wellness_credit(step: StepContext) -> dict[str, Any]:
    """Credit the member for a completed health goal, once per goal."""
    user_id = payload_uuid(step.payload, "user_id")
    goal_id = payload_uuid(step.payload, "goal_id")
    credit = _positive_cents(step.payload, "credit_cents")
    conn = await _stamp(step)
    coverage = await _active_coverage(conn, user_id, operator_today())
    already = "not covered: credit already applied for this goal"
    try:
        credit_id = await conn.fetchval(
            APPLY_CREDIT,
            coverage["id"],
            user_id,
            credit,
            WELLNESS_CREDIT_REASON,
            goal_id,
            step.saga_id,
        )
    except UniqueViolation:
        raise StepRefused(already) from None
    if credit_id is None:
        raise StepRefused(already)
    return {"wellness_credit_id": str(credit_id), "credit_cents": credit}


REVERSE_CREDIT = """
    UPDATE plan_journey.plan_wellness_credit
    SET status = 'reversed', reversed_at = now()
    WHERE saga_id = $1 AND status = 'applied' AND deleted_at IS NULL
    RETURNING id
"""


async def reverse_wellness_credit(step: StepContext) -> dict[str, Any]:
    """Compensation of apply_wellness_credit: the saga's credit ``reversed``."""
    conn = await _stamp(step)
    reversed_id = await conn.fetchval(REVERSE_CREDIT, step.saga_id)
    if reversed_id is None:
        return {"undone": False}
    return {"undone": True, "wellness_credit_id": str(reversed_id)}


HANDLERS: dict[str, Handler] = {
    "authorize_coverage": authorize_coverage,
    "void_authorization": void_authorization,
    "create_claim": create_claim,
    "cancel_claim": cancel_claim,
    "apply_review": apply_review,
    "apply_wellness_credit": apply_wellness_credit,
    "reverse_wellness_credit": reverse_wellness_credit,
}
