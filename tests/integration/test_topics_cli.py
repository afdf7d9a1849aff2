"""``saga topics`` as an operator runs it: a real process against the session's broker.

Each test works under a topic prefix of its own, so the other tests' topics on the shared
broker are only ever seen through ``--all``. What a command claims is checked against the
broker's metadata read here directly, not through the command's own code. Where Apache
Kafka and Tansu differ (CreatePartitions, DescribeConfigs), the broker is asked what it
offers and the test holds the command to the matching promise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from saga.participant.journey import discover_journeys
from saga.transport.broker_features import KafkaApi, broker_apis
from saga.transport.topics import ensure_topics

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def saga(*args: str, bootstrap: str, prefix: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    environment.update(
        APP_ENV="test",
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        KAFKA_TOPIC_PREFIX=prefix,
        LOG_LEVEL="WARNING",
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "saga", "topics", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )


def json_of(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def prefix() -> str:
    return f"test.{uuid.uuid4().hex[:10]}"


async def partition_counts(bootstrap: str) -> dict[str, int]:
    """Every topic's partition count, from the whole cluster's metadata (a request naming
    topics would create them on Tansu)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics()
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}


async def test_create_makes_the_engine_topics_once_and_list_shows_them(
    kafka_bootstrap_servers: str, prefix: str
) -> None:
    journeys = sorted(discover_journeys())
    assert journeys, "the project installs its journeys as entry points"
    expected = sorted(
        [f"{prefix}.replies", f"{prefix}.dead-letter"]
        + [f"{prefix}.{journey}.commands" for journey in journeys]
    )

    created = json_of(
        saga(
            "create",
            "--json",
            bootstrap=kafka_bootstrap_servers,
            prefix=prefix,
            KAFKA_TOPIC_PARTITIONS="3",
        )
    )["topics"]
    assert [row["topic"] for row in created] == expected
    assert all(row["created"] and row["partitions"] == 3 for row in created)
    counts = await partition_counts(kafka_bootstrap_servers)
    assert {name: counts.get(name) for name in expected} == dict.fromkeys(expected, 3)

    # Again, with a journey more and another partition count: only the new topic is
    # made, with the new count; the others keep theirs.
    again = saga(
        "create",
        "--journey",
        f"{journeys[0]},extra",
        bootstrap=kafka_bootstrap_servers,
        prefix=prefix,
        KAFKA_TOPIC_PARTITIONS="2",
    )
    assert again.returncode == 0, again.stderr
    assert "1 created, 3 existed already (left as they were)" in again.stdout
    counts = await partition_counts(kafka_bootstrap_servers)
    assert counts[f"{prefix}.extra.commands"] == 2
    assert counts[f"{prefix}.replies"] == 3

    await ensure_topics(kafka_bootstrap_servers, [f"other.{prefix}.replies"], partitions=1)
    listed = json_of(saga("list", "--json", bootstrap=kafka_bootstrap_servers, prefix=prefix))
    assert listed["topics"] == [
        {
            "topic": name,
            "partitions": counts[name],
            "replication": 1,
            "under_replicated": 0,
        }
        for name in sorted([*expected, f"{prefix}.extra.commands"])
    ]
    everything = json_of(
        saga("list", "--all", "--json", bootstrap=kafka_bootstrap_servers, prefix=prefix)
    )
    assert f"other.{prefix}.replies" in {row["topic"] for row in everything["topics"]}

    table = saga("list", bootstrap=kafka_bootstrap_servers, prefix=prefix)
    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.splitlines()
    assert header.split() == ["topic", "partitions", "replication", "under_replicated"]
    assert [f"{prefix}.dead-letter", "3", "1", "0"] in [line.split() for line in lines]
    assert len(lines) == len(listed["topics"])


async def test_describe_shows_partitions_and_config_and_creates_nothing(
    kafka_bootstrap_servers: str, prefix: str
) -> None:
    topic = f"{prefix}.replies"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, 2, 1, topic_configs={"retention.ms": "3600000"})]
        )
    finally:
        await admin.close()
    await ensure_topics(kafka_bootstrap_servers, [topic], partitions=2)  # waits for leaders
    apis = await broker_apis(kafka_bootstrap_servers, client_id="tests")

    described = json_of(
        saga("describe", topic, "--json", bootstrap=kafka_bootstrap_servers, prefix=prefix)
    )
    assert described["topic"] == topic
    assert described["replication"] == 1
    assert [p["partition"] for p in described["partitions"]] == [0, 1]
    for partition in described["partitions"]:
        assert partition["leader"] in partition["replicas"]
        assert partition["isr"] == partition["replicas"]
        assert partition["error"] is None
    if apis.supports(KafkaApi.DESCRIBE_CONFIGS):
        config = {entry["name"]: entry["value"] for entry in described["config"]}
        assert config["retention.ms"] == "3600000"
    else:
        assert described["config"] is None

    table = saga("describe", topic, bootstrap=kafka_bootstrap_servers, prefix=prefix)
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith(f"topic {topic}: 2 partitions, replication 1\n")
    rows = [line.split() for line in table.stdout.splitlines()]
    assert ["partition", "leader", "replicas", "isr", "offline", "error"] in rows
    leader = str(described["partitions"][0]["leader"])
    assert ["0", leader, leader, leader, "-", "-"] in rows
    if apis.supports(KafkaApi.DESCRIBE_CONFIGS):
        assert any(
            line.split()[:2] == ["retention.ms", "3600000"] for line in table.stdout.splitlines()
        )

    missing = f"{prefix}.nothing"
    error = one_line_error(
        saga("describe", missing, bootstrap=kafka_bootstrap_servers, prefix=prefix)
    )
    assert error == f"saga: error: no topic {missing!r} on Kafka at {kafka_bootstrap_servers}"
    assert missing not in await partition_counts(kafka_bootstrap_servers)


async def test_add_partitions_grows_where_the_broker_can_and_never_shrinks(
    kafka_bootstrap_servers: str, prefix: str
) -> None:
    topic = f"{prefix}.replies"
    await ensure_topics(kafka_bootstrap_servers, [topic], partitions=2)

    shrink = one_line_error(
        saga("add-partitions", topic, "--to", "1", bootstrap=kafka_bootstrap_servers, prefix=prefix)
    )
    assert shrink == (
        f"saga: error: topic {topic!r} has 2 partitions; Kafka cannot remove partitions, "
        "so --to 1 is refused"
    )
    same = saga(
        "add-partitions", topic, "--to", "2", bootstrap=kafka_bootstrap_servers, prefix=prefix
    )
    assert same.returncode == 0, same.stderr
    assert same.stdout == f"topic {topic} has 2 partitions already; nothing changed\n"

    grow = saga(
        "add-partitions",
        topic,
        "--to",
        "4",
        "--json",
        bootstrap=kafka_bootstrap_servers,
        prefix=prefix,
    )
    apis = await broker_apis(kafka_bootstrap_servers, client_id="tests")
    if apis.supports(KafkaApi.CREATE_PARTITIONS):
        assert json_of(grow) == {"topic": topic, "before": 2, "after": 4, "changed": True}
        assert (await partition_counts(kafka_bootstrap_servers))[topic] == 4
    else:  # Tansu
        assert one_line_error(grow) == (
            f"saga: error: Kafka at {kafka_bootstrap_servers} does not offer CreatePartitions "
            f"(API 37), so topic {topic!r} keeps its 2 partitions"
        )
        assert (await partition_counts(kafka_bootstrap_servers))[topic] == 2

    missing = f"{prefix}.nothing"
    error = one_line_error(
        saga(
            "add-partitions", missing, "--to", "3", bootstrap=kafka_bootstrap_servers, prefix=prefix
        )
    )
    assert error == f"saga: error: no topic {missing!r} on Kafka at {kafka_bootstrap_servers}"


def test_an_unreachable_broker_is_one_line(prefix: str) -> None:
    from saga.embedded.broker import free_port

    result = saga("list", bootstrap=f"127.0.0.1:{free_port()}", prefix=prefix)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("saga: error: could not connect to Kafka at 127.0.0.1:")
