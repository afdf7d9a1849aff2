"""Database faults: backends terminated under the engine, and SERIALIZABLE transactions
that make the participants' transactions conflict and re-run."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg

from benchmarks.reliability._kafka import log, pause
from benchmarks.reliability.kinds import BACKEND_TERMINATED, SERIALIZATION_CONFLICT
from journeys.invariants import LIVE_APPOINTMENT, UUID_PATTERN
from saga.settings import to_plain_url


@dataclass(frozen=True, slots=True)
class Backend:
    """A backend that was terminated, as pg_stat_activity showed it just before."""

    pid: int
    application_name: str
    state: str | None


class BackendTerminator:
    """Every ``every`` seconds on average, ``pg_terminate_backend`` one random backend
    connected to ``database`` whose application_name starts with ``application_prefix``
    (the engine's processes call themselves ``saga-coordinator``, ``saga-participant-
    <journey>``, ``saga-worker``). Busy or idle in a pool, whichever the draw picks: the
    engine must notice a dead pooled connection as well as one lost mid-transaction.
    ``injected["backend_terminated"]`` counts backends PostgreSQL agreed to terminate;
    ``terminated`` lists them. ``admin_url`` needs the right to terminate them (a
    superuser, or a member of pg_signal_backend); it may name any database.
    """

    def __init__(
        self,
        admin_url: str,
        database: str,
        *,
        draw: random.Random,
        every: float = 3.0,
        application_prefix: str = "saga-",
    ) -> None:
        self.admin_url = to_plain_url(admin_url)
        self.database = database
        self.every = every
        self.application_prefix = application_prefix
        self.injected: Counter[str] = Counter()
        self.terminated: list[Backend] = []
        self.last_at: float | None = None
        """time.monotonic() of the last fault injected."""
        self.draw = draw
        self._conn: asyncpg.Connection | None = None

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await _strike_until(
                stop, self.every, self.draw, self.terminate_one, self.close, "terminator"
            )
        finally:
            await self.close()

    async def terminate_one(self) -> Backend | None:
        """Terminate one matching backend, drawn at random; None when there was none
        (or it had gone by itself meanwhile)."""
        conn = await self._connection()
        rows = await conn.fetch(
            """
            SELECT pid, application_name, state FROM pg_stat_activity
            WHERE datname = $1 AND starts_with(application_name, $2)
              AND pid <> pg_backend_pid()
            ORDER BY pid
            """,
            self.database,
            self.application_prefix,
        )
        if not rows:
            return None
        row = self.draw.choice(rows)
        if not await conn.fetchval("SELECT pg_terminate_backend($1)", row["pid"]):
            return None
        backend = Backend(row["pid"], row["application_name"], row["state"])
        self.injected[BACKEND_TERMINATED] += 1
        self.last_at = time.monotonic()
        self.terminated.append(backend)
        return backend

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self.admin_url, server_settings={"application_name": "fault-terminator"}
            )
        return self._conn


def _payload_uuid(key: str) -> str:
    """A saga payload's value as a uuid, or NULL when it is not one (never a cast error)."""
    return (
        f"CASE WHEN s.payload ->> '{key}' ~* {UUID_PATTERN} THEN (s.payload ->> '{key}')::uuid END"
    )


# The rows in-flight sagas are about to touch: their members' active coverages (every
# saga's payload names its user) and the slots bookings hold.
_IN_FLIGHT = "s.status IN ('running', 'compensating')"
HOT_COVERAGES = f"""
    SELECT DISTINCT c.id FROM shared.saga_instance s
    JOIN plan_journey.plan_member_coverage c ON c.user_id = {_payload_uuid("user_id")}
    WHERE {_IN_FLIGHT} AND c.status = 'active' AND c.deleted_at IS NULL
    ORDER BY c.id
"""
HOT_SLOTS = f"""
    SELECT DISTINCT slot.id FROM shared.saga_instance s
    JOIN care_journey.care_slot slot ON slot.id = {_payload_uuid("slot_id")}
    WHERE {_IN_FLIGHT} AND s.definition_name = 'book_appointment'
    ORDER BY slot.id
"""

# Each target: what the steps read about the row, then a write that leaves every value
# as it was.
_TOUCH = {
    "coverage": [
        "SELECT annual_limit_cents, used_cents, reserved_cents "
        "FROM plan_journey.plan_member_coverage WHERE id = $1",
        "SELECT count(*), coalesce(sum(amount_cents), 0) FROM plan_journey.plan_pre_authorization "
        "WHERE member_coverage_id = $1 AND status = 'approved' AND deleted_at IS NULL",
        "UPDATE plan_journey.plan_member_coverage SET reserved_cents = reserved_cents "
        "WHERE id = $1",
    ],
    "slot": [
        "SELECT status FROM care_journey.care_slot WHERE id = $1",
        "SELECT count(*) FROM care_journey.care_appointment "
        f"WHERE slot_id = $1 AND status IN {LIVE_APPOINTMENT} AND deleted_at IS NULL",
        "UPDATE care_journey.care_slot SET status = status WHERE id = $1",
    ],
}
_HOT = {"coverage": HOT_COVERAGES, "slot": HOT_SLOTS}
_CONFLICTS = (asyncpg.exceptions.SerializationError, asyncpg.exceptions.DeadlockDetectedError)

STEP_LOG_RETRIES = """
    SELECT coalesce(sum(serialization_retries), 0) AS serialization,
           coalesce(sum(deadlock_retries), 0) AS deadlock
    FROM (
        SELECT serialization_retries, deadlock_retries FROM shared.saga_step_log
        UNION ALL
        SELECT serialization_retries, deadlock_retries FROM shared.saga_step_log_archive
    ) l
"""


class Contention:
    """SERIALIZABLE transactions on the rows the load's steps are about to write, so that
    the participants' own transactions fail with 40001 (or 40P01) and are re-run.

    Every ``every`` seconds on average it picks a hot row (see :data:`HOT_COVERAGES`
    and :data:`HOT_SLOTS`: the coverage of a member with a saga in flight, or a slot a
    booking in flight names), and in one SERIALIZABLE transaction reads what the steps
    read about it, rewrites it with its own values (``SET reserved_cents =
    reserved_cents``, ``SET status = status``), holds the row lock a random ``hold``
    (seconds, low and high) and commits. The plan steps on a coverage run SERIALIZABLE:
    one that took its snapshot before this commit and then locks or writes the row fails
    with 40001 ("could not serialize access due to concurrent update"), or is chosen as
    the victim of the read/write dependency on the pre-authorizations, and the
    participant re-runs it (saga.store.database). The care steps on a slot run READ
    COMMITTED: they wait for the lock and re-read the row, so slot contention shows as
    latency, not as retries.

    Why it is harmless: every value is written back unchanged, so a re-run step reads
    exactly what it would have read and decides the same (limits, reservations, a slot's
    status). What does change is bookkeeping no invariant reads: the row's
    ``updated_at`` and, for a coverage, an UPDATE row in ``plan_journey.plan_audit_log``
    with no saga id. A hold is kept well under the steps' statement timeouts, and a
    ``lock_timeout`` bounds the wait for a row a step holds. Its own transactions that
    lose a conflict are rolled back (counted in ``aborted`` by SQLSTATE, not injected).

    ``injected["serialization_conflict"]`` counts transactions that committed having
    touched a hot row (``touched`` splits them by target). :meth:`participant_retries`
    reads how often the participants re-ran a step's transaction, from the step log.
    """

    def __init__(
        self,
        database_url: str,
        *,
        draw: random.Random,
        every: float = 0.5,
        hold: tuple[float, float] = (0.05, 0.2),
        targets: Sequence[str] = ("coverage", "slot"),
        lock_timeout_ms: int = 2000,
    ) -> None:
        if not targets or set(targets) - set(_TOUCH):
            raise ValueError(f"targets must be among {sorted(_TOUCH)}")
        low, high = hold
        if not 0 <= low <= high:
            raise ValueError("hold must be (low, high) with 0 <= low <= high")
        self.database_url = to_plain_url(database_url)
        self.every = every
        self.hold = hold
        self.targets = list(targets)
        self.lock_timeout_ms = lock_timeout_ms
        self.injected: Counter[str] = Counter()
        self.touched: Counter[str] = Counter()
        self.aborted: Counter[str] = Counter()
        self.last_at: float | None = None
        self.draw = draw
        self._conn: asyncpg.Connection | None = None

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await _strike_until(
                stop, self.every, self.draw, self.contend_once, self.close, "contention"
            )
        finally:
            await self.close()

    async def contend_once(self) -> str | None:
        """One transaction on one hot row; the target it committed on, or None (no saga
        in flight, or this transaction lost a conflict itself)."""
        conn = await self._connection()
        target = self.draw.choice(self.targets)
        rows = await conn.fetch(_HOT[target])
        if not rows:
            return None
        row_id = self.draw.choice(rows)["id"]
        hold = self.draw.uniform(*self.hold)
        try:
            async with conn.transaction(isolation="serializable"):
                for statement in _TOUCH[target]:
                    status = await conn.execute(statement, row_id)
                await asyncio.sleep(hold)
        except _CONFLICTS as exc:
            self.aborted[exc.sqlstate] += 1
            return None
        except asyncpg.exceptions.LockNotAvailableError as exc:
            self.aborted[exc.sqlstate] += 1
            return None
        if status != "UPDATE 1":
            return None  # the row went meanwhile: nothing was touched
        self.injected[SERIALIZATION_CONFLICT] += 1
        self.last_at = time.monotonic()
        self.touched[target] += 1
        return target

    async def participant_retries(self) -> Counter[str]:
        """SQLSTATE → how often participants re-ran a step's transaction, as the replies
        told the step log (archived sagas included). Durable, unlike the processes'
        ``saga_db_transaction_retries_total``, which a killed process takes with it; a
        retry whose reply was lost is missing from both."""
        conn = await self._connection()
        row = await conn.fetchrow(STEP_LOG_RETRIES)
        assert row is not None
        return Counter({"40001": int(row["serialization"]), "40P01": int(row["deadlock"])})

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self.database_url,
                server_settings={
                    "application_name": "fault-contention",
                    "lock_timeout": str(self.lock_timeout_ms),
                },
            )
        return self._conn


async def _strike_until(
    stop: asyncio.Event,
    every: float,
    draw: random.Random,
    strike: Callable[[], Awaitable[object]],
    reset: Callable[[], Awaitable[None]],
    injector: str,
) -> None:
    """``strike()`` every ``every`` s (±50 %) until ``stop``; a database error is logged
    and the injector's connection dropped, to be opened again at the next strike (the
    faults it causes may well reach its own connection)."""
    while not await pause(stop, every * draw.uniform(0.5, 1.5)):
        try:
            await strike()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning(f"fault_{injector}_failed", reason=f"{type(exc).__name__}: {exc}")
            await reset()
