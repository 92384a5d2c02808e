"""The one way every service talks to Kafka: broker factory, consuming, publishing.

Consuming is at least once and never waits for a batch (docs/adr/0018): each process keeps up to
`MBL_CONSUMER_CONCURRENCY` events in progress, starts the next record as soon as one ends, and
commits per partition only the offset below the lowest record not yet done. A crash therefore
delivers again the first unfinished record and everything after it. Handlers are idempotent.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker
from pymongo.errors import ConnectionFailure

from mailbox_link_contract.events import Envelope
from mailbox_link_contract.reading import NotHandled, Unreadable
from mailbox_link_contract.topics import Topics, topics_consumed_by
from mailbox_link_shared import metrics
from mailbox_link_shared.consumer_lag import lag_loop
from mailbox_link_shared.logs import log_context
from mailbox_link_shared.routing import EventRouter
from mailbox_link_shared.settings import ServiceSettings
from mailbox_link_shared.tracing import consumer_span, producer_span

# How long the broker may hold an empty fetch. It answers as soon as a record arrives
# (fetch_min_bytes=1), so this adds no latency: measured here, a hop takes ~5 ms with 500 ms.
# A short wait only makes idle consumers poll hundreds of times a second, which on 2 cores
# slowed the IMAP checks by a third (bench/README.md).
FETCH_MAX_WAIT_MS = 500
# The broker's minimum: a consumer that died (SIGKILL) gives its partitions back in seconds.
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 2000
# While every slot is taken the consumer fetches nothing (its partitions are paused), but it
# still polls this often: aiokafka leaves the group when a consumer stops polling for
# max_poll_interval_ms, and a slot may stay taken for minutes (an ownership proof, Mongo away).
FULL_POLL_SECONDS = 1.0
# A rebalance revokes every partition of every member (aiokafka's eager protocol) and the whole
# group waits for the slowest member's callback, so in-flight events of revoked partitions get
# this long to end and be committed; the rest are let go (see EventConsumer).
REVOKE_GRACE_SECONDS = 3.0
# Infrastructure that is away for a moment: retry, and if it stays away, keep the record in
# progress (uncommitted) and try it again every STALLED_RETRY_SECONDS. Anything else is a fault
# of the event or of our code.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionFailure,
    KafkaError,
    OSError,
    TimeoutError,
)
TRANSIENT_RETRY_DELAYS = (0.1, 0.3, 1.0, 3.0)
FAULT_RETRY_DELAYS = (0.05, 0.2)
STALLED_RETRY_SECONDS = 5.0

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
) -> "EventConsumer":
    """Returns the consumer of the topics the catalogue says `service_name` reads, routing
    through `router`; start it after the broker (it publishes dead letters through it) and stop
    it before.

    Event types the router's table does not list are skipped and committed past (the contract
    lets producers add types to any topic). Records it cannot read (not JSON, no envelope, an
    unknown schema version of a listed type) go to the dead-letter topic with the reason and
    do not hold up the partition. Up to `settings.consumer_concurrency` events are handled at
    once, in no particular order, so handlers must not depend on the order of events.
    """
    topics = Topics.for_namespace(settings.namespace)
    return EventConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"{settings.namespace}.{service_name}",
        client_id=service_name,
        topics=[topics.name_of(spec) for spec in topics_consumed_by(service_name)],
        router=router,
        dead_letters=DeadLetters(broker, settings, service_name),
        concurrency=settings.consumer_concurrency,
        stop_grace=settings.stop_grace_seconds,
    )


class PartitionProgress:
    """Which fetched records of one partition are still in progress, and so which offset may
    be committed: the one below the lowest record not yet done (everything under it is done)."""

    def __init__(self) -> None:
        self._in_progress: set[int] = set()
        self._fetched_to: int | None = None  # one past the last offset fetched
        self.committed: int | None = None

    def started(self, offset: int) -> None:
        """Notes a fetched record; records of a partition are fetched in offset order."""
        self._in_progress.add(offset)
        self._fetched_to = offset + 1

    def finished(self, offset: int) -> None:
        """Notes that a record's effects are stored (or it was skipped or dead-lettered)."""
        self._in_progress.discard(offset)

    def committable(self) -> int | None:
        """Returns the offset to commit: the lowest not done, or one past the last fetched."""
        if self._fetched_to is None:
            return None
        return min(self._in_progress, default=self._fetched_to)

    def ahead_of_commit(self) -> int | None:
        """Returns the offset to commit if it moved since the last commit, else None."""
        offset = self.committable()
        return offset if offset is not None and offset != self.committed else None


class EventConsumer:
    """Consumes topics with up to `concurrency` events in progress, committing what is done.

    One fetch loop takes records while a slot is free (at most as many as are free, so the
    records held never exceed `concurrency`) and starts each as a task; when every slot is
    taken it pauses its partitions and only polls. A record ends handled, skipped or
    dead-lettered; one that fails for now (infrastructure away) stays in progress and is tried
    again, so its offset is not committed past. A commit loop commits each partition's
    contiguous done prefix whenever it advanced.

    Rebalance: when partitions are revoked, their in-flight events get REVOKE_GRACE_SECONDS to
    end, the done prefix is committed while the partitions are still ours, and the partitions
    are forgotten: events still running finish (they hold their slot until then) but are never
    committed by us, and the new owner handles them again, which idempotent handlers allow (the
    verifier's start marker makes its second delivery a no-op).
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        group_id: str,
        client_id: str,
        topics: Collection[str],
        router: "EventRouter[Any]",
        dead_letters: "DeadLetterSink",
        concurrency: int,
        stop_grace: float = 5.0,
    ) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._stop_grace = stop_grace
        self._group_id = group_id
        self._client_id = client_id
        self._topics = list(topics)
        self._router = router
        self._dead_letters = dead_letters
        self._concurrency = concurrency
        self._consumer: AIOKafkaConsumer | None = None
        self._progress: dict[TopicPartition, PartitionProgress] = {}
        self._tasks: dict[asyncio.Task[None], TopicPartition] = {}
        self._slot_freed = asyncio.Event()
        self._advanced = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._loops: list[asyncio.Task[None]] = []

    @property
    def in_progress(self) -> int:
        """Returns how many records this process holds and has not finished."""
        return len(self._tasks)

    @property
    def running(self) -> bool:
        """True once started (joined the group) while its fetch loop still runs: readiness."""
        return self._consumer is not None and any(not loop.done() for loop in self._loops)

    async def start(self) -> None:
        """Joins the consumer group and starts fetching."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap_servers,
            group_id=self._group_id,
            client_id=self._client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        )
        consumer.subscribe(topics=self._topics, listener=_Rebalance(self))
        await consumer.start()
        self._consumer = consumer
        self._loops = [
            asyncio.create_task(self._fetch_loop(consumer), name=f"{self._group_id}-fetch"),
            asyncio.create_task(self._commit_loop(consumer), name=f"{self._group_id}-commit"),
            asyncio.create_task(
                lag_loop(consumer, self._client_id, self._committed_offset),
                name=f"{self._group_id}-lag",
            ),
        ]

    def _committed_offset(self, tp: TopicPartition) -> int | None:
        """The offset this process last committed on `tp` (for the lag metric)."""
        progress = self._progress.get(tp)
        return progress.committed if progress is not None else None

    async def stop(self, grace: float | None = None) -> None:
        """Stops fetching, lets events in progress end within `grace` seconds (the configured
        stop grace by default), commits what is done, cancels the rest (they come back to
        whoever consumes next) and leaves the group."""
        grace = self._stop_grace if grace is None else grace
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self._settle(list(self._tasks), grace)
        await self._commit(consumer, set(self._progress))
        if self._tasks:
            logger.warning(
                "stopping: %d events in progress let go after %g s (uncommitted)",
                len(self._tasks),
                grace,
            )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._progress.clear()
        await consumer.stop()

    async def _fetch_loop(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                await self._fetch(consumer)
            except KafkaError as exc:
                # aiokafka reconnects by itself; keep asking.
                logger.warning("fetch failed: %s", type(exc).__name__)
                await asyncio.sleep(FULL_POLL_SECONDS)
            except Exception:
                # Never stop consuming quietly while the process looks alive.
                logger.exception("fetch failed")
                await asyncio.sleep(FULL_POLL_SECONDS)

    async def _fetch(self, consumer: AIOKafkaConsumer) -> None:
        free = self._concurrency - len(self._tasks)
        if free <= 0:
            # Full: take nothing more, but poll so the group keeps us (FULL_POLL_SECONDS).
            consumer.pause(*consumer.assignment())
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FULL_POLL_SECONDS):
                    await self._slot_freed.wait()
            await consumer.getmany(timeout_ms=0)
            return
        consumer.resume(*consumer.assignment())
        fetched = await consumer.getmany(timeout_ms=FETCH_MAX_WAIT_MS, max_records=free)
        for tp, records in fetched.items():
            if tp not in consumer.assignment():
                continue  # revoked while the records were on their way: the new owner's
            progress = self._progress.setdefault(tp, PartitionProgress())
            for record in records:
                progress.started(record.offset)
                task = asyncio.create_task(self._handle(record, progress))
                self._tasks[task] = tp
                task.add_done_callback(self._ended)

    async def _handle(
        self, record: "ConsumerRecord[bytes, bytes]", progress: PartitionProgress
    ) -> None:
        while True:
            try:
                await handle_record(record, self._router, self._dead_letters)
                break
            except Exception as exc:
                if self._progress.get(_partition(record)) is not progress:
                    # Its partition was revoked: the new owner handles it, not us.
                    logger.info("%s: let go after a rebalance", _where(record))
                    return
                logger.error(
                    "%s could not be handled for now (%s); it stays uncommitted and is tried "
                    "again in %.0f s",
                    _where(record),
                    type(exc).__name__,
                    STALLED_RETRY_SECONDS,
                )
                await asyncio.sleep(STALLED_RETRY_SECONDS)
        progress.finished(record.offset)
        self._advanced.set()

    def _ended(self, task: "asyncio.Task[None]") -> None:
        self._tasks.pop(task, None)
        self._slot_freed.set()

    async def _commit_loop(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            await self._advanced.wait()
            self._advanced.clear()
            if not await self._commit(consumer, set(self._progress)):
                await asyncio.sleep(FULL_POLL_SECONDS)
                self._advanced.set()

    async def _commit(self, consumer: AIOKafkaConsumer, partitions: set[TopicPartition]) -> bool:
        """Commits the done prefix of those of `partitions` we own; False if Kafka refused."""
        async with self._commit_lock:
            owned = consumer.assignment()
            progress = {tp: self._progress[tp] for tp in partitions & owned if tp in self._progress}
            offsets = {
                tp: offset
                for tp, each in progress.items()
                if (offset := each.ahead_of_commit()) is not None
            }
            if not offsets:
                return True
            try:
                await consumer.commit(offsets)
            except KafkaError as exc:
                # A rebalance under way, or the coordinator away: tried again shortly (a
                # partition revoked meanwhile is forgotten, so never committed); at worst the
                # records come back.
                logger.warning("commit of %s failed: %s", _offsets(offsets), type(exc).__name__)
                return False
            for tp, offset in offsets.items():
                progress[tp].committed = offset
            return True

    async def _partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        consumer = self._consumer
        partitions = set(revoked)
        running = [task for task, tp in self._tasks.items() if tp in partitions]
        await self._settle(running, REVOKE_GRACE_SECONDS)
        if consumer is not None:
            await self._commit(consumer, partitions)
        left = sum(1 for task in running if not task.done())
        if left:
            logger.info("%d events of revoked partitions run on uncommitted", left)
        for tp in partitions:
            self._progress.pop(tp, None)

    @staticmethod
    async def _settle(tasks: list["asyncio.Task[None]"], seconds: float) -> None:
        if tasks and seconds > 0:
            await asyncio.wait(tasks, timeout=seconds)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands aiokafka's rebalance callbacks to the consumer."""

    def __init__(self, consumer: EventConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._consumer._partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Nothing to load: a partition's progress starts with its first fetched record."""


async def handle_record(
    record: "ConsumerRecord[bytes, bytes]",
    router: "EventRouter[Any]",
    dead_letters: "DeadLetterSink",
) -> None:
    """Reads and handles one record: handled, skipped (a type the table does not list) or
    dead-lettered (unreadable, or a handler that keeps failing with a fault).

    Raises if the event could not be handled for now, so the record is not committed past.
    """
    outcome = router.read(record.value or b"")
    if isinstance(outcome, Unreadable):
        await dead_letters.send(record, outcome.reason)
    elif isinstance(outcome, NotHandled):
        logger.debug("skipped %s: %s is not handled here", _where(record), outcome.event_type)
    else:
        # The handler runs in a consumer span, child of the producer's (tracing), and its log
        # lines name the event and the link (logs).
        with (
            consumer_span(
                record.topic,
                record.headers,
                outcome.type,
                str(outcome.event_id),
                outcome.correlation_id,
            ),
            log_context(
                link_id=outcome.correlation_id,
                event_id=str(outcome.event_id),
                event_type=outcome.type,
            ),
        ):
            await _handle_one(record, outcome, router.handle, dead_letters)


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
        self._service = service_name

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
        reason_class = "handler_failed" if reason.startswith("handler failed") else "unreadable"
        metrics.dead_lettered(self._service, record.topic, reason_class)


def _where(record: "ConsumerRecord[bytes, bytes]") -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"


def _partition(record: "ConsumerRecord[bytes, bytes]") -> TopicPartition:
    return TopicPartition(record.topic, record.partition)


def _offsets(offsets: dict[TopicPartition, int]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]@{offset}" for tp, offset in offsets.items())


class KafkaEventPublisher:
    """Publishes events to the topic for their type, keyed by their mailbox."""

    def __init__(self, broker: KafkaBroker, topics: Topics) -> None:
        self._broker = broker
        self._topics = topics

    async def publish(self, event: Envelope) -> None:
        """Publishes one event and waits until Kafka has stored it."""
        await publish_event(self._broker, self._topics.for_event(event.type), event)


async def publish_event(broker: KafkaBroker, topic: str, event: Envelope) -> None:
    """Publishes one event keyed by its mailbox, with its type in a header for routing and the
    trace context (traceparent) of a producer span, child of the current one."""
    with producer_span(topic, event.type, str(event.event_id), event.correlation_id) as trace:
        await broker.publish(
            event.model_dump(mode="json"),
            topic=topic,
            key=event.partition_key(),
            headers={
                "event-type": event.type,
                "schema-version": str(event.schema_version),
                **trace,
            },
            correlation_id=event.correlation_id,
        )
