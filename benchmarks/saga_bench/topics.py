"""Kafka's counters: the topics' end offsets, and the records the measured sagas sent."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition


async def end_offsets(bootstrap: str, prefix: str) -> dict[str, int]:
    """Each topic under ``prefix``: the sum of its partitions' end offsets (every message
    the broker ever accepted on it)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        topics = sorted(t for t in await consumer.topics() if t.startswith(f"{prefix}."))
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        offsets = await consumer.end_offsets(partitions) if partitions else {}
    finally:
        await consumer.stop()
    totals = dict.fromkeys(topics, 0)
    for partition, offset in offsets.items():
        totals[partition.topic] += int(offset)
    return totals


async def count_messages(bootstrap: str, prefix: str, keys: set[str]) -> dict[str, int]:
    """Each topic under ``prefix``: how many of its records carry one of ``keys`` (the
    measured sagas' ids), read from the beginning. Exact, unlike Tansu's end offsets,
    which fall behind the records it holds when producers write concurrently."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        topics = sorted(t for t in await consumer.topics() if t.startswith(f"{prefix}."))
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        counts = dict.fromkeys(topics, 0)
        if not partitions:
            return counts
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        quiet = 0
        while quiet < 2:  # two empty polls of a second: everything has been read
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            quiet = 0 if batch else quiet + 1
            for partition, records in batch.items():
                counts[partition.topic] += sum(
                    1 for r in records if r.key is not None and r.key.decode() in keys
                )
        return counts
    finally:
        await consumer.stop()
