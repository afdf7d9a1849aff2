"""A journey service's participant: register handlers, then run.

::

    participant = Participant("care", schema="care_journey", settings=settings,
                              database=database)

    @participant.action("reserve_slot")
    async def reserve_slot(step: StepContext) -> dict[str, Any]:
        row = await step.connection.fetchrow("INSERT ... RETURNING id", ...)
        return {"appointment_id": str(row["id"])}

    await participant.run()
"""

from __future__ import annotations

import re
from collections.abc import Callable

from saga.errors import HandlerConflict, HandlerError
from saga.outbox import RelaySettings
from saga.participant.runtime import CommandProcessor, Handler, ParticipantStats
from saga.retry import RetryPolicy
from saga.runtime import MessagingRuntime
from saga.settings import Settings
from saga.store.database import Database, retry_policy_from
from saga.store.inbox import JourneyTables
from saga.transport import Incoming, Topics
from saga.transport.port import Transport

_ACTION = re.compile(r"^[a-z][a-z0-9_.-]{0,99}$")


class Participant:
    """Runs a journey's step handlers for every saga that sends it commands."""

    def __init__(
        self,
        journey: str,
        *,
        schema: str,
        settings: Settings,
        database: Database,
        table_prefix: str | None = None,
        bootstrap_servers: str | None = None,
        group_id: str | None = None,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 64,
        relay: RelaySettings | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.journey = journey
        self.tables = JourneyTables.of(schema, table_prefix or journey)
        self.topics = Topics.from_settings(settings)
        self.group_id = group_id or f"{self.topics.prefix}.{journey}"
        self._handlers: dict[str, Handler] = {}
        self._max_concurrency = max_concurrency
        self._runtime = MessagingRuntime(
            name=f"participant-{journey}",
            settings=settings,
            database=database,
            bootstrap_servers=bootstrap_servers,
            outbox_table=self.tables.outbox,
            topics=self.topics,
            own_topics=[self.topics.commands(journey), self.topics.replies],
            relay=relay,
            transport=transport,
        )
        self._processor = CommandProcessor(
            journey=journey,
            tables=self.tables,
            database=database,
            producer=self._runtime.producer,
            publisher=self._runtime.publisher,
            handlers=self._handlers,
            retry=retry or retry_policy_from(settings),
            shared_transactions=settings.participant_shared_transactions,
        )

    def register(self, action: str, handler: Handler) -> None:
        """Run ``handler`` for commands naming ``action`` (a step's action or its
        compensation)."""
        if not _ACTION.match(action):
            raise HandlerError(
                f"journey {self.journey!r}: an action name must be a lower-case identifier "
                f"(letters, digits, '_', '.', '-'), got {action!r}"
            )
        if not callable(handler):
            raise HandlerError(
                f"journey {self.journey!r}: the handler of {action!r} must be an async "
                f"function of a StepContext, got {type(handler).__name__}"
            )
        if action in self._handlers:
            raise HandlerConflict(f"journey {self.journey!r} already has a handler for {action!r}")
        self._handlers[action] = handler

    def action(self, name: str) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`register`."""

        def decorate(handler: Handler) -> Handler:
            self.register(name, handler)
            return handler

        return decorate

    @property
    def actions(self) -> frozenset[str]:
        return frozenset(self._handlers)

    @property
    def stats(self) -> ParticipantStats:
        return self._processor.stats

    @property
    def runtime(self) -> MessagingRuntime:
        return self._runtime

    async def handle(self, incoming: Incoming) -> None:
        """Serve one command message as :meth:`run` does for each it consumes."""
        await self._runtime.start()
        await self._processor.handle(incoming)

    async def run(self) -> None:
        """Consume the journey's commands until :meth:`stop` is called."""
        await self._runtime.consume(
            topic=self.topics.commands(self.journey),
            group_id=self.group_id,
            handle=self._processor.handle,
            max_concurrency=self._max_concurrency,
        )

    async def stop(self) -> None:
        await self._runtime.stop()
