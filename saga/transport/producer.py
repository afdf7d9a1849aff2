"""Sending messages and waiting for the broker to have them.

A send only counts once the broker acknowledged it (``acks="all"``): the callers record
"sent" in the database after it, and a crash in between just sends again (consumers are
idempotent). ``KAFKA_ENABLE_IDEMPOTENCE`` decides whether the producer is also idempotent,
which keeps a send the client retries after a lost acknowledgement from being written
twice: ``auto`` (the default) asks the broker first, since Apache Kafka hands out producer
ids and Tansu, the test broker, fails the request. Either way the duplicates a crash
causes are the consumers' to absorb; idempotence only saves them some.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, UnknownError

from saga.errors import (
    BrokerFeatureMissing,
    BrokerUnavailable,
    ConfigurationError,
    MessageRejected,
)
from saga.settings import Idempotence, Settings
from saga.transport.broker_features import IdempotenceSupport, idempotence_support
from saga.transport.message import OutgoingMessage

__all__ = ["OutgoingMessage", "Producer"]

log = structlog.get_logger("saga.transport")

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
        idempotence: Idempotence = Idempotence.AUTO,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.client_id = client_id
        self.max_message_bytes = max_message_bytes
        self.linger_ms = linger_ms
        self.idempotence = idempotence
        self.idempotent: bool | None = None
        """Whether the started producer is idempotent; ``None`` before :meth:`start`."""
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
            idempotence=settings.kafka_enable_idempotence,
        )

    async def start(self) -> None:
        """Connect, idempotent or not as ``KAFKA_ENABLE_IDEMPOTENCE`` decides.

        Raises :class:`BrokerUnavailable` when Kafka cannot be reached, and
        :class:`BrokerFeatureMissing` when idempotence is required and the broker lacks it.
        """
        if self._producer is not None or self._stopped:
            raise ConfigurationError("a Producer is started once: make a new one")
        idempotent = await self._decide_idempotence()
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=idempotent,
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
        self.idempotent = idempotent

    async def _decide_idempotence(self) -> bool:
        if self.idempotence is Idempotence.FALSE:
            support = None
        else:
            support = await idempotence_support(self.bootstrap_servers, client_id=self.client_id)
        idempotent = idempotence_mode(self.idempotence, support, broker=self.bootstrap_servers)
        log.info(
            "producer_mode",
            client_id=self.client_id,
            idempotent=idempotent,
            acks="all",
            setting=self.idempotence.value,
            reason=support.reason if support else "KAFKA_ENABLE_IDEMPOTENCE=false",
        )
        return idempotent

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


def idempotence_mode(
    setting: Idempotence, support: IdempotenceSupport | None, *, broker: str
) -> bool:
    """Whether to run idempotent, given the setting and what the broker said (``None``
    when it was not asked, as ``false`` needs not).

    Raises :class:`BrokerFeatureMissing` when ``true`` meets a broker without support.
    """
    if setting is Idempotence.FALSE:
        return False
    if support is None:
        raise ConfigurationError(f"KAFKA_ENABLE_IDEMPOTENCE={setting.value} needs the broker asked")
    if support.supported:
        return True
    if setting is Idempotence.TRUE:
        raise BrokerFeatureMissing(
            f"KAFKA_ENABLE_IDEMPOTENCE=true, but Kafka at {broker} cannot run an idempotent "
            f"producer: {support.reason}; set it to auto or false"
        )
    return False


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
