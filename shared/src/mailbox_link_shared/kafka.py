"""The one way every service talks to Kafka: broker factory, subscriber options, publishing."""

import contextlib
import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker

from mailbox_link_shared.events import Envelope
from mailbox_link_shared.settings import ServiceSettings
from mailbox_link_shared.topics import Topics

PARTITIONS = 3
# How long the broker may hold an empty fetch. It answers as soon as a record arrives
# (fetch_min_bytes=1), so this adds no latency: measured here, a hop takes ~5 ms with 500 ms.
# A short wait only makes idle consumers poll hundreds of times a second, which on 2 cores
# slowed the IMAP checks by a third (bench/README.md).
FETCH_MAX_WAIT_MS = 500


def make_broker(settings: ServiceSettings, service_name: str) -> KafkaBroker:
    """Returns a broker tuned for low latency: no batching delay, every write acknowledged."""
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=service_name,
        linger_ms=0,
        acks="all",
        enable_idempotence=True,
        logger=logging.getLogger(f"{service_name}.kafka"),
        description=f"{service_name} of mailbox-link",
    )


def subscriber_options(settings: ServiceSettings, service_name: str) -> dict[str, Any]:
    """Returns the consumer options every service uses: its own group, committed after handling."""
    return {
        "group_id": f"{settings.namespace}.{service_name}",
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
        "ack_policy": AckPolicy.ACK,
    }


class KafkaEventPublisher:
    """Publishes events to the topic for their type, keyed by their mailbox."""

    def __init__(self, broker: KafkaBroker, topics: Topics) -> None:
        self._broker = broker
        self._topics = topics

    async def publish(self, event: Envelope) -> None:
        """Publishes one event and waits until Kafka has stored it."""
        await publish_event(self._broker, self._topics.for_event(event.type), event)


async def publish_event(broker: KafkaBroker, topic: str, event: Envelope) -> None:
    """Publishes one event keyed by its mailbox, with its type in a header for routing."""
    await broker.publish(
        event.model_dump(mode="json"),
        topic=topic,
        key=event.partition_key(),
        headers={"event-type": event.type, "schema-version": str(event.schema_version)},
        correlation_id=event.correlation_id,
    )


async def ensure_topics(settings: ServiceSettings) -> None:
    """Creates this namespace's topics if they do not exist yet."""
    topics = Topics.for_namespace(settings.namespace)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)
            for name in topics.all()
            if name not in existing
        ]
        if missing:
            # Another service may have created them in the meantime.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()
