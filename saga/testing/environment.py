"""A saga's whole run in one process: real handlers, real PostgreSQL, no broker, no waiting.

::

    async with SagaTestEnvironment(settings=settings, database_url=url,
                                   journeys=[care, plan, gamification],
                                   faults=Faults().refuse("authorize_coverage")) as env:
        outcome = await env.run(BOOK_APPOINTMENT, payload)
        assert outcome.status is SagaStatus.COMPENSATED
        timeline = await env.timeline(outcome.id)

The coordinator and each journey's participant are the production classes (each
participant on its journey's own database role); only the transport is the environment's
:class:`~saga.testing.switchboard.Switchboard`, and the clock a
:class:`~saga.testing.clock.TestClock`. :meth:`SagaTestEnvironment.run` delivers messages
one at a time until nothing is left to deliver; then, as the worker and the outbox relay
would, it times out overdue steps and sends what the relay would sweep; when even that
finds nothing, it moves the clock to the next moment something comes due (a backoff, a
deadline, a late message) and goes on, until the saga has ended, or waits for a signal.

A saga waiting for a signal settles as waiting: the clock is not moved to the wait's
timeout, since nothing but the test can say whether the signal comes. Send it with
:meth:`SagaTestEnvironment.signal` and settle again, or :meth:`~SagaTestEnvironment.advance`
the clock past the wait's timeout and settle again to see it time out::

    waiting = await env.run(REVIEWED_CLAIM, payload)        # status WAITING
    await env.signal(waiting.id, "claim_reviewed", {"approved": True}, actor="ana")
    done = await env.settle(waiting.id)                     # status COMPLETED

A handler that raises an error the test did not plan is raised into the test (with
``fail_fast``, the default) instead of turning into an *error* reply and a retry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from saga.coordinator import Coordinator, SagaSummary, SignalReceipt
from saga.definition import SagaDefinition
from saga.errors import MessageRejected, SagaError, SagaTimeout, StepRefused
from saga.machine import SagaStatus
from saga.outbox import OutboxPublisher, RelaySettings
from saga.participant import Handler, Participant, StepContext
from saga.participant.journey import JourneyService
from saga.settings import Settings
from saga.store.database import Database
from saga.store.driver import DriverConnection
from saga.testing.clock import TestClock
from saga.testing.faults import Faults, InjectedFault
from saga.testing.switchboard import Switchboard
from saga.timeline import Timeline, load_timeline
from saga.worker.definitions import DefinitionCache
from saga.worker.job import JobContext
from saga.worker.jobs.timeouts import SAGA_DEADLINES, STEP_TIMEOUTS

T = TypeVar("T")

# The relay only sweeps when the environment asks (its own loop would wake on real time).
# Its grace is shorter than any step's timeout (5 s by default), so that a reply a crash
# left in an outbox is swept before the step times out and is sent again.
RELAY = RelaySettings(interval=3600.0, grace=1.0)
# A moment added when the clock jumps to a deadline: the database's now() has moved on a
# little since it was read, and a deadline is due only once it is reached.
_PAST = 0.001


class SagaStuck(SagaError):
    """The saga has not ended, and nothing queued, sleeping or due would ever move it."""


class SagaTestEnvironment:
    """Runs sagas against real handlers and PostgreSQL on a test clock; see the module."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        *,
        settings: Settings,
        database_url: str,
        journeys: Sequence[JourneyService],
        faults: Faults | None = None,
        definitions: Sequence[SagaDefinition] = (),
        fail_fast: bool = True,
    ) -> None:
        if not journeys:
            raise ValueError("a SagaTestEnvironment needs at least one journey service")
        self.settings = settings
        self.faults = faults or Faults()
        self.clock = TestClock()
        self.switchboard = Switchboard(
            self.clock, self.faults, max_message_bytes=settings.kafka_max_message_bytes
        )
        self.fail_fast = fail_fast
        self.unexpected: list[BaseException] = []
        """Errors raised by handlers that no fault planned (raised into the test too)."""
        self.dead_letters: list[tuple[str, MessageRejected]] = []
        """Messages a handler rejected, with the topic they were on."""
        self.database = Database.from_settings(
            settings, url=database_url, application_name="saga-testing", clock=self.clock
        )
        self.coordinator = Coordinator(
            settings=settings, database=self.database, relay=RELAY, transport=self.switchboard
        )
        self._journeys = list(journeys)
        self._definitions = list(definitions)
        self._database_url = database_url
        self._databases = [self.database]
        self.participants: dict[str, Participant] = {}
        self._routes: dict[str, Callable[[Any], Awaitable[None]]] = {
            self.coordinator.topics.replies: self.coordinator.replies.handle
        }
        self._jobs: JobContext | None = None

    async def __aenter__(self) -> SagaTestEnvironment:
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _open(self) -> None:
        for journey in self._journeys:
            database = Database.from_settings(
                self.settings,
                url=journey.database_url(self._database_url),
                application_name=f"saga-testing-{journey.name}",
                clock=self.clock,
            )
            self._databases.append(database)
            faulty = dataclasses.replace(
                journey,
                handlers={a: self._guarded(a, h) for a, h in journey.handlers.items()},
            )
            participant = faulty.participant(
                settings=self.settings, database=database, relay=RELAY, transport=self.switchboard
            )
            self.participants[journey.name] = participant
            self._routes[participant.topics.commands(journey.name)] = participant.handle
        for definition in [*self._definitions, *(d for j in self._journeys for d in j.definitions)]:
            await self.coordinator.register(definition)
        runtime = self.coordinator.runtime
        self._jobs = JobContext(
            settings=self.settings,
            database=self.database,
            journeys=self._journeys,
            batch=100,
            publisher=runtime.publisher,
            producer=runtime.producer,
            definitions=DefinitionCache(self.database),
        )

    async def close(self) -> None:
        """Stop the services and close every pool (also on the way out of ``async with``)."""
        for participant in self.participants.values():
            await participant.stop()
        await self.coordinator.stop()
        for database in self._databases:
            await database.dispose()

    # -- running sagas -------------------------------------------------------------------

    async def start(
        self,
        definition: SagaDefinition | str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> uuid.UUID:
        """Start a saga without running it (see :meth:`settle`)."""
        return await self.coordinator.start(definition, payload, idempotency_key=idempotency_key)

    async def run(
        self,
        definition: SagaDefinition | str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        within: float = 3600.0,
    ) -> SagaSummary:
        """Start a saga and drive it to its end (completed, compensated or parked) or to a
        wait for a signal, moving the test clock as far as needed but no further than
        ``within`` seconds; see :meth:`settle`."""
        saga_id = await self.start(definition, payload, idempotency_key=idempotency_key)
        return await self.settle(saga_id, within=within)

    async def settle(self, saga_id: uuid.UUID, *, within: float = 3600.0) -> SagaSummary:
        """Drive the environment until ``saga_id`` has ended (completed, compensated,
        parked, aborted) or waits for a signal; its summary. Raises
        :class:`~saga.errors.SagaTimeout` past ``within`` seconds on the test clock and
        :class:`SagaStuck` when nothing could ever move it.

        A saga waiting for a signal settles as waiting (status ``WAITING``) without the
        clock being moved to the wait's timeout: send the signal with :meth:`signal` (or
        ``coordinator.signal``) and settle again, or :meth:`advance` the clock past the
        wait's timeout and settle again to see it time out (compensated, or going on
        without the signal when the wait says ``on_timeout=continue``)."""
        limit = self.clock.now + within
        while True:
            await self.deliver()
            summary = await self.coordinator.status(saga_id)
            # A wait whose timeout the clock has passed is the worker's to end: sweep once.
            if summary.status is SagaStatus.WAITING and await self.sweep():
                continue
            if not summary.status.in_flight:
                for publisher in self._publishers():
                    await publisher.flush()  # the outboxes then show what was sent
                return summary
            if await self.sweep():
                continue
            wait = await self._next_due()
            if wait is None:
                raise SagaStuck(
                    f"saga {saga_id} is {summary.status.value} and nothing queued, sleeping "
                    "or due would move it"
                )
            if self.clock.now + wait > limit:
                raise SagaTimeout(
                    f"saga {saga_id} still {summary.status.value} after {within:g} s "
                    "on the test clock"
                )
            await self.advance(wait + _PAST)

    async def signal(
        self,
        saga_id: uuid.UUID,
        event: str,
        payload: Mapping[str, Any] | None = None,
        *,
        signal_id: str | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> SignalReceipt:
        """Send the signal ``event`` to the saga, as ``saga signal`` does
        (:meth:`Coordinator.signal <saga.coordinator.Coordinator.signal>`; a new
        ``signal_id`` unless given). What it sends next is delivered by :meth:`settle`."""
        return await self.coordinator.signal(
            saga_id,
            event,
            payload,
            signal_id=signal_id if signal_id is not None else str(uuid.uuid4()),
            actor=actor,
            reason=reason,
        )

    async def advance(self, seconds: float) -> None:
        """Move the test clock; sends whose backoff is now over go out, and every message
        now due is delivered."""
        woken = self.clock.advance(seconds)
        if woken:
            await asyncio.wait(woken, timeout=30)
        await self.deliver()

    async def deliver(self) -> int:
        """Deliver every message due now, and those their handling sends; how many."""
        delivered = 0
        while True:
            queued = self.switchboard.take_due()
            if queued is None:
                await _let_tasks_run()
                queued = self.switchboard.take_due()
                if queued is None:
                    return delivered
            delivered += 1
            incoming = self.switchboard.incoming(queued)
            route = self._routes.get(incoming.topic)
            if route is None:
                continue  # dead letters, or a journey this environment does not run
            try:
                await route(incoming)
            except MessageRejected as rejected:
                self.dead_letters.append((incoming.topic, rejected))
                if self.fail_fast:
                    raise
            self._raise_unexpected()

    async def sweep(self) -> bool:
        """What the worker and the relays would do now: time out overdue steps, expire
        sagas past their deadline, send outbox rows left unsent. True if anything moved."""
        assert self._jobs is not None, "use the environment inside `async with`"
        sent = self.switchboard.sent
        moved = 0
        for job in (STEP_TIMEOUTS, SAGA_DEADLINES):
            moved += (await job.run(self._jobs)).claimed
        for publisher in self._publishers():
            await publisher.flush()  # what was sent is not swept again
            moved += await publisher.sweep()
        await _let_tasks_run()
        return moved > 0 or self.switchboard.sent > sent

    # -- looking at the outcome ----------------------------------------------------------

    async def timeline(self, saga_id: uuid.UUID) -> Timeline:
        """The saga's timeline as an operator sees it (times on the test clock)."""
        return await self.database.run_driver(
            lambda conn: load_timeline(conn, saga_id), transaction=False
        )

    async def query(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Rows of ``sql`` as dicts, read as the database owner."""

        async def fetch(conn: DriverConnection) -> list[dict[str, Any]]:
            return [dict(row) for row in await conn.fetch(sql, *args)]

        return await self.database.run_driver(fetch, transaction=False)

    async def scene(self, build: Callable[[DriverConnection], Awaitable[T]]) -> T:
        """Run ``build`` in one transaction as the database owner (to set up a test)."""
        return await self.database.run_driver(build)

    # -- internals -----------------------------------------------------------------------

    def _guarded(self, action: str, handler: Handler) -> Handler:
        async def run(step: StepContext) -> Mapping[str, Any] | None:
            self.faults.check_handler(action)
            try:
                return await handler(step)
            except (StepRefused, InjectedFault):
                raise
            except SagaError as exc:
                if not exc.retriable:  # conflicts are re-run by the participant
                    self.unexpected.append(exc)
                raise
            except Exception as exc:
                self.unexpected.append(exc)
                raise

        return run

    def _raise_unexpected(self) -> None:
        if self.fail_fast and self.unexpected:
            raise self.unexpected[0]

    def _publishers(self) -> list[OutboxPublisher]:
        runtimes = [self.coordinator.runtime, *(p.runtime for p in self.participants.values())]
        return [runtime.publisher for runtime in runtimes]

    async def _next_due(self) -> float | None:
        """Seconds until something comes due: a queued message, a sleeping send, a step
        or saga deadline, an unsent outbox row the relay would sweep."""
        candidates = [self.switchboard.next_due(), self.clock.next_wake()]
        tables = [p.table for p in self._publishers()]
        candidates.append(
            await self.database.run_driver(
                lambda conn: _next_deadline(conn, self.clock.skew, tables, RELAY.grace),
                transaction=False,
            )
        )
        found = [c for c in candidates if c is not None]
        return min(found) if found else None


async def _next_deadline(
    conn: DriverConnection, skew: float, outboxes: Sequence[str], grace: float
) -> float | None:
    unsent = " UNION ALL ".join(
        f"SELECT min(available_at) + make_interval(secs => $2) FROM {table} "
        "WHERE published_at IS NULL"
        for table in outboxes
    )
    value = await conn.fetchval(
        f"""
        SELECT EXTRACT(EPOCH FROM min(due) - (now() + make_interval(secs => $1)))::float8
        FROM (
            SELECT min(step_deadline) FROM shared.saga_instance
            WHERE status IN ('running', 'compensating')
            UNION ALL
            SELECT min(deadline) FROM shared.saga_instance WHERE status = 'running'
            UNION ALL {unsent}
        ) AS d (due)
        """,
        skew,
        grace,
    )
    return None if value is None else max(float(value), 0.0)


async def _let_tasks_run() -> None:
    """Give tasks the handlers started (a send after a backoff) their first steps."""
    for _ in range(3):
        await asyncio.sleep(0)
