"""The participant runtime: a journey service's side of the protocol.

For each command on the journey's topic it runs ONE unit of work, at the step's isolation
level with the step's timeout as the statement timeout, that checks the inbox, runs the
handler and records the inbox row and the reply's outbox row; after the commit it
publishes the reply. A repeated command is answered from the inbox and never runs twice.
Unless ``PARTICIPANT_SHARED_TRANSACTIONS`` is off, commands handled at the same moment share a
transaction and its commit, each in a savepoint of its own
(:meth:`~saga.store.database.Database.run_shared`); a Serializable one that meets a
conflict there is tried again in a transaction of its own.

How each kind of end is answered:

- the handler returns: *succeeded* with its result (stored, published);
- the handler raises :class:`~saga.errors.StepRefused`: its writes are rolled back and
  *failed* with the reason is stored and published, in a second short transaction;
- serialization failures and deadlocks: the whole transaction is re-run with backoff;
- any other error: *error* is published but not stored (nothing was committed, so a
  retry of the same command may run it again); the coordinator decides whether to retry;
- the database is unreachable: the message is kept and retried by the consumer.

A compensation first bars the command it undoes: if that command never ran here, the
compensation has nothing to undo and a late delivery of it is refused.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from saga import metrics, tracing
from saga.definition import IsolationLevel
from saga.errors import (
    DatabaseUnavailable,
    MessageRejected,
    SagaError,
    StepRefused,
    UniqueViolation,
)
from saga.logging import saga_context
from saga.machine import Outcome, Phase
from saga.masking import summarize
from saga.messages import TRACEPARENT, Command, Reply, decode
from saga.outbox import OutboxPublisher
from saga.retry import RetryPolicy
from saga.store import inbox
from saga.store.connection import Connection
from saga.store.database import Database
from saga.store.driver import DriverConnection
from saga.store.inbox import InboxEntry, JourneyTables, ReplyRow
from saga.store.outbox import PendingMessage
from saga.transport.consumer import Incoming
from saga.transport.message import OutgoingMessage
from saga.transport.port import MessageSender

log = structlog.get_logger("saga.participant")

_REPLY_NAMESPACE = uuid.UUID("0b7f4a52-3c1e-4d7b-a0e6-5f2d8c9e1a34")
_NEVER_RAN = "compensated before it ran"


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a handler gets: the open transaction and the command it serves."""

    connection: Connection
    """The open transaction: the step's statements run in it, and it commits with the reply."""
    command: Command

    @property
    def saga_id(self) -> uuid.UUID:
        return self.command.saga_id

    @property
    def payload(self) -> dict[str, Any]:
        """The saga's input, as given to ``start``."""
        return self.command.payload

    @property
    def context(self) -> dict[str, Any]:
        """Every earlier step's result, merged."""
        return self.command.context

    @property
    def attempt(self) -> int:
        return self.command.attempt

    @property
    def phase(self) -> Phase:
        return self.command.phase


Handler = Callable[[StepContext], Awaitable[Mapping[str, Any] | None]]


@dataclass(slots=True)
class ParticipantStats:
    """What this process did with the commands it consumed. ``executed`` and
    ``by_action`` count handler runs, including ones a conflict rolled back and re-ran;
    the inbox, not these counters, is the record of effects."""

    executed: int = 0
    refused: int = 0
    errored: int = 0
    duplicates: int = 0
    nothing_to_undo: int = 0
    by_action: dict[str, int] = field(default_factory=dict)


class CommandProcessor:
    """Turns one command message into one transaction and one reply."""

    def __init__(
        self,
        *,
        journey: str,
        tables: JourneyTables,
        database: Database,
        producer: MessageSender,
        publisher: OutboxPublisher,
        handlers: Mapping[str, Handler],
        retry: RetryPolicy,
        shared_transactions: bool = False,
    ) -> None:
        self.journey = journey
        self._shared = shared_transactions
        self.tables = tables
        self._database = database
        self._producer = producer
        self._publisher = publisher
        self._handlers = handlers
        self._retry = retry
        self.stats = ParticipantStats()

    async def handle(self, incoming: Incoming) -> None:
        message = decode(incoming.value)
        if not isinstance(message, Command):
            raise MessageRejected(f"a {message.kind} on the command topic {incoming.topic}")
        if message.journey != self.journey:
            raise MessageRejected(
                f"a command for journey {message.journey!r} reached {self.journey!r}"
            )
        with saga_context(
            saga_id=message.saga_id,
            definition=message.definition,
            step=message.step_name,
            journey=message.journey,
            phase=message.phase.value,
            attempt=message.attempt,
            traceparent=message.trace.get(TRACEPARENT),
            action=message.action,
        ):
            # Payload and context hold the patient's data: the masking processor hides
            # the fields declared sensitive.
            log.debug("command_received", payload=message.payload, context=message.context)
            with tracing.handling(
                f"handle {self.journey}.{message.action}", message, action=message.action
            ):
                await self._serve(message)

    async def _serve(self, command: Command) -> None:
        handler = self._handlers.get(command.action)
        if handler is None:
            reason = f"journey {self.journey!r} has no action {command.action!r}"
            tracing.note(outcome=Outcome.FAILED.value)
            # Answer, so the saga compensates now instead of waiting out its timeout,
            # and dead-letter the command for whoever deployed the definition.
            await self._send_now(command, self._reply(command, Outcome.FAILED, reason=reason))
            raise MessageRejected(reason)
        # A Serializable transaction that reads the inbox takes a predicate lock on the
        # index page it reads, and every other command's inbox row is inserted into
        # those few pages: they would all conflict with each other. So such a command
        # looks for its stored reply first, on its own; inside the transaction the
        # inbox's unique key still stops a concurrent twin (see the collision below).
        checked = command.isolation is IsolationLevel.SERIALIZABLE
        if checked:
            stored = await self._stored(command)
            if stored is not None:
                self.stats.duplicates += 1
                log.info("duplicate_command_answered_from_inbox", outcome=stored.outcome.value)
                tracing.note(outcome="duplicate")
                await self._send_now(command, stored)
                return
        # Serialization and deadlock retries travel in the reply to the step log, where
        # they are counted per step for alerting.
        retries: Counter[str] = Counter()
        started = time.perf_counter()
        # With shared transactions on, commands of one isolation level share them, each in
        # a savepoint; a Serializable one that meets a conflict there is tried again in a
        # transaction of its own (Database.run_shared).
        run = self._database.run_shared if self._shared else self._database.run_driver
        try:
            reply, fresh = await run(
                lambda conn: self._run(conn, command, handler, checked=checked, retries=retries),
                isolation=command.isolation,
                statement_timeout_ms=command.timeout_ms,
                retry=self._retry,
                name=f"{self.journey}.{command.action}",
                tally=retries,
            )
        except StepRefused as refusal:
            reply, fresh = await self._record_refusal(command, refusal.reason, retries)
        except DatabaseUnavailable:
            raise  # the consumer keeps the message and tries again
        except SagaError as exc:
            stored = await self._stored(command)
            if stored is not None:
                # A concurrent delivery of the same command (two members during a
                # rebalance) committed first and this run collided with it: its answer
                # stands.
                self.stats.duplicates += 1
                self._observe(command, started, "duplicate")
                await self._send_now(command, stored)
                return
            self.stats.errored += 1
            self._observe(command, started, Outcome.ERROR.value)
            # A driver's message may quote a value of the step's input.
            log.warning("step_errored", error=summarize(str(exc)), error_type=type(exc).__name__)
            await self._send_now(command, self._reply(command, Outcome.ERROR, reason=str(exc)))
            return
        except Exception as exc:
            self.stats.errored += 1
            self._observe(command, started, Outcome.ERROR.value)
            log.exception("step_handler_crashed")
            reason = f"{type(exc).__name__}: {exc}"
            await self._send_now(command, self._reply(command, Outcome.ERROR, reason=reason))
            return
        self._observe(command, started, reply.outcome.value if fresh is not None else "duplicate")
        if fresh is not None:
            log.info("step_answered", outcome=reply.outcome.value, reason=summarize(reply.reason))
            log.debug("step_result", result=reply.result)
            await self._publisher.publish([fresh])
        else:
            self.stats.duplicates += 1
            log.info("duplicate_command_answered_from_inbox", outcome=reply.outcome.value)
            await self._send_now(command, reply)

    def _observe(self, command: Command, started: float, outcome: str) -> None:
        """The local transaction's time, from the first attempt to the reply recorded."""
        tracing.note(outcome=outcome)
        metrics.HANDLER_SECONDS.labels(self.journey, command.action, outcome).observe(
            time.perf_counter() - started
        )

    async def _run(
        self,
        conn: DriverConnection,
        command: Command,
        handler: Handler,
        *,
        checked: bool,
        retries: Counter[str],
    ) -> tuple[Reply, PendingMessage | None]:
        if not checked:
            stored = await inbox.stored_reply(conn, self.tables, command.message_id)
            if stored is not None:
                return self._reply_from(command, stored), None
        if command.phase is Phase.COMPENSATE and command.undoes is not None:
            undone = await self._nothing_to_undo(conn, command, command.undoes)
            if undone is not None:
                self.stats.nothing_to_undo += 1
                return await self._record(
                    conn, command, Outcome.SUCCEEDED, result=undone, retries=retries
                )
        result = await handler(StepContext(conn, command))
        self.stats.executed += 1
        self.stats.by_action[command.action] = self.stats.by_action.get(command.action, 0) + 1
        return await self._record(
            conn, command, Outcome.SUCCEEDED, result=dict(result or {}), retries=retries
        )

    async def _nothing_to_undo(
        self, conn: DriverConnection, command: Command, undoes: uuid.UUID
    ) -> dict[str, Any] | None:
        """None when the command being undone committed effects here; else the result
        the compensation answers with, having barred that command from ever running."""
        barred = InboxEntry(
            undoes,
            command.saga_id,
            command.step_name,
            command.action,
            command.attempt,
            {"outcome": Outcome.FAILED.value, "result": {}, "reason": _NEVER_RAN},
        )
        if await inbox.bar(conn, self.tables, barred):
            return {"undone": False, "why": "the step never ran here"}
        executed = await inbox.stored_reply(conn, self.tables, undoes)
        if executed is not None and executed.get("outcome") == Outcome.SUCCEEDED.value:
            return None
        return {"undone": False, "why": "the step did not succeed here"}

    async def _record(
        self,
        conn: DriverConnection,
        command: Command,
        outcome: Outcome,
        *,
        result: Mapping[str, Any] | None = None,
        reason: str | None = None,
        retries: Mapping[str, int] | None = None,
    ) -> tuple[Reply, PendingMessage]:
        reply = self._reply(command, outcome, result=result, reason=reason, retries=retries)
        pending = _pending(reply, command.reply_to)
        entry = InboxEntry(
            command.message_id,
            command.saga_id,
            command.step_name,
            command.action,
            command.attempt,
            {"outcome": outcome.value, "result": reply.result, "reason": reason},
        )
        await inbox.record(
            conn,
            self.tables,
            entry,
            ReplyRow(
                pending.message_id, pending.topic, pending.key, pending.payload, pending.headers
            ),
            skew=self._database.clock.skew,
        )
        return reply, pending

    async def _record_refusal(
        self, command: Command, reason: str, retries: Counter[str]
    ) -> tuple[Reply, PendingMessage | None]:
        self.stats.refused += 1
        # The reason may quote the refused input (a diagnosis code, a reading).
        log.info("step_refused", reason=summarize(reason))

        async def unit(conn: DriverConnection) -> tuple[Reply, PendingMessage | None]:
            stored = await inbox.stored_reply(conn, self.tables, command.message_id)
            if stored is not None:
                return self._reply_from(command, stored), None
            return await self._record(conn, command, Outcome.FAILED, reason=reason, retries=retries)

        run = self._database.run_shared if self._shared else self._database.run_driver
        try:
            return await run(unit, retry=self._retry, name=f"{self.journey}.refusal", tally=retries)
        except UniqueViolation:
            # A duplicate delivery recorded its answer first: that answer stands.
            return await self._database.run_driver(unit, name=f"{self.journey}.refusal")

    async def _stored(self, command: Command) -> Reply | None:
        stored = await self._database.run_driver(
            lambda conn: inbox.stored_reply(conn, self.tables, command.message_id),
            transaction=False,
            name=f"{self.journey}.inbox",
        )
        return None if stored is None else self._reply_from(command, stored)

    def _reply(
        self,
        command: Command,
        outcome: Outcome,
        *,
        result: Mapping[str, Any] | None = None,
        reason: str | None = None,
        retries: Mapping[str, int] | None = None,
    ) -> Reply:
        return Reply(
            message_id=uuid.uuid5(_REPLY_NAMESPACE, f"{command.message_id}/{command.attempt}"),
            saga_id=command.saga_id,
            definition=command.definition,
            definition_version=command.definition_version,
            step_index=command.step_index,
            step_name=command.step_name,
            journey=self.journey,
            phase=command.phase,
            attempt=command.attempt,
            trace=command.trace,
            in_reply_to=command.message_id,
            outcome=outcome,
            result=dict(result or {}),
            reason=reason,
            transaction_retries=dict(retries or {}),
            branch=command.branch,
        )

    def _reply_from(self, command: Command, stored: Mapping[str, Any]) -> Reply:
        return self._reply(
            command,
            Outcome(stored["outcome"]),
            result=stored.get("result") or {},
            reason=stored.get("reason"),
        )

    async def _send_now(self, command: Command, reply: Reply) -> None:
        """Replies that were not stored go straight out; if one is lost the step times
        out and is sent again."""
        pending = _pending(reply, command.reply_to)
        await self._producer.send(
            OutgoingMessage(pending.topic, pending.key, pending.payload, pending.headers)
        )


def _pending(reply: Reply, topic: str) -> PendingMessage:
    # Serialising here, inside the transaction, makes a result that is not JSON fail the
    # step instead of failing after the commit.
    headers = {TRACEPARENT: reply.trace[TRACEPARENT]} if TRACEPARENT in reply.trace else {}
    return PendingMessage(reply.message_id, topic, reply.key, reply.to_bytes(), headers)
