"""Units of work that share one transaction, each in a savepoint: a participant's commands
that arrive together commit together (:meth:`saga.store.database.Database.run_shared`).

A command's transaction is a few short statements (the inbox check, the step's write, the
inbox row and the reply) between a ``BEGIN`` and a ``COMMIT``; under load the commit and
its round trips cost more than the statements. Here the units in hand at one moment run
one after another on one connection, each between ``SAVEPOINT`` and ``RELEASE``, and one
``COMMIT`` ends them all. A unit that raises is rolled back to its savepoint, leaving
nothing, and only its caller hears of it. Nobody hears of success before the commit.

A few transactions run side by side (``flushers``), so one slow unit holds back only the
units that share its transaction, and a lone unit never waits for company. A unit may
wait for a lock only briefly (``LOCK_WAIT_MS``): one that would wait longer (a slot
another saga is booking) is rolled back to its savepoint and runs alone afterwards, so a
lock held elsewhere never stalls a whole group.

Serializable units share transactions too. A serialization failure in one of them dooms
the whole transaction (PostgreSQL fails every later statement and the commit), so the
group is rolled back at once and every unit in it is tried again in a transaction of its
own (:meth:`~saga.store.database.Database.run_shared`): the conflict is paid once by the
group, and afterwards by nobody else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import structlog

from saga.definition import IsolationLevel
from saga.errors import SagaError
from saga.store.driver import DriverConnection, set_local_timeout
from saga.store.errors import is_conflict, sqlstate_of, translate
from saga.store.group_commit import GroupCommit

if TYPE_CHECKING:
    from saga.store.database import Database, DriverUnitOfWork

__all__ = ["SharedTransactions"]

T = TypeVar("T")

log = structlog.get_logger("saga.store")

# Transactions run at once per isolation level: enough that a slow unit (a lock wait, a
# step that sleeps) does not stall the others, few enough that units find company.
FLUSHERS = 4
# The most units one transaction takes: its locks are held until the last one is done.
MAX_UNITS = 64
# How long a unit in a shared transaction may wait for a lock (milliseconds). Longer, and
# it would hold back every unit after it: it leaves the group and runs alone.
LOCK_WAIT_MS = 50


class _WouldWait(Exception):
    """A unit gave up a lock wait in a shared transaction: its caller runs it alone."""


@dataclass(frozen=True, slots=True)
class _Unit:
    run: DriverUnitOfWork[Any]
    statement_timeout_ms: int | None


class SharedTransactions:
    """The units of one isolation level on one database, grouped into transactions."""

    def __init__(self, database: Database, isolation: IsolationLevel) -> None:
        self._database = database
        self._isolation = isolation
        self._group: GroupCommit[_Unit, Any] = GroupCommit(
            self._run_together, max_batch=MAX_UNITS, flushers=FLUSHERS
        )
        self.ran_alone = 0
        # Attempts of Serializable units in transactions of their own, after a conflict
        # in a shared one (counted by Database.run_shared).
        self.ran_alone_after_conflict = 0

    @property
    def transactions(self) -> int:
        return self._group.batches

    @property
    def units(self) -> int:
        return self._group.writes

    async def run(self, unit: DriverUnitOfWork[T], statement_timeout_ms: int | None) -> T:
        """Run ``unit`` once in the next shared transaction; its result after the commit.
        A unit that would wait for a lock runs alone instead, in a transaction of its
        own, where it waits without holding back anyone else's."""
        try:
            result: T = await self._group.submit(_Unit(unit, statement_timeout_ms))
        except _WouldWait:
            self.ran_alone += 1
            return await self._database.attempt_driver(
                unit,
                isolation=self._isolation,
                statement_timeout_ms=statement_timeout_ms,
                transaction=True,
            )
        return result

    async def _run_together(self, units: Sequence[_Unit]) -> list[Any]:
        serializable = self._isolation is IsolationLevel.SERIALIZABLE

        async def together(conn: DriverConnection) -> list[Any]:
            outcomes: list[Any] = []
            for unit in units:
                await conn.execute(
                    f"SAVEPOINT unit; {_timeout(unit.statement_timeout_ms)}; "
                    f"SET LOCAL lock_timeout = {LOCK_WAIT_MS}"
                )
                try:
                    outcomes.append(await unit.run(conn))
                except Exception as exc:
                    if serializable and is_conflict(exc):
                        # PostgreSQL has doomed the whole transaction: every unit in
                        # it fails with the conflict and is tried again alone.
                        raise
                    # If the connection is gone this raises too, and the whole
                    # transaction fails: nothing of it committed.
                    await conn.execute("ROLLBACK TO SAVEPOINT unit")
                    outcomes.append(_WouldWait() if sqlstate_of(exc) == "55P03" else exc)
                else:
                    await conn.execute("RELEASE SAVEPOINT unit")
            return outcomes

        try:
            return await self._database.attempt_driver(
                together, isolation=self._isolation, statement_timeout_ms=None, transaction=True
            )
        except Exception as exc:
            if len(units) == 1 or _fails_alone_too(exc):
                raise  # each caller retries its own unit, or hears why it cannot
            # The commit itself was refused (a deferred constraint) for one unit's sake,
            # and nothing committed: each unit alone now, so only that one fails.
            log.warning("shared_transaction_split", units=len(units), error=str(exc))
        return [await self._alone(unit) for unit in units]

    async def _alone(self, unit: _Unit) -> Any:
        try:
            return await self._database.attempt_driver(
                unit.run,
                isolation=self._isolation,
                statement_timeout_ms=unit.statement_timeout_ms,
                transaction=True,
            )
        except Exception as exc:
            return exc


def _fails_alone_too(exc: Exception) -> bool:
    """A lost connection, an exhausted pool or a conflict: every unit would meet it alone
    as well, and each caller's retry policy deals with it. (The commit's own error comes
    from the driver untranslated.)"""
    if isinstance(exc, asyncpg.PostgresError):
        exc = translate(exc)
    return isinstance(exc, SagaError) and exc.retriable


def _timeout(milliseconds: int | None) -> str:
    # A unit's SET LOCAL outlives its savepoint's release: every unit sets its own.
    if milliseconds is None:
        return "SET LOCAL statement_timeout TO DEFAULT"
    return set_local_timeout(milliseconds)
