"""The coordinator: registers definitions, starts sagas, drives them from replies.

::

    async with Coordinator(settings=settings, database=database) as coordinator:
        await coordinator.register(BOOK_APPOINTMENT)
        saga_id = await coordinator.start(BOOK_APPOINTMENT, {"slot_id": ...},
                                          idempotency_key=request_id)
        outcome = await coordinator.wait(saga_id, timeout=30)

A process that only starts sagas uses it without :meth:`run`; coordinator processes call
:meth:`run` and share the reply topic's partitions as one consumer group. Everything a
coordinator needs to go on is in the database, so any member can finish any saga.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import structlog

from saga import metrics
from saga.coordinator.commands import build_command, log_rows, outbox_row
from saga.coordinator.replies import ReplyProcessor
from saga.definition import SagaDefinition, Step
from saga.errors import DefinitionError, InvalidPayload, SagaNotFound, SagaTimeout, UsageError
from saga.logging import saga_context
from saga.machine import SagaStatus, begin
from saga.messages import TRACEPARENT
from saga.outbox import RelaySettings
from saga.runtime import MessagingRuntime
from saga.settings import Settings
from saga.store.database import Database
from saga.store.outbox import PendingMessage
from saga.store.port import SagaLog
from saga.store.postgres_log import PostgresSagaLog
from saga.store.records import SagaSummary, StoredDefinition
from saga.transport import Topics
from saga.transport.port import Transport

log = structlog.get_logger("saga.coordinator")

COORDINATOR_OUTBOX = "shared.saga_outbox"


class Coordinator:
    def __init__(
        self,
        *,
        settings: Settings,
        database: Database,
        bootstrap_servers: str | None = None,
        group_id: str | None = None,
        name: str = "coordinator",
        max_concurrency: int = 128,
        relay: RelaySettings | None = None,
        transport: Transport | None = None,
        saga_log: SagaLog | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        # The relay and the publisher still use ``database`` (the coordinator's outbox).
        self.saga_log: SagaLog = saga_log or PostgresSagaLog(database)
        self.topics = Topics.from_settings(settings)
        self.group_id = group_id or f"{self.topics.prefix}.coordinator"
        self._max_concurrency = max_concurrency
        self._ids: dict[tuple[str, int], uuid.UUID] = {}
        self._definitions: dict[tuple[str, int], SagaDefinition] = {}
        self._finished: dict[uuid.UUID, asyncio.Event] = {}
        self._runtime = MessagingRuntime(
            name=name,
            settings=settings,
            database=database,
            bootstrap_servers=bootstrap_servers,
            outbox_table=COORDINATOR_OUTBOX,
            topics=self.topics,
            own_topics=[self.topics.replies],
            relay=relay,
            transport=transport,
        )
        self.replies = ReplyProcessor(
            saga_log=self.saga_log,
            publisher=self._runtime.publisher,
            topics=self.topics,
            definitions=self.definition,
            on_finished=self._notify_finished,
        )

    async def __aenter__(self) -> Coordinator:
        await self._runtime.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def runtime(self) -> MessagingRuntime:
        return self._runtime

    async def register(self, definition: SagaDefinition) -> None:
        """Check ``definition`` and store it; the same content again is a no-op, other
        content under a stored version raises :class:`~saga.errors.DefinitionConflict`."""
        if not isinstance(definition, SagaDefinition):
            raise UsageError(
                f"Coordinator.register takes a SagaDefinition, got {type(definition).__name__}"
            )
        definition.validate()
        _refuse_shapes(definition)
        stored = await self.saga_log.register_definition(definition)
        self._ids[definition.key] = stored.id
        self._definitions[definition.key] = definition
        log.info("definition_registered", definition=definition.name, version=definition.version)

    async def definition(self, name: str, version: int) -> SagaDefinition:
        """The stored definition (instances keep the version they started with)."""
        key = (name, version)
        if key not in self._definitions:
            stored = await self.saga_log.load_definition(name, version)
            self._ids[key] = stored.id
            self._definitions[key] = stored.definition
        return self._definitions[key]

    async def start(
        self,
        definition: SagaDefinition | str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> uuid.UUID:
        """Start an instance and return its id; a key used before returns the first id."""
        _check_payload(payload)
        definition = await self._resolve(definition)
        await self._runtime.start()
        saga_id = uuid.uuid4()
        transition = begin(definition)
        assert transition.dispatch is not None
        command = build_command(
            saga_id=saga_id,
            definition=definition,
            dispatch=transition.dispatch,
            payload=payload,
            context={},
            reply_to=self.topics.replies,
        )
        topic = self.topics.commands(command.journey)
        await self._runtime.ensure_topics([topic])
        outbox = outbox_row(command, topic, 0.0)
        if len(outbox.payload) > self.settings.kafka_max_message_bytes:
            raise InvalidPayload(
                f"the first command of {definition.name} would be {len(outbox.payload)} bytes, "
                f"over KAFKA_MAX_MESSAGE_BYTES={self.settings.kafka_max_message_bytes}"
            )
        rows = log_rows(
            saga_id, definition, transition.log, command=command, attempt_started_at=None
        )
        started = await self.saga_log.insert_start(
            saga_id=saga_id,
            definition=StoredDefinition(self._ids[definition.key], definition),
            payload=payload,
            idempotency_key=idempotency_key,
            log=rows,
            outbox=outbox,
        )
        if started != saga_id:
            log.info("saga_start_repeated", saga_id=str(started), idempotency_key=idempotency_key)
            return started
        metrics.SAGAS_STARTED.labels(definition.name).inc()
        with saga_context(
            saga_id=saga_id,
            definition=command.definition,
            step=command.step_name,
            journey=command.journey,
            phase=command.phase.value,
            attempt=command.attempt,
            traceparent=command.trace.get(TRACEPARENT),
        ):
            log.info("saga_started", version=definition.version, action=command.action)
            await self._runtime.publisher.publish(
                [
                    PendingMessage(
                        outbox.message_id, topic, outbox.key, outbox.payload, dict(outbox.headers)
                    )
                ]
            )
        return saga_id

    async def status(self, saga_id: uuid.UUID) -> SagaSummary:
        found = await self.saga_log.summary(saga_id)
        if found is None:
            raise SagaNotFound(f"no saga {saga_id}")
        return found

    async def wait(
        self,
        saga_id: uuid.UUID,
        *,
        timeout: float = 30.0,  # noqa: ASYNC109 - polls the database up to this deadline
        until_parked: bool = True,
    ) -> SagaSummary:
        """Wait until the saga is completed or compensated (or parked, unless
        ``until_parked`` is False) and return how it ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = self._finished.setdefault(saga_id, asyncio.Event())
        pause = 0.005
        try:
            while True:
                summary = await self.status(saga_id)
                if summary.status.finished or (
                    until_parked and summary.status is SagaStatus.PARKED
                ):
                    return summary
                left = deadline - loop.time()
                if left <= 0:
                    raise SagaTimeout(
                        f"saga {saga_id} still {summary.status.value} after {timeout} s"
                    )
                # Woken early when this process finishes the saga; else poll, since any
                # coordinator of the group may be the one that finishes it.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(pause, left))
                event.clear()
                pause = min(pause * 2, 0.2)
        finally:
            self._finished.pop(saga_id, None)

    async def run(self) -> None:
        """Consume replies and drive sagas until :meth:`stop`."""
        await self._runtime.consume(
            topic=self.topics.replies,
            group_id=self.group_id,
            handle=self.replies.handle,
            max_concurrency=self._max_concurrency,
        )

    async def stop(self) -> None:
        await self._runtime.stop()

    def _notify_finished(self, saga_id: uuid.UUID, status: SagaStatus) -> None:
        event = self._finished.get(saga_id)
        if event is not None:
            event.set()

    async def _resolve(self, definition: SagaDefinition | str) -> SagaDefinition:
        if isinstance(definition, SagaDefinition):
            if definition.key not in self._ids:
                await self.register(definition)
            return definition
        if not isinstance(definition, str):
            raise UsageError(
                "Coordinator.start takes a SagaDefinition or a registered definition's name, "
                f"got {type(definition).__name__}"
            )
        stored = await self.saga_log.load_definition(definition)
        if stored.definition.key not in self._ids:
            self._ids[stored.definition.key] = stored.id
            self._definitions[stored.definition.key] = stored.definition
        return stored.definition


def _refuse_shapes(definition: SagaDefinition) -> None:
    # The machine decides them (saga.machine), but the store, the outbox and the workers
    # do not carry them yet: better refused here than half run.
    if not definition.straight_line:
        shape = next(p for p in definition.positions if not isinstance(p, Step))
        raise DefinitionError(
            definition.name,
            "parallel groups, waits and child sagas are defined and decided by the state "
            "machine but not yet run by the coordinator",
            step=shape.name,
        )


def _check_payload(payload: Mapping[str, Any]) -> None:
    if not isinstance(payload, Mapping):
        raise InvalidPayload(f"a saga payload must be a mapping, got {type(payload).__name__}")
    try:
        json.dumps(dict(payload))
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"a saga payload must be JSON-serialisable: {exc}") from exc
