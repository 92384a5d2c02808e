"""Read-only looks into the real Kafka and MongoDB, for asserting what was emitted and stored."""

from typing import Any

import bson
from aiokafka import AIOKafkaConsumer, TopicPartition
from pymongo import AsyncMongoClient

from mailbox_link_contract.topics import Topics


async def read_topics(bootstrap: str, namespace: str) -> list[tuple[str, bytes, bytes]]:
    """Returns (topic, key, value) of every record in the namespace's topics, from the start."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await _all_partitions(consumer, namespace)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        records: list[tuple[str, bytes, bytes]] = []
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, messages in batch.items():
                records.extend((tp.topic, m.key or b"", m.value or b"") for m in messages)
        return records
    finally:
        await consumer.stop()


async def count_records(bootstrap: str, namespace: str) -> int:
    """Returns how many records the namespace's topics have ever received."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await _all_partitions(consumer, namespace)
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


async def events_about(bootstrap: str, namespace: str, address: str) -> list[tuple[str, bytes]]:
    """Returns (topic, value) of every event keyed by this mailbox address."""
    records = await read_topics(bootstrap, namespace)
    return [(topic, value) for topic, key, value in records if key == address.encode()]


async def dump_databases(uri: str, namespace: str) -> list[bytes]:
    """Returns every document of the namespace's databases as raw BSON."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    try:
        documents: list[bytes] = []
        for name in await client.list_database_names():
            if not name.startswith(namespace):
                continue
            db = client[name]
            for collection in await db.list_collection_names():
                async for document in db[collection].find():
                    documents.append(bson.encode(document))
        return documents
    finally:
        await client.close()


async def count_documents(uri: str, namespace: str) -> int:
    """Returns how many documents the namespace's databases hold."""
    return len(await dump_databases(uri, namespace))


async def _all_partitions(consumer: AIOKafkaConsumer, namespace: str) -> list[TopicPartition]:
    topics = Topics.for_namespace(namespace).all()
    if any(consumer.partitions_for_topic(topic) is None for topic in topics):
        # aiokafka has no public call to refresh metadata for topics it is not subscribed to.
        await consumer._client.force_metadata_update()
    return [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
