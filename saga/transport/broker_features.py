"""What the broker can do, asked rather than assumed.

Apache Kafka and Tansu speak the same protocol but not all of it: each broker answers an
ApiVersions request with the APIs it offers, and a few features must be tried to be
known (Tansu offers InitProducerId, the idempotent producer's first request, and fails
it). The producer asks before it turns idempotence on, and ``saga topics`` before it asks
for something the broker may not do.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.admin import ApiVersionRequest
from aiokafka.protocol.transaction import InitProducerIdRequest

from saga.errors import BrokerUnavailable

_PROBE_TRANSACTION_TIMEOUT_MS = 60_000
"""Sent with the InitProducerId probe as aiokafka's producer sends it; a producer without
a transactional id never opens a transaction, so the value is not used."""

_PROBE_PAUSES = (0.1, 0.2, 0.4, 0.8)
"""Pauses before asking again after a retriable refusal (a broker still loading)."""


class KafkaApi(IntEnum):
    """The Kafka API keys the engine asks about (Kafka's protocol guide numbers them)."""

    INIT_PRODUCER_ID = 22
    DESCRIBE_CONFIGS = 32
    CREATE_PARTITIONS = 37


@dataclass(frozen=True)
class BrokerApis:
    """The API keys every broker of a cluster offers (those only some offer are left out,
    since a request may go to any of them)."""

    bootstrap_servers: str
    offered: frozenset[int]

    def supports(self, api: KafkaApi) -> bool:
        return int(api) in self.offered


@dataclass(frozen=True)
class IdempotenceSupport:
    """Whether a producer can run idempotent against the broker, and why not."""

    supported: bool
    reason: str


async def broker_apis(bootstrap_servers: str, *, client_id: str) -> BrokerApis:
    """Ask every broker in the metadata which APIs it offers.

    Raises :class:`BrokerUnavailable` when the cluster cannot be reached.
    """
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, client_id=client_id)
    try:
        await client.bootstrap()
        return BrokerApis(bootstrap_servers, await _offered_by_all(client))
    except KafkaError as exc:
        raise BrokerUnavailable(
            f"could not ask Kafka at {bootstrap_servers} what it supports: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        await client.close()


async def idempotence_support(bootstrap_servers: str, *, client_id: str) -> IdempotenceSupport:
    """Whether the broker hands out producer ids: it must offer InitProducerId, and answer
    the very request aiokafka's idempotent producer starts with.

    The probe costs one producer id, which the broker forgets like any idle producer's.
    Raises :class:`BrokerUnavailable` when the cluster cannot be reached.
    """
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, client_id=client_id)
    try:
        await client.bootstrap()
        if int(KafkaApi.INIT_PRODUCER_ID) not in await _offered_by_all(client):
            return IdempotenceSupport(False, "the broker does not offer InitProducerId")
        error = await _init_producer_id(client)
        for pause in _PROBE_PAUSES:
            if error is None or not error.retriable:
                break
            await asyncio.sleep(pause)
            error = await _init_producer_id(client)
    except KafkaError as exc:
        raise BrokerUnavailable(
            f"could not ask Kafka at {bootstrap_servers} for a producer id: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        await client.close()
    if error is None:
        return IdempotenceSupport(True, "the broker hands out producer ids")
    if error.retriable:
        raise BrokerUnavailable(
            f"Kafka at {bootstrap_servers} kept answering InitProducerId with {error.__name__}"
        )
    return IdempotenceSupport(False, f"the broker answered InitProducerId with {error.__name__}")


async def _init_producer_id(client: Any) -> type[KafkaError] | None:
    """The error the broker answered the idempotent producer's first request with, if any."""
    response: Any = await client.send(
        client.get_random_node(),
        InitProducerIdRequest(
            transactional_id=None, transaction_timeout_ms=_PROBE_TRANSACTION_TIMEOUT_MS
        ),
    )
    if response.error_code == 0:
        return None
    error: type[KafkaError] = for_code(response.error_code)
    return error


async def _offered_by_all(client: Any) -> frozenset[int]:
    offered: frozenset[int] | None = None
    for broker in client.cluster.brokers():
        response: Any = await client.send(broker.nodeId, ApiVersionRequest())
        keys = frozenset(api_key for api_key, _low, _high in response.api_versions)
        offered = keys if offered is None else offered & keys
    return offered or frozenset()
