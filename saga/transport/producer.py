"""Sending messages and waiting for the broker to have them.

A send only counts once the broker acknowledged it (``acks="all"``): the callers record
"sent" in the database after it, and a crash in between just sends again (consumers are
idempotent). Idempotence is off because the test broker (Tansu) mishandles it; duplicates
it would have prevented are absorbed by the idempotent consumers anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, UnknownError

from saga.errors import BrokerUnavailable, ConfigurationError, MessageRejected
from saga.settings import Settings
from saga.transport.message import OutgoingMessage

__all__ = ["OutgoingMessage", "Producer"]

_Translated = BrokerUnavailable | MessageRejected

# Pauses before sending again what the broker refused with UNKNOWN_SERVER_ERROR (-1): about
# 1.5 s in all, enough for a broker that came back empty to have the topic made again.
_UNKNOWN_ERROR_PAUSES = (0.1, 0.2, 0.4, 0.8)


class Producer:
    """A started-once, stopped-once Kafka producer that speaks the engine's errors."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str,
        max_message_bytes: int,
        linger_ms: int = 0,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.client_id = client_id
        self.max_message_bytes = max_message_bytes
        self.linger_ms = linger_ms
        # aiokafka binds its client to the running loop, so it is made in start().
        self._producer: Any = None
        self._stopped = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        bootstrap_servers: str | None = None,
        client_id: str | None = None,
    ) -> Producer:
        """``bootstrap_servers`` wins over the setting; the embedded broker passes its own."""
        servers = bootstrap_servers or settings.kafka_bootstrap_servers
        if not servers:
            raise ConfigurationError(
                "no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS or pass bootstrap_servers "
                "(the embedded broker is only started by the demo and the tests)"
            )
        return cls(
            servers,
            client_id=client_id or settings.kafka_client_id,
            max_message_bytes=settings.kafka_max_message_bytes,
        )

    async def start(self) -> None:
        if self._producer is not None or self._stopped:
            raise ConfigurationError("a Producer is started once: make a new one")
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=False,
            max_request_size=self.max_message_bytes,
            linger_ms=self.linger_ms,
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise BrokerUnavailable(
                f"cannot connect to Kafka at {self.bootstrap_servers}: {exc}"
            ) from exc
        self._producer = producer

    async def stop(self) -> None:
        """Wait for messages already handed over, then close. Safe to call twice."""
        self._stopped = True
        if self._producer is not None:
            await self._producer.stop()

    async def __aenter__(self) -> Producer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def send(self, message: OutgoingMessage) -> None:
        """Return once the broker has acknowledged ``message``.

        Raises :class:`BrokerUnavailable` when it did not, and :class:`MessageRejected`
        when the message is larger than the limit (sending it again cannot help).
        """
        (outcome,) = await self.send_many([message])
        if outcome is not None:
            raise outcome

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        """Hand every message to the producer before waiting for any acknowledgement, so a
        batch costs about one round trip, not one per message.

        Returns, in order, ``None`` for each acknowledged message and the error (as
        :meth:`send` would raise it) for each that was not; one failure does not stop the
        others. Messages sharing a key keep their order, except that one sent again after
        an unknown server error lands after the others (receivers tolerate that: they
        deduplicate and check versions).
        """
        outcomes = await self._send_once(messages)
        for pause in _UNKNOWN_ERROR_PAUSES:
            # A broker that lost its topics (an in-memory broker restarted) answers -1 to
            # a send to a partition it no longer has, an error aiokafka does not retry,
            # until the topic's consumer has made it again: about a second. Trying again
            # here saves each such message the outbox relay's grace (5 s), which is as
            # long as a step's timeout, so the step would be sent again for nothing. Only
            # failed sends wait; the normal path costs nothing more.
            again = [n for n, outcome in enumerate(outcomes) if _unknown_error(outcome)]
            if not again:
                break
            await asyncio.sleep(pause)
            retried = await self._send_once([messages[n] for n in again])
            for n, outcome in zip(again, retried, strict=True):
                outcomes[n] = outcome
        return outcomes

    async def _send_once(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        if self._stopped:
            # A send racing a shutdown fails like one the broker did not acknowledge.
            return [
                BrokerUnavailable(f"the producer is stopped; nothing was sent to {m.topic}")
                for m in messages
            ]
        producer = self._producer
        if producer is None:
            raise ConfigurationError("the Producer was not started: call start() first")
        outcomes: list[BaseException | asyncio.Future[Any]] = []
        for message in messages:
            try:
                outcomes.append(
                    await producer.send(
                        message.topic,
                        value=message.value,
                        key=message.key.encode(),
                        headers=[(name, value.encode()) for name, value in message.headers.items()],
                    )
                )
            except KafkaError as exc:
                outcomes.append(_translate(exc, message))
            except Exception as exc:  # a malformed message: its own failure, not the batch's
                outcomes.append(exc)
        # asyncio.wait, unlike awaiting each future, does not cancel aiokafka's futures
        # when this task is cancelled; and it never raises a future's error.
        acks = [outcome for outcome in outcomes if isinstance(outcome, asyncio.Future)]
        if acks:
            await asyncio.wait(acks)
        return [
            _result(outcome, message) for outcome, message in zip(outcomes, messages, strict=True)
        ]


def _unknown_error(outcome: BaseException | None) -> bool:
    return isinstance(outcome, BrokerUnavailable) and isinstance(outcome.__cause__, UnknownError)


def _result(
    outcome: BaseException | asyncio.Future[Any], message: OutgoingMessage
) -> BaseException | None:
    if isinstance(outcome, BaseException):
        return outcome
    if outcome.cancelled():
        return BrokerUnavailable(
            f"the producer stopped before Kafka acknowledged a message to {message.topic}"
        )
    error = outcome.exception()
    if error is None:
        return None
    if isinstance(error, KafkaError):
        return _translate(error, message)
    return error


def _translate(exc: KafkaError, message: OutgoingMessage) -> _Translated:
    """The engine's error for an aiokafka one, chained to it as ``raise ... from`` would."""
    translated: _Translated
    if isinstance(exc, MessageSizeTooLargeError):
        translated = MessageRejected(
            f"a message of {len(message.value)} bytes to {message.topic} is over the "
            f"size limit: {exc}"
        )
    else:
        translated = BrokerUnavailable(
            f"Kafka did not accept a message to {message.topic}: {type(exc).__name__}: {exc}"
        )
    translated.__cause__ = exc
    translated.__suppress_context__ = True
    return translated
