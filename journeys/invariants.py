"""The invariants every test suite, the reliability suite and the benchmarks check after a
workload of the cross-journey sagas (DESIGN.md, "Invariants every test suite and
benchmark can check"; the effects each step leaves are those of the handlers' contract).

:func:`check_invariants` reads the database in one REPEATABLE READ, read-only snapshot
with a handful of set-based queries (no query per saga: it stays fast at 10,000 sagas)
and returns an :class:`InvariantReport`; ``report.raise_if_violated()`` turns it into an
assertion. It checks:

1. *terminal*: every saga checked is completed, compensated, aborted by an operator (who
   took it over, so it is not checked further), or parked with a reason;
   running or compensating is "left running"; parked is a violation when not allowed.
   Waiting for a signal is "left waiting" unless allowed (a workload that sends every
   review, or lets every wait time out, ends with none waiting); allowed or not, a wait
   with no deadline, or one past its deadline by more than ``overdue_grace`` seconds, has
   no one driving it.
2. *effects*: a completed saga's effects exist exactly once, a compensated saga leaves
   none (per definition; parked and unknown definitions are not effect-checked). The
   shapes change nothing there: a compensated booking's parallel group leaves neither
   the hold nor the authorization. Besides, a book_appointment v2 completed under the
   appointment id its payload chose; a submit_claim v2 that completed had its review
   approved when it needed one, and never completed one the auditor rejected.
3. *global*, over the whole database whichever sagas were checked: XP equals the ledger,
   no provider double-booked and no slot booked twice, no hold left behind by a finished
   saga, and every coverage's ``used_cents``/``reserved_cents`` agree with its claims and
   pre-authorizations and stay within its limit.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from saga import Connection, Database, IsolationLevel, SagaStatus

MAX_MESSAGE_LINES = 50

FINISHED = (SagaStatus.COMPLETED.value, SagaStatus.COMPENSATED.value)

# Appointments that occupy their provider's time and their slot (the care migration's
# LIVE_APPOINTMENT), and those that are the confirmed result of a booking.
LIVE_APPOINTMENT = "('held', 'confirmed', 'completed', 'billed')"
BOOKED_APPOINTMENT = "('confirmed', 'completed', 'billed')"

# A payload value as a uuid, or NULL when it is not one: a bad payload must be reported,
# not abort the whole check with a cast error. (PostgreSQL 15 has no pg_input_is_valid.)
UUID_PATTERN = "'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'"


def _payload_uuid(key: str) -> str:
    return (
        f"CASE WHEN s.payload ->> '{key}' ~* {UUID_PATTERN} THEN (s.payload ->> '{key}')::uuid END"
    )


def _payload_int(key: str) -> str:
    return (
        f"CASE WHEN jsonb_typeof(s.payload -> '{key}') = 'number' "
        f"THEN (s.payload ->> '{key}')::numeric END"
    )


# "<found> ..., expected [exactly|at most] <wanted>" and "ledger nets <found> points, the
# payload awards / its grant is worth / the goal rewards <wanted>": the two shapes of a
# completed saga's effect count that is off.
_COUNT_OFF = re.compile(r"^(-?\d+) .*expected (?:exactly |at most )?(-?\d+)$")
_LEDGER_OFF = re.compile(r"^ledger nets (-?\d+) points, .* (-?\d+)$")


def effect_problem_kind(violation: str) -> str | None:
    """What an ``[effects]`` violation says happened to the effects, for reports that
    count them (None for the other invariants):

    - ``lost``: a completed saga has fewer of an effect than it made;
    - ``duplicated``: it has more (a step's effect applied twice);
    - ``not undone``: a compensated saga left an effect behind;
    - ``wrong``: an effect exists once but is not the one the saga asked for.
    """
    if not violation.startswith("[effects] "):
        return None
    head, _, detail = violation.partition("): ")
    if head.endswith("(compensated"):
        return "not undone"
    found = _COUNT_OFF.match(detail) or _LEDGER_OFF.match(detail)
    if found is None:
        return "wrong"
    return "lost" if int(found[1]) < int(found[2]) else "duplicated"


class InvariantViolation(AssertionError):
    """Raised by :meth:`InvariantReport.raise_if_violated`, listing every violation."""


@dataclass(frozen=True)
class InvariantReport:
    sagas_by_status: dict[str, int]
    """How many of the sagas checked are in each status (every status listed)."""
    parked: list[tuple[uuid.UUID, str]]
    """Each parked saga checked and its error (the operator's reason to look)."""
    violations: list[str]
    """Each names its invariant in brackets, the saga or row, and what was found."""

    @property
    def ok(self) -> bool:
        return not self.violations

    def effect_problems(self) -> Counter[str]:
        """The ``[effects]`` violations by what went wrong (:func:`effect_problem_kind`)."""
        return Counter(
            kind for line in self.violations if (kind := effect_problem_kind(line)) is not None
        )

    def describe(self) -> str:
        lines = self.violations[:MAX_MESSAGE_LINES]
        text = f"{len(self.violations)} invariant violation(s):\n" + "\n".join(
            f"  - {line}" for line in lines
        )
        if len(self.violations) > MAX_MESSAGE_LINES:
            text += f"\n  ... and {len(self.violations) - MAX_MESSAGE_LINES} more"
        return text

    def raise_if_violated(self) -> None:
        if self.violations:
            raise InvariantViolation(self.describe())


CHECK_TIMEOUT_MS = 10 * 60 * 1000


async def check_invariants(
    database: Database,
    *,
    saga_ids: Collection[uuid.UUID] | None = None,
    allow_parked: bool = True,
    allow_waiting: bool = False,
    overdue_grace: float = 60.0,
) -> InvariantReport:
    """Check the invariants for ``saga_ids`` (every saga when None) and the whole
    database's global ones, all in one snapshot. Reads only."""
    if overdue_grace < 0:
        raise ValueError(f"overdue_grace must be >= 0 seconds, got {overdue_grace!r}")
    ids = None if saga_ids is None else list(dict.fromkeys(saga_ids))

    async def unit(conn: Connection) -> InvariantReport:
        # Nothing here writes; saying so lets PostgreSQL refuse any mistake that would.
        await conn.execute("SET TRANSACTION READ ONLY")
        return await _check(
            conn,
            ids,
            allow_parked=allow_parked,
            allow_waiting=allow_waiting,
            overdue_grace=overdue_grace,
        )

    return await database.run_driver(
        unit,
        isolation=IsolationLevel.REPEATABLE_READ,
        # A check over a long run's whole log reads every saga's effects: minutes, not the
        # few seconds a service's statement is allowed.
        statement_timeout_ms=CHECK_TIMEOUT_MS,
        name="check_invariants",
    )


async def _check(
    conn: Connection,
    ids: list[uuid.UUID] | None,
    *,
    allow_parked: bool,
    allow_waiting: bool,
    overdue_grace: float,
) -> InvariantReport:
    # The sagas checked: a filter on shared.saga_instance aliased ``s``; $1 when given.
    scope = "TRUE" if ids is None else "s.id = ANY($1::uuid[])"
    args: tuple[Any, ...] = () if ids is None else (ids,)

    by_status = {status.value: 0 for status in SagaStatus}
    for row in await conn.fetch(
        f"SELECT s.status, count(*) AS n FROM shared.saga_instance s WHERE {scope} "
        "GROUP BY s.status",
        *args,
    ):
        by_status[row["status"]] = row["n"]

    violations: list[str] = []
    parked: list[tuple[uuid.UUID, str]] = []
    if ids is not None:
        violations += await _missing_sagas(conn, ids)
    for row in await conn.fetch(
        "SELECT s.id, s.definition_name, s.status, s.current_step, s.error, "
        "s.shape_state ->> 'waiting_for' AS waiting_for, s.step_deadline, "
        "s.step_deadline < now() - make_interval(secs => "
        f"${len(args) + 1}::double precision) AS overdue "
        f"FROM shared.saga_instance s WHERE {scope} "
        "AND s.status NOT IN ('completed', 'compensated', 'aborted') ORDER BY s.created_at, s.id",
        *args,
        overdue_grace,
    ):
        saga = f"saga {row['id']} ({row['definition_name']})"
        error = row["error"] or ""
        if row["status"] == SagaStatus.WAITING:
            violations += _waiting_violation(saga, row, allow_waiting=allow_waiting)
            continue
        if row["status"] != SagaStatus.PARKED:
            violations.append(
                f"[terminal] {saga} left {row['status']} at step {row['current_step']}"
            )
            continue
        parked.append((row["id"], error))
        if not error.strip():
            violations.append(f"[terminal] {saga} parked without a reason")
        elif not allow_parked:
            violations.append(f"[terminal] {saga} parked: {error}")

    for row in await conn.fetch(EFFECTS.replace("{scope}", scope), *args):
        saga = f"{row['definition_name']} saga {row['id']} ({row['status']})"
        violations += [f"[effects] {saga}: {problem}" for problem in row["problems"]]

    violations += await _global_violations(conn)
    return InvariantReport(by_status, parked, violations)


def _waiting_violation(saga: str, row: Any, *, allow_waiting: bool) -> list[str]:
    event = row["waiting_for"] or "its signal"
    if row["step_deadline"] is None:
        return [f"[terminal] {saga} waits for {event} with no deadline: no one drives it"]
    if row["overdue"]:
        return [
            f"[terminal] {saga} waits for {event} past its deadline "
            f"{row['step_deadline'].isoformat()}: the timeout worker has not ended it"
        ]
    if allow_waiting:
        return []
    return [f"[terminal] {saga} left waiting for {event} at step {row['current_step']}"]


async def _missing_sagas(conn: Connection, ids: Sequence[uuid.UUID]) -> list[str]:
    rows = await conn.fetch(
        """
        SELECT u.id FROM unnest($1::uuid[]) AS u(id)
        WHERE NOT EXISTS (SELECT FROM shared.saga_instance s WHERE s.id = u.id)
        """,
        list(ids),
    )
    return [f"[terminal] saga {row['id']} was asked for but does not exist" for row in rows]


# The saga's ledger: the net of its entries, and its awards still standing (a positive
# entry no other entry reverses). reverses_entry_id is unique, so the join adds no rows.
LEDGER = """
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(e.points), 0) AS net,
               count(*) FILTER (WHERE e.points > 0 AND r.id IS NULL) AS awards
        FROM gamification.gamification_points_ledger e
        LEFT JOIN gamification.gamification_points_ledger r ON r.reverses_entry_id = e.id
        WHERE e.saga_id = s.id
    ) l"""

# One row per finished saga with something wrong: the list of what. Each definition's
# part reads its effect rows by saga_id (every effect row records the saga that made it).
EFFECTS = f"""
WITH checked AS (
    SELECT s.id, s.definition_name, s.status, s.payload, s.context
    FROM shared.saga_instance s
    WHERE {{scope}} AND s.status IN ('completed', 'compensated')
),
book_appointment AS (
    SELECT s.id, s.definition_name, s.status, array_remove(ARRAY[
        CASE WHEN s.status = 'completed' AND a.booked <> 1 THEN format(
            '%s live confirmed/completed/billed appointments (%s), expected exactly 1',
            a.booked, coalesce(a.booked_ids, 'none')) END,
        CASE WHEN s.status = 'completed' AND p.approved <> 1 THEN format(
            '%s approved pre-authorizations (%s), expected exactly 1',
            p.approved, coalesce(p.approved_ids, 'none')) END,
        CASE WHEN s.status = 'completed' AND a.booked = 1 AND p.approved = 1
                  AND p.appointment_id IS DISTINCT FROM a.appointment_id THEN format(
            'pre-authorization %s is for appointment %s, not the saga''s %s',
            p.approved_ids, p.appointment_id, a.appointment_id) END,
        CASE WHEN s.status = 'completed' AND pl.appointment_id IS NOT NULL AND a.booked = 1
                  AND a.appointment_id IS DISTINCT FROM pl.appointment_id THEN format(
            'booked appointment %s, not the %s its payload chose',
            a.appointment_id, pl.appointment_id) END,
        CASE WHEN s.status = 'completed' AND pl.points IS NULL THEN
            'payload has no numeric points' END,
        CASE WHEN s.status = 'completed' AND l.net <> pl.points THEN format(
            'ledger nets %s points, the payload awards %s', l.net, pl.points) END,
        CASE WHEN s.status = 'completed' AND l.awards <> (pl.points > 0)::int THEN format(
            '%s un-reversed awards in the ledger, expected %s',
            l.awards, (pl.points > 0)::int) END,
        CASE WHEN s.status = 'compensated' AND a.live > 0 THEN format(
            '%s live appointments left (%s)', a.live, a.live_ids) END,
        CASE WHEN s.status = 'compensated' AND p.standing > 0 THEN format(
            '%s approved/pending pre-authorizations left (%s)', p.standing, p.standing_ids) END,
        CASE WHEN s.status = 'compensated' AND l.net <> 0 THEN format(
            'ledger nets %s points, expected 0', l.net) END
    ], NULL) AS problems
    FROM checked s
    CROSS JOIN LATERAL (
        SELECT {_payload_int("points")} AS points,
               {_payload_uuid("appointment_id")} AS appointment_id
    ) pl
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE status IN {BOOKED_APPOINTMENT}) AS booked,
               string_agg(id::text, ', ') FILTER (WHERE status IN {BOOKED_APPOINTMENT})
                   AS booked_ids,
               min(id::text) FILTER (WHERE status IN {BOOKED_APPOINTMENT})::uuid
                   AS appointment_id,
               count(*) FILTER (WHERE status IN {LIVE_APPOINTMENT}) AS live,
               string_agg(id::text || ' ' || status, ', ')
                   FILTER (WHERE status IN {LIVE_APPOINTMENT}) AS live_ids
        FROM care_journey.care_appointment
        WHERE saga_id = s.id AND deleted_at IS NULL
    ) a
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE status = 'approved') AS approved,
               string_agg(id::text, ', ') FILTER (WHERE status = 'approved') AS approved_ids,
               min(appointment_id::text) FILTER (WHERE status = 'approved')::uuid
                   AS appointment_id,
               count(*) FILTER (WHERE status IN ('approved', 'pending')) AS standing,
               string_agg(id::text || ' ' || status, ', ')
                   FILTER (WHERE status IN ('approved', 'pending')) AS standing_ids
        FROM plan_journey.plan_pre_authorization
        WHERE saga_id = s.id AND deleted_at IS NULL
    ) p
    {LEDGER}
    WHERE s.definition_name = 'book_appointment'
),
submit_claim AS (
    SELECT s.id, s.definition_name, s.status, array_remove(ARRAY[
        CASE WHEN s.status = 'completed' AND c.approved <> 1 THEN format(
            '%s approved/paid claims (%s), expected exactly 1',
            c.approved, coalesce(c.approved_ids, 'none')) END,
        CASE WHEN s.status = 'completed' AND c.approved = 1
                  AND c.appointment_id IS DISTINCT FROM pl.appointment_id THEN format(
            'claim %s is for appointment %s, the payload''s is %s',
            c.approved_ids, c.appointment_id, pl.appointment_id) END,
        CASE WHEN s.status = 'completed' AND pl.appointment_id IS NULL THEN
            'payload has no appointment_id uuid' END,
        CASE WHEN s.status = 'completed' AND pl.appointment_id IS NOT NULL
                  AND ap.id IS NULL THEN format(
            'the payload''s appointment %s does not exist', pl.appointment_id) END,
        CASE WHEN s.status = 'completed' AND ap.status <> 'billed' THEN format(
            'the payload''s appointment %s is %s, not billed', ap.id, ap.status) END,
        CASE WHEN s.status = 'completed' AND s.context -> 'review' ->> 'approved' = 'false'
            THEN 'completed though the plan auditor rejected it' END,
        CASE WHEN s.status = 'completed' AND s.context ->> 'needs_review' = 'true'
                  AND s.context -> 'review' ->> 'approved' IS DISTINCT FROM 'true'
            THEN 'completed above the review threshold without an approving review' END,
        CASE WHEN s.status = 'completed' AND g.live > 1 THEN format(
            '%s live achievement grants, expected at most 1', g.live) END,
        CASE WHEN s.status = 'completed' AND l.net <> g.reward THEN format(
            'ledger nets %s points, its achievement grant is worth %s', l.net, g.reward) END,
        CASE WHEN s.status = 'compensated' AND c.uncancelled > 0 THEN format(
            '%s claims not cancelled (%s)', c.uncancelled, c.uncancelled_ids) END,
        CASE WHEN s.status = 'compensated' AND g.live > 0 THEN format(
            '%s live achievement grants left (%s)', g.live, g.live_ids) END,
        CASE WHEN s.status = 'compensated' AND l.net <> 0 THEN format(
            'ledger nets %s points, expected 0', l.net) END
    ], NULL) AS problems
    FROM checked s
    CROSS JOIN LATERAL (SELECT {_payload_uuid("appointment_id")} AS appointment_id) pl
    LEFT JOIN care_journey.care_appointment ap
        ON ap.id = pl.appointment_id AND ap.deleted_at IS NULL
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE status IN ('approved', 'paid')) AS approved,
               string_agg(id::text, ', ') FILTER (WHERE status IN ('approved', 'paid'))
                   AS approved_ids,
               min(appointment_id::text) FILTER (WHERE status IN ('approved', 'paid'))::uuid
                   AS appointment_id,
               count(*) FILTER (WHERE status <> 'cancelled') AS uncancelled,
               string_agg(id::text || ' ' || status, ', ')
                   FILTER (WHERE status <> 'cancelled') AS uncancelled_ids
        FROM plan_journey.plan_claim
        WHERE saga_id = s.id AND deleted_at IS NULL
    ) c
    CROSS JOIN LATERAL (
        SELECT count(*) AS live,
               coalesce(sum(ach.points_reward), 0) AS reward,
               string_agg(ua.id::text, ', ') AS live_ids
        FROM gamification.gamification_user_achievement ua
        JOIN gamification.gamification_achievement ach ON ach.id = ua.achievement_id
        WHERE ua.saga_id = s.id AND ua.revoked_at IS NULL AND ua.deleted_at IS NULL
    ) g
    {LEDGER}
    WHERE s.definition_name = 'submit_claim'
),
complete_health_goal AS (
    SELECT s.id, s.definition_name, s.status, array_remove(ARRAY[
        CASE WHEN s.status = 'completed' AND pl.goal_id IS NULL THEN
            'payload has no goal_id uuid' END,
        CASE WHEN s.status = 'completed' AND pl.goal_id IS NOT NULL
                  AND go.id IS NULL THEN format(
            'the payload''s goal %s does not exist', pl.goal_id) END,
        CASE WHEN s.status = 'completed' AND go.id IS NOT NULL AND (go.status <> 'completed'
                  OR go.saga_id IS DISTINCT FROM s.id) THEN format(
            'the payload''s goal %s is %s (saga %s), not completed by this saga',
            go.id, go.status, coalesce(go.saga_id::text, 'none')) END,
        CASE WHEN s.status = 'completed' AND w.applied <> 1 THEN format(
            '%s applied wellness credits (%s), expected exactly 1',
            w.applied, coalesce(w.applied_ids, 'none')) END,
        CASE WHEN s.status = 'completed' AND w.applied = 1
                  AND w.source_goal_id IS DISTINCT FROM pl.goal_id THEN format(
            'wellness credit %s is for goal %s, the payload''s is %s',
            w.applied_ids, w.source_goal_id, pl.goal_id) END,
        CASE WHEN s.status = 'completed' AND l.net <> go.points_reward THEN format(
            'ledger nets %s points, the goal rewards %s', l.net, go.points_reward) END,
        CASE WHEN s.status = 'completed' AND l.awards <> (go.points_reward > 0)::int
            THEN format('%s un-reversed awards in the ledger, expected %s',
                        l.awards, (go.points_reward > 0)::int) END,
        CASE WHEN s.status = 'compensated' AND cg.completed > 0 THEN format(
            '%s goals left completed by it (%s)', cg.completed, cg.completed_ids) END,
        CASE WHEN s.status = 'compensated' AND w.applied > 0 THEN format(
            '%s applied wellness credits left (%s)', w.applied, w.applied_ids) END,
        CASE WHEN s.status = 'compensated' AND l.net <> 0 THEN format(
            'ledger nets %s points, expected 0', l.net) END
    ], NULL) AS problems
    FROM checked s
    CROSS JOIN LATERAL (SELECT {_payload_uuid("goal_id")} AS goal_id) pl
    LEFT JOIN health_journey.health_goal go ON go.id = pl.goal_id AND go.deleted_at IS NULL
    CROSS JOIN LATERAL (
        SELECT count(*) AS completed, string_agg(id::text, ', ') AS completed_ids
        FROM health_journey.health_goal
        WHERE saga_id = s.id AND status = 'completed' AND deleted_at IS NULL
    ) cg
    CROSS JOIN LATERAL (
        SELECT count(*) AS applied, string_agg(id::text, ', ') AS applied_ids,
               min(source_goal_id::text)::uuid AS source_goal_id
        FROM (
            -- v1 applies the credit itself; v2's child grant_wellness_credit does: the
            -- credit's effects are the child's, and the parent answers for them. A join
            -- (not IN) keeps both lookups on the saga_id index at any scale.
            SELECT s.id AS saga_id
            UNION ALL
            SELECT c.id FROM shared.saga_instance c WHERE c.parent_id = s.id
        ) owner
        JOIN plan_journey.plan_wellness_credit ON plan_wellness_credit.saga_id = owner.saga_id
        WHERE status = 'applied' AND deleted_at IS NULL
    ) w
    {LEDGER}
    WHERE s.definition_name = 'complete_health_goal'
),
grant_wellness_credit AS (
    SELECT s.id, s.definition_name, s.status, array_remove(ARRAY[
        CASE WHEN s.status = 'completed' AND w.applied <> 1 THEN format(
            '%s applied wellness credits (%s), expected exactly 1',
            w.applied, coalesce(w.applied_ids, 'none')) END,
        CASE WHEN s.status = 'completed' AND w.applied = 1
                  AND w.source_goal_id IS DISTINCT FROM pl.goal_id THEN format(
            'wellness credit %s is for goal %s, the payload''s is %s',
            w.applied_ids, w.source_goal_id, pl.goal_id) END,
        CASE WHEN s.status = 'compensated' AND w.applied > 0 THEN format(
            '%s applied wellness credits left (%s)', w.applied, w.applied_ids) END
    ], NULL) AS problems
    FROM checked s
    CROSS JOIN LATERAL (SELECT {_payload_uuid("goal_id")} AS goal_id) pl
    CROSS JOIN LATERAL (
        SELECT count(*) AS applied, string_agg(id::text, ', ') AS applied_ids,
               min(source_goal_id::text)::uuid AS source_goal_id
        FROM plan_journey.plan_wellness_credit
        WHERE saga_id = s.id AND status = 'applied' AND deleted_at IS NULL
    ) w
    WHERE s.definition_name = 'grant_wellness_credit'
)
SELECT * FROM (
    SELECT * FROM book_appointment
    UNION ALL SELECT * FROM submit_claim
    UNION ALL SELECT * FROM complete_health_goal
    UNION ALL SELECT * FROM grant_wellness_credit
) found
WHERE cardinality(problems) > 0
ORDER BY definition_name, id
"""

XP = """
SELECT p.id, p.user_id, p.xp, coalesce(l.total, 0) AS ledger
FROM gamification.gamification_profile p
LEFT JOIN (
    SELECT profile_id, sum(points)::bigint AS total
    FROM gamification.gamification_points_ledger GROUP BY profile_id
) l ON l.profile_id = p.id
WHERE p.xp <> coalesce(l.total, 0)
ORDER BY p.id
"""

# Sorted by provider and start, an appointment overlaps an earlier one exactly when some
# earlier one ends after it starts: a window's running max finds them in one pass (a
# self-join would be quadratic in a provider's appointments). The partner is looked up
# only for the few it flags.
DOUBLE_BOOKINGS = f"""
WITH live AS (
    SELECT id, provider_id, starts_at, ends_at,
           max(ends_at) OVER (
               PARTITION BY provider_id ORDER BY starts_at, id
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
           ) AS earlier_end
    FROM care_journey.care_appointment
    WHERE status IN {LIVE_APPOINTMENT} AND deleted_at IS NULL
)
SELECT a.id, a.provider_id, a.starts_at, a.ends_at,
       o.id AS other_id, o.starts_at AS other_starts_at, o.ends_at AS other_ends_at
FROM live a
CROSS JOIN LATERAL (
    SELECT o.id, o.starts_at, o.ends_at
    FROM care_journey.care_appointment o
    WHERE o.provider_id = a.provider_id AND o.id <> a.id
      AND o.status IN {LIVE_APPOINTMENT} AND o.deleted_at IS NULL
      AND o.starts_at <= a.starts_at AND o.ends_at > a.starts_at
    ORDER BY o.starts_at, o.id
    LIMIT 1
) o
WHERE a.earlier_end > a.starts_at
ORDER BY a.provider_id, a.starts_at, a.id
"""

SLOTS_BOOKED_TWICE = f"""
SELECT slot_id, string_agg(id::text || ' ' || status, ', ' ORDER BY id) AS appointments
FROM care_journey.care_appointment
WHERE status IN {LIVE_APPOINTMENT} AND deleted_at IS NULL
GROUP BY slot_id HAVING count(*) > 1
ORDER BY slot_id
"""

# A hold whose saga finished was left behind by it. A hold with no saga (or whose saga is
# gone) is the hold-expiry and cleanup workers' business, not a saga's.
HOLDS_LEFT = """
SELECT a.id, a.saga_id, si.definition_name, si.status, a.hold_expires_at
FROM care_journey.care_appointment a
JOIN shared.saga_instance si ON si.id = a.saga_id
WHERE a.status = 'held' AND a.deleted_at IS NULL
  AND si.status IN ('completed', 'compensated')
ORDER BY a.id
"""

COVERAGES = """
WITH used AS (
    SELECT member_coverage_id, sum(approved_cents)::bigint AS total
    FROM plan_journey.plan_claim
    WHERE status IN ('approved', 'paid') AND deleted_at IS NULL
    GROUP BY member_coverage_id
),
reserved AS (
    SELECT pa.member_coverage_id, sum(pa.amount_cents)::bigint AS total
    FROM plan_journey.plan_pre_authorization pa
    WHERE pa.status = 'approved' AND pa.deleted_at IS NULL
      AND NOT EXISTS (
          SELECT FROM plan_journey.plan_claim c
          WHERE c.pre_authorization_id = pa.id
            AND c.status NOT IN ('cancelled', 'rejected') AND c.deleted_at IS NULL
      )
    GROUP BY pa.member_coverage_id
)
SELECT c.id, c.policy_number, c.annual_limit_cents, c.used_cents, c.reserved_cents,
       coalesce(u.total, 0) AS claims_cents, coalesce(r.total, 0) AS authorized_cents
FROM plan_journey.plan_member_coverage c
LEFT JOIN used u ON u.member_coverage_id = c.id
LEFT JOIN reserved r ON r.member_coverage_id = c.id
WHERE c.used_cents + c.reserved_cents > c.annual_limit_cents
   OR c.used_cents <> coalesce(u.total, 0)
   OR c.reserved_cents <> coalesce(r.total, 0)
ORDER BY c.id
"""


async def _global_violations(conn: Connection) -> list[str]:
    violations = [
        f"[xp] profile {r['id']} (user {r['user_id']}) has xp {r['xp']}, "
        f"its ledger sums to {r['ledger']}"
        for r in await conn.fetch(XP)
    ]
    violations += [
        f"[double-booking] provider {r['provider_id']}: appointment {r['id']} "
        f"({r['starts_at'].isoformat()}..{r['ends_at'].isoformat()}) overlaps "
        f"{r['other_id']} ({r['other_starts_at'].isoformat()}..{r['other_ends_at'].isoformat()})"
        for r in await conn.fetch(DOUBLE_BOOKINGS)
    ]
    violations += [
        f"[slot] slot {r['slot_id']} has several live appointments: {r['appointments']}"
        for r in await conn.fetch(SLOTS_BOOKED_TWICE)
    ]
    violations += [
        f"[hold] appointment {r['id']} is still held (until {r['hold_expires_at'].isoformat()}) "
        f"though its {r['definition_name']} saga {r['saga_id']} is {r['status']}"
        for r in await conn.fetch(HOLDS_LEFT)
    ]
    for r in await conn.fetch(COVERAGES):
        coverage = f"[coverage] coverage {r['id']} ({r['policy_number']})"
        if r["used_cents"] + r["reserved_cents"] > r["annual_limit_cents"]:
            violations.append(
                f"{coverage}: used {r['used_cents']} + reserved {r['reserved_cents']} "
                f"exceeds the limit {r['annual_limit_cents']}"
            )
        if r["used_cents"] != r["claims_cents"]:
            violations.append(
                f"{coverage}: used_cents is {r['used_cents']}, its approved/paid claims "
                f"sum to {r['claims_cents']}"
            )
        if r["reserved_cents"] != r["authorized_cents"]:
            violations.append(
                f"{coverage}: reserved_cents is {r['reserved_cents']}, its unclaimed approved "
                f"pre-authorizations sum to {r['authorized_cents']}"
            )
    return violations
