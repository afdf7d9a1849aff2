"""The care journey's background job: releasing holds that no saga will confirm.

A hold (a ``held`` appointment with ``hold_expires_at``, its slot ``held``) is normally
confirmed or released by its book_appointment saga. It outlives the saga when an operator
finished the saga by hand (skipped its compensation, or aborted it), or when the saga row
is gone (retention, or a hold made outside any saga); a late ``reserve_slot`` cannot make
one, since the compensation bars it. Such a hold blocks its slot for ever, so once it has
expired :data:`RELEASE_EXPIRED_HOLDS` releases it with the same row changes as the
``release_slot`` compensation: the appointment ``released`` with a reason and no
``hold_expires_at``, its slot ``open`` again unless the agenda blocked it meanwhile.

Holds of running, compensating or parked sagas are left alone: their saga (or the
operator a parked saga waits for) still acts on them, and ``confirm_appointment`` refuses
an expired hold by itself. A hold whose saga finished but which has not expired yet is left
too; the invariant check reports it until the worker releases it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from journeys.care.steps import releasing
from saga import BatchResult, Connection, Job, JobContext, Row

# The scan walks care_appointment_hold_expires_at_idx (hold_expires_at) WHERE status =
# 'held'. The saga's status is read, not locked: a finished saga never runs again, and a
# saga that is not found never will be (an instance is inserted before its first command).
CLAIM_EXPIRED_HOLDS = """
    SELECT a.id, a.slot_id, a.saga_id, s.status AS saga_status
    FROM care_journey.care_appointment AS a
    LEFT JOIN shared.saga_instance AS s ON s.id = a.saga_id
    WHERE a.status = 'held' AND a.hold_expires_at < now() AND a.deleted_at IS NULL
      AND (s.id IS NULL OR s.status IN ('completed', 'compensated', 'aborted'))
    ORDER BY a.hold_expires_at, a.id
    LIMIT $1
    FOR UPDATE OF a SKIP LOCKED
"""

# reserve_slot locks the slot before it inserts the appointment; the worker takes the
# slots in id order and skips any that is locked, so it never waits on a booking (nor a
# booking on it for long) and two workers cannot deadlock over slots.
LOCK_SLOTS = """
    SELECT id FROM care_journey.care_slot
    WHERE id = ANY($1::uuid[])
    ORDER BY id
    FOR UPDATE SKIP LOCKED
"""

# journeys.care.steps.RELEASE's row changes, for appointments named by id rather than by
# saga (a hold may have no saga left to name it).
RELEASE_HOLDS = releasing(
    """
    UPDATE care_journey.care_appointment AS a
    SET status = 'released', cancelled_reason = r.reason, hold_expires_at = NULL
    FROM unnest($1::uuid[], $2::text[]) AS r(id, reason)
    WHERE a.id = r.id AND a.status = 'held'
    RETURNING a.id, a.slot_id
    """
)


def _reason(saga_id: uuid.UUID | None, saga_status: str | None) -> str:
    if saga_id is None:
        return "reserva expirada: nenhuma saga a mantinha"
    if saga_status is None:
        return f"reserva expirada: a saga {saga_id} não existe mais"
    return f"reserva expirada: a saga {saga_id} terminou ({saga_status}) sem confirmá-la"


async def _release(conn: Connection, holds: Sequence[Row]) -> int:
    slots = {row["id"] for row in await conn.fetch(LOCK_SLOTS, [h["slot_id"] for h in holds])}
    # A hold whose slot another transaction holds stays claimed-but-untouched: the next
    # run takes it again.
    free = [h for h in holds if h["slot_id"] in slots]
    if not free:
        return 0
    released = await conn.fetch(
        RELEASE_HOLDS,
        [h["id"] for h in free],
        [_reason(h["saga_id"], h["saga_status"]) for h in free],
    )
    return len(released)


async def release_expired_holds(ctx: JobContext) -> BatchResult:
    async def batch(conn: Connection) -> tuple[int, int]:
        holds = await conn.fetch(CLAIM_EXPIRED_HOLDS, ctx.batch)
        if not holds:
            return 0, 0
        return len(holds), await _release(conn, holds)

    claimed, released = await ctx.database.run_driver(
        batch, name=f"worker.{RELEASE_EXPIRED_HOLDS.name}"
    )
    return BatchResult(claimed, {"released": released})


RELEASE_EXPIRED_HOLDS = Job(
    name="release_expired_holds",
    run=release_expired_holds,
    interval=30.0,
    batch=100,
    description=(
        "expired holds of finished or vanished book_appointment sagas: the appointment "
        "released and its slot reopened, as the release_slot compensation does"
    ),
)
