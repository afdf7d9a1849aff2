"""The operators' view of the engine's topics: list, describe, create, add partitions.

``saga topics`` runs on this, so that managing the topics needs no Kafka shell tools.
Topics are always read from the whole cluster's metadata, never by name: a metadata
request naming a topic creates it on a broker that auto-creates (Tansu always does), and
a look must change nothing.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, for_code

from saga.errors import BrokerFeatureMissing, BrokerUnavailable, ConfigurationError
from saga.transport.broker_features import KafkaApi, broker_apis
from saga.transport.topics import ensure_topics

_LEGAL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
"""Kafka's own rule for topic names; checked here because some brokers (Tansu) take any."""

_CONFIG_SOURCES = {
    0: "unknown",
    1: "topic",
    2: "broker",
    3: "broker default",
    4: "broker file",
    5: "default",
    6: "broker logger",
    7: "client metrics",
}
"""Kafka's DescribeConfigs sources, by number, as a person would name them."""

_GROWTH_WAIT_S = 30.0
_POLL_INTERVAL_S = 0.05


@dataclass(frozen=True)
class Partition:
    """One partition as the metadata shows it (broker ids; ``leader`` -1 when none)."""

    partition: int
    leader: int
    replicas: list[int]
    isr: list[int]
    offline: list[int]
    error: str | None


@dataclass(frozen=True)
class TopicSummary:
    """One line of ``saga topics list``."""

    topic: str
    partitions: int
    replication: int
    under_replicated: int
    """Partitions with fewer in-sync replicas than replicas, or no leader."""


@dataclass(frozen=True)
class ConfigEntry:
    name: str
    value: str | None
    """``None`` when the broker keeps it secret (``sensitive``) or has none."""
    source: str
    sensitive: bool


@dataclass(frozen=True)
class TopicDescription:
    """``saga topics describe``: the partitions, and the configuration when the broker
    gives it (``config`` is ``None`` when it does not offer DescribeConfigs)."""

    topic: str
    partitions: list[Partition]
    config: list[ConfigEntry] | None

    @property
    def replication(self) -> int:
        return _replication(self.partitions)


@dataclass(frozen=True)
class TopicCreation:
    """What ``saga topics create`` did to one topic."""

    topic: str
    created: bool
    partitions: int


@dataclass(frozen=True)
class PartitionChange:
    topic: str
    before: int
    after: int

    @property
    def changed(self) -> bool:
        return self.after != self.before


def check_topic_name(name: str, *, what: str = "topic") -> str:
    """``name`` if Kafka would take it as a topic name; otherwise a one-line error."""
    if not _LEGAL_NAME.fullmatch(name) or name in {".", ".."}:
        raise ConfigurationError(
            f"{what} {name!r} is not a Kafka topic name: use 1..249 letters, digits, "
            "'.', '_' or '-'"
        )
    return name


class TopicAdmin:
    """An admin client on one cluster, opened with ``async with``.

    Every method raises :class:`BrokerUnavailable` when the cluster cannot be reached,
    :class:`ConfigurationError` for a topic that does not exist or a request that makes
    no sense, and :class:`BrokerFeatureMissing` for what the broker cannot do.
    """

    def __init__(self, bootstrap_servers: str, *, client_id: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.client_id = client_id
        self._admin: Any = None

    async def __aenter__(self) -> TopicAdmin:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, client_id=self.client_id
        )
        try:
            await admin.start()
        except KafkaError as exc:
            await admin.close()
            raise self._unavailable("connect to", exc) from exc
        self._admin = admin
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._admin.close()

    async def summaries(self, *, prefix: str | None) -> list[TopicSummary]:
        """Every topic whose name starts with ``prefix`` and a dot (all when ``None``),
        sorted by name."""
        topics = await self._metadata()
        return [
            TopicSummary(
                topic=name,
                partitions=len(partitions),
                replication=_replication(partitions),
                under_replicated=sum(
                    1 for p in partitions if p.leader < 0 or len(p.isr) < len(p.replicas)
                ),
            )
            for name, partitions in sorted(topics.items())
            if prefix is None or name.startswith(f"{prefix}.")
        ]

    async def describe(self, topic: str) -> TopicDescription:
        partitions = await self._partitions_of(topic)
        return TopicDescription(topic, partitions, await self._config(topic))

    async def create(
        self, names: Sequence[str], *, partitions: int, replication_factor: int
    ) -> list[TopicCreation]:
        """Create whichever of ``names`` are missing, as the engine's processes would;
        those that exist keep their partitions. Safe to run again."""
        for name in names:
            check_topic_name(name)
        before = await self._metadata()
        await ensure_topics(
            self.bootstrap_servers,
            names,
            partitions=partitions,
            client_id=self.client_id,
            replication_factor=replication_factor,
        )
        after = await self._metadata()
        return [
            TopicCreation(name, created=name not in before, partitions=len(after.get(name, [])))
            for name in sorted(set(names))
        ]

    async def add_partitions(self, topic: str, *, to: int) -> PartitionChange:
        """Grow ``topic`` to ``to`` partitions; asking for what it has already is a no-op,
        asking for fewer an error (Kafka cannot take partitions away)."""
        before = len(await self._partitions_of(topic))
        if to < before:
            raise ConfigurationError(
                f"topic {topic!r} has {before} partitions; Kafka cannot remove partitions, "
                f"so --to {to} is refused"
            )
        if to == before:
            return PartitionChange(topic, before, before)
        apis = await broker_apis(self.bootstrap_servers, client_id=self.client_id)
        if not apis.supports(KafkaApi.CREATE_PARTITIONS):
            raise BrokerFeatureMissing(
                f"Kafka at {self.bootstrap_servers} does not offer CreatePartitions (API 37), "
                f"so topic {topic!r} keeps its {before} partitions"
            )
        try:
            await self._admin.create_partitions({topic: NewPartitions(to)})
        except KafkaError as exc:
            raise ConfigurationError(
                f"the broker refused to grow topic {topic!r} to {to} partitions: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return PartitionChange(topic, before, await self._wait_for_partitions(topic, to))

    async def _wait_for_partitions(self, topic: str, count: int) -> int:
        """The partition count once the metadata shows ``count``: the controller answers
        before every broker has heard of the new partitions."""
        deadline = time.monotonic() + _GROWTH_WAIT_S
        while (seen := len(await self._partitions_of(topic))) < count:
            if time.monotonic() >= deadline:
                raise BrokerUnavailable(
                    f"topic {topic!r} was grown to {count} partitions, but the metadata "
                    f"still shows {seen} after {_GROWTH_WAIT_S:.0f} s"
                )
            await asyncio.sleep(_POLL_INTERVAL_S)
        return seen

    async def _partitions_of(self, topic: str) -> list[Partition]:
        check_topic_name(topic)
        partitions = (await self._metadata()).get(topic)
        if partitions is None:
            raise ConfigurationError(f"no topic {topic!r} on Kafka at {self.bootstrap_servers}")
        return partitions

    async def _metadata(self) -> dict[str, list[Partition]]:
        try:
            described: list[dict[str, Any]] = await self._admin.describe_topics()
        except KafkaError as exc:
            raise self._unavailable("read the metadata of", exc) from exc
        return {
            topic["topic"]: sorted(
                (_partition(p) for p in topic["partitions"]), key=lambda p: p.partition
            )
            for topic in described
            if topic["error_code"] == 0
        }

    async def _config(self, topic: str) -> list[ConfigEntry] | None:
        apis = await broker_apis(self.bootstrap_servers, client_id=self.client_id)
        if not apis.supports(KafkaApi.DESCRIBE_CONFIGS):
            return None
        try:
            responses: list[Any] = await self._admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
        except KafkaError as exc:
            raise self._unavailable("read the configuration of", exc) from exc
        return sorted(_config_entries(responses), key=lambda entry: entry.name)

    def _unavailable(self, doing: str, exc: KafkaError) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"could not {doing} Kafka at {self.bootstrap_servers}: {type(exc).__name__}: {exc}"
        )


def _partition(raw: dict[str, Any]) -> Partition:
    code = raw.get("error_code", 0)
    return Partition(
        partition=raw["partition"],
        leader=raw["leader"],
        replicas=list(raw["replicas"]),
        isr=list(raw["isr"]),
        offline=list(raw.get("offline_replicas", [])),
        # Metadata reports a partition's trouble by code; the name is what a person reads.
        error=None if code == 0 else _error_name(code),
    )


def _error_name(code: int) -> str:
    return str(for_code(code).__name__)


def _replication(partitions: Iterable[Partition]) -> int:
    return max((len(p.replicas) for p in partitions), default=0)


def _config_entries(responses: Iterable[Any]) -> list[ConfigEntry]:
    entries: list[ConfigEntry] = []
    for response in responses:
        for resource in response.to_object()["resources"]:
            if resource["error_code"] != 0:
                raise BrokerUnavailable(
                    f"the broker would not describe topic {resource['resource_name']!r}: "
                    f"{resource.get('error_message') or _error_name(resource['error_code'])}"
                )
            for entry in resource["config_entries"]:
                entries.append(_config_entry(entry))
    return entries


def _config_entry(entry: dict[str, Any]) -> ConfigEntry:
    if "config_source" in entry:  # DescribeConfigs v1 and later
        source = _CONFIG_SOURCES.get(entry["config_source"], str(entry["config_source"]))
    else:  # v0 says only whether the value is the default
        source = "default" if entry.get("is_default") else "set"
    return ConfigEntry(
        name=entry["config_names"],
        value=entry["config_value"],
        source=source,
        sensitive=bool(entry.get("is_sensitive")),
    )
