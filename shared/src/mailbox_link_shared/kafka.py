"""The one way every service talks to Kafka: broker factory, consuming, publishing.

Consuming is at least once: a batch's offsets are committed only after every event in it was
handled (its effects stored) or sent to the dead-letter topic; otherwise the batch is fetched
again. Handlers are therefore idempotent.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from aiokafka import ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pymongo.errors import ConnectionFailure

from mailbox_link_contract.events import Envelope
from mailbox_link_contract.reading import NotHandled, Unreadable
from mailbox_link_contract.topics import CATALOGUE, Topics, TopicSpec, topics_consumed_by
from mailbox_link_shared.routing import EventRouter
from mailbox_link_shared.settings import ServiceSettings

# How long the broker may hold an empty fetch. It answers as soon as a record arrives
# (fetch_min_bytes=1), so this adds no latency: measured here, a hop takes ~5 ms with 500 ms.
# A short wait only makes idle consumers poll hundreds of times a second, which on 2 cores
# slowed the IMAP checks by a third (bench/README.md).
FETCH_MAX_WAIT_MS = 500
# The broker's minimum: a consumer that died (SIGKILL) gives its partitions back in seconds.
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 2000
MAX_BATCH = 100
# Infrastructure that is away for a moment: retry, and if it stays away, leave the offsets
# uncommitted so the batch comes back. Anything else is a fault of the event or of our code.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionFailure,
    KafkaError,
    OSError,
    TimeoutError,
)
TRANSIENT_RETRY_DELAYS = (0.1, 0.3, 1.0, 3.0)
FAULT_RETRY_DELAYS = (0.05, 0.2)

logger = logging.getLogger(__name__)


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


def subscribe(
    broker: KafkaBroker,
    settings: ServiceSettings,
    service_name: str,
    router: "EventRouter[Any]",
) -> None:
    """Consumes the topics the catalogue says `service_name` reads, routing through `router`.

    Event types the router's table does not list are skipped and committed past (the contract
    lets producers add types to any topic). Records it cannot read (not JSON, no envelope, an
    unknown schema version of a listed type) go to the dead-letter topic with the reason and
    do not hold up the partition. The events of a batch are handled concurrently, so handlers
    must not depend on order within a batch.
    """
    topics = Topics.for_namespace(settings.namespace)
    names = [topics.name_of(spec) for spec in topics_consumed_by(service_name)]
    dead_letters = DeadLetters(broker, settings, service_name)

    @broker.subscriber(
        *names,
        batch=True,
        max_records=MAX_BATCH,
        group_id=f"{settings.namespace}.{service_name}",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        # A batch that raises is rewound and fetched again, never committed.
        ack_policy=AckPolicy.NACK_ON_ERROR,
        decoder=_no_decoding,
        title=f"{service_name}:{'+'.join(names)}",
    )
    async def on_records(message: KafkaMessage) -> None:
        records: tuple[ConsumerRecord[bytes, bytes], ...] = message.raw_message
        await handle_records(records, router, dead_letters, settings.consumer_concurrency)


async def handle_records(
    records: Sequence["ConsumerRecord[bytes, bytes]"],
    router: "EventRouter[Any]",
    dead_letters: "DeadLetterSink",
    concurrency: int = 1,
) -> None:
    """Reads and handles a batch, `concurrency` events at a time, in order of arrival.

    Raises if any event could not be handled for now, so the batch is not committed.
    """
    readable: list[tuple[ConsumerRecord[bytes, bytes], Envelope]] = []
    for record in records:
        outcome = router.read(record.value or b"")
        if isinstance(outcome, Unreadable):
            await dead_letters.send(record, outcome.reason)
        elif isinstance(outcome, NotHandled):
            logger.debug("skipped %s: %s is not handled here", _where(record), outcome.event_type)
        else:
            readable.append((record, outcome))
    slots = asyncio.Semaphore(concurrency)

    async def handle_in_turn(record: "ConsumerRecord[bytes, bytes]", event: Envelope) -> None:
        async with slots:
            await _handle_one(record, event, router.handle, dead_letters)

    outcomes = await asyncio.gather(
        *(handle_in_turn(record, event) for record, event in readable), return_exceptions=True
    )
    for failure in outcomes:
        if isinstance(failure, BaseException):
            raise failure


async def _handle_one(
    record: "ConsumerRecord[bytes, bytes]",
    event: Envelope,
    handle: Callable[[Envelope], Awaitable[None]],
    dead_letters: "DeadLetterSink",
) -> None:
    transient_left = list(TRANSIENT_RETRY_DELAYS)
    fault_left = list(FAULT_RETRY_DELAYS)
    while True:
        try:
            await handle(event)
            return
        except TRANSIENT_ERRORS as exc:
            if not transient_left:
                raise
            delay = transient_left.pop(0)
            name = type(exc).__name__
            logger.warning("%s at %s, retrying in %.1f s", name, _where(record), delay)
        except Exception as exc:
            if not fault_left:
                logger.exception("giving up on %s", _where(record))
                await dead_letters.send(record, f"handler failed: {type(exc).__name__}: {exc}")
                return
            delay = fault_left.pop(0)
        await asyncio.sleep(delay)


class DeadLetterSink(Protocol):
    """Where a consumer puts records it cannot use."""

    async def send(self, record: "ConsumerRecord[bytes, bytes]", reason: str) -> None:
        """Stores the record with the reason; returns once it is stored."""


class DeadLetters:
    """Copies unusable records, unchanged, to the namespace's dead-letter topic."""

    def __init__(self, broker: KafkaBroker, settings: ServiceSettings, service_name: str) -> None:
        self._broker = broker
        self._topic = Topics.for_namespace(settings.namespace).dead_letters
        self._group = f"{settings.namespace}.{service_name}"

    async def send(self, record: "ConsumerRecord[bytes, bytes]", reason: str) -> None:
        """Publishes the record with dlq-* headers naming the reason, source and consumer."""
        headers = {key: value.decode("utf-8", "replace") for key, value in record.headers}
        headers.update(
            {
                "dlq-reason": reason[:1000],
                "dlq-source-topic": record.topic,
                "dlq-source-partition": str(record.partition),
                "dlq-source-offset": str(record.offset),
                "dlq-consumer-group": self._group,
            }
        )
        await self._broker.publish(
            record.value or b"", topic=self._topic, key=record.key, headers=headers
        )
        logger.warning("dead-lettered %s: %s", _where(record), reason)


async def _no_decoding(message: Any) -> Any:
    # Decoding is ours (handle_records), so a record that is not JSON reaches the dead-letter
    # topic instead of failing inside FastStream and being fetched again for ever.
    return None


def _where(record: "ConsumerRecord[bytes, bytes]") -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"


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
            NewTopic(
                topics.name_of(spec),
                num_partitions=spec.partitions,
                replication_factor=1,
                topic_configs={"retention.ms": _retention_ms(spec)},
            )
            for spec in CATALOGUE
            if topics.name_of(spec) not in existing
        ]
        if missing:
            # Another service may have created them in the meantime.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


def _retention_ms(spec: TopicSpec) -> str:
    return str(int(spec.retention.total_seconds() * 1000)) if spec.retention else "-1"
