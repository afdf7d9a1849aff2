"""The plan journey's background job: voiding pre-authorizations nobody can use any more.

How a pre-authorization lives (journeys/plan/steps.py): ``authorize_coverage`` inserts it
``approved`` (the schema also allows ``pending``, which no handler makes today) and adds
its amount to the coverage's ``reserved_cents``; ``create_claim`` consumes the
appointment's approved one that no live claim links yet, turning its reservation into
use, and the pre-authorization stays ``approved``, linked by the claim; ``cancel_claim``
gives the reservation back to it; ``void_authorization`` (the booking saga's
compensation) voids the saga's ``approved``/``pending`` ones and gives back the
reservation of those no live claim links. So a *completed* booking saga legitimately
leaves its pre-authorization standing, reserving the consultation's price, until a claim
uses it; ``create_claim`` does not look at ``expires_at`` itself.

:data:`VOID_ORPHAN_AUTHORIZATIONS` voids a pre-authorization that is ``approved`` or
``pending``, not soft-deleted and not linked by a live claim (a linked one is in use: the
claim's saga decides its fate, and its cancellation hands the reservation back), when

- its saga is ``compensated`` (in ``shared.saga_instance`` or, once retention moved it,
  ``shared.saga_instance_archive``), whatever ``expires_at`` says: an operator finished
  the saga by hand (a late ``authorize_coverage`` cannot commit after the compensation,
  which bars it), and the saga's appointment was released, so nobody will claim it; or
- its saga is ``completed``, ``aborted`` (an operator took it over) or gone (no row in
  either table, or no saga at all) and its ``expires_at`` (``AUTHORIZATION_DAYS`` after
  the service date) has passed: the window in which a claim may use it is over, and its
  reservation would otherwise hold the member's limit for ever. A claim submitted later is
  charged against the limit without it.

A pre-authorization of a running, compensating or parked saga is never touched: the saga
(or the operator a parked saga waits for) still acts on it.

Voiding makes the same row changes as ``void_authorization``: status ``voided`` with a
reason, the reservation of an ``approved`` one subtracted from its coverage, and the
transaction stamped with the saga id (``app.saga_id``) so that the audit trail's coverage
rows name the saga, as the handlers' are.

The batch runs at Serializable, like every plan step that moves money, with the plan
service's retry policy. Coverage rows and pre-authorizations are taken with ``FOR UPDATE
SKIP LOCKED``, so the worker never waits on a step (and cannot deadlock with
``create_claim``, which locks the coverage, then the pre-authorization); a concurrent
change it missed surfaces as a serialization failure and the batch is run again.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from journeys.plan.steps import LIVE_CLAIM, RESERVING, STAMP_SAGA, voiding
from saga import BatchResult, Connection, IsolationLevel, Job, JobContext, RetryPolicy, Row

# Under Serializable a sequential scan predicate-locks the whole table; the live
# pre-authorizations are read through plan_pre_authorization_appointment_id_key (partial:
# appointment_id IS NOT NULL AND status IN ('pending', 'approved') AND deleted_at IS NULL),
# whose predicate the WHERE clause repeats so that the planner may use it. Every
# pre-authorization a saga makes names its appointment (authorize_coverage requires one).
CLAIM_ORPHANS = f"""
    SELECT p.id, p.member_coverage_id, p.saga_id, p.expires_at,
           coalesce(s.status, a.status) AS saga_status
    FROM plan_journey.plan_pre_authorization AS p
    LEFT JOIN shared.saga_instance AS s ON s.id = p.saga_id
    LEFT JOIN shared.saga_instance_archive AS a ON a.id = p.saga_id
    WHERE p.appointment_id IS NOT NULL AND p.status IN ('pending', 'approved')
      AND p.deleted_at IS NULL
      AND NOT EXISTS (
          SELECT FROM plan_journey.plan_claim AS c
          WHERE c.pre_authorization_id = p.id AND c.{LIVE_CLAIM}
      )
      AND (
          coalesce(s.status, a.status) = 'compensated'
          OR (p.expires_at < now()
              AND coalesce(s.status, a.status, 'completed') IN ('completed', 'aborted'))
      )
    ORDER BY p.created_at, p.id
    LIMIT $1
    FOR UPDATE OF p SKIP LOCKED
"""

LOCK_COVERAGES = """
    SELECT id FROM plan_journey.plan_member_coverage
    WHERE id = ANY($1::uuid[])
    ORDER BY id
    FOR UPDATE SKIP LOCKED
"""

# journeys.plan.steps.VOID's row changes, for pre-authorizations named by id rather than
# by saga (one may have no saga left to name it).
VOID_ORPHANS = voiding(
    f"""
    SELECT p.id, {RESERVING} AS reserving, r.reason
    FROM plan_journey.plan_pre_authorization AS p
    JOIN unnest($1::uuid[], $2::text[]) AS r(id, reason) ON r.id = p.id
    WHERE p.status IN ('approved', 'pending') AND p.deleted_at IS NULL
    """
)


def _reason(saga_id: uuid.UUID | None, saga_status: str | None, expires_at: datetime | None) -> str:
    # Only a compensated saga's pre-authorization is voided without having expired.
    if saga_status == "compensated" or expires_at is None:
        return f"anulada: a saga {saga_id} foi compensada"
    if saga_id is None:
        whose = "sem saga"
    elif saga_status is None:
        whose = f"a saga {saga_id} não existe mais"
    else:
        whose = f"a saga {saga_id} terminou"
    return f"anulada: expirou em {expires_at.isoformat()} sem uso ({whose})"


async def _void(conn: Connection, orphans: Sequence[Row]) -> int:
    coverages = await conn.fetch(
        LOCK_COVERAGES, list({row["member_coverage_id"] for row in orphans})
    )
    locked = {row["id"] for row in coverages}
    # One statement per saga, each stamped with its saga id: the audit trigger takes a
    # coverage row's saga from app.saga_id (coverages have no saga column).
    by_saga: dict[uuid.UUID | None, list[Row]] = {}
    for row in orphans:
        # A pre-authorization whose coverage a step holds waits for the next run.
        if row["member_coverage_id"] in locked:
            by_saga.setdefault(row["saga_id"], []).append(row)
    voided = 0
    for saga_id, rows in by_saga.items():
        await conn.execute(STAMP_SAGA, "" if saga_id is None else str(saga_id))
        voided += len(
            await conn.fetch(
                VOID_ORPHANS,
                [row["id"] for row in rows],
                [_reason(saga_id, row["saga_status"], row["expires_at"]) for row in rows],
            )
        )
    return voided


def _plan_retry() -> RetryPolicy | None:
    # Imported here: the plan service imports this module for its maintenance jobs.
    from journeys.plan.service import SERVICE

    return SERVICE.retry


async def void_orphan_authorizations(ctx: JobContext) -> BatchResult:
    async def batch(conn: Connection) -> tuple[int, int]:
        orphans = await conn.fetch(CLAIM_ORPHANS, ctx.batch)
        if not orphans:
            return 0, 0
        return len(orphans), await _void(conn, orphans)

    claimed, voided = await ctx.database.run_driver(
        batch,
        isolation=IsolationLevel.SERIALIZABLE,
        retry=_plan_retry(),
        name=f"worker.{VOID_ORPHAN_AUTHORIZATIONS.name}",
    )
    return BatchResult(claimed, {"voided": voided})


VOID_ORPHAN_AUTHORIZATIONS = Job(
    name="void_orphan_authorizations",
    run=void_orphan_authorizations,
    interval=60.0,
    batch=100,
    description=(
        "pre-authorizations of compensated sagas, and expired unused ones of completed or "
        "vanished sagas: voided and their reservation given back, as void_authorization does"
    ),
)
