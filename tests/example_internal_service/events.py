"""Following the mailboxes topic for one address, as an internal service that sends as its
users does: MailboxLinked and MailboxReconnected say "usable" (with the mailbox_id to ask
access for), MailboxHealthChanged says "pause" or "resume". Other types are skipped, as the
contract asks (mailbox_link_contract.reading).
"""

import asyncio
import time
from collections.abc import Callable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from mailbox_link_contract.events import (
    Envelope,
    MailboxHealthChanged,
    MailboxLinked,
    MailboxReconnected,
)
from mailbox_link_contract.reading import read_event

MailboxEvent = MailboxLinked | MailboxReconnected | MailboxHealthChanged

_HANDLED: Mapping[str, type[Envelope]] = {
    "MailboxLinked": MailboxLinked,
    "MailboxReconnected": MailboxReconnected,
    "MailboxHealthChanged": MailboxHealthChanged,
}


async def topic_end(bootstrap: str, topic: str) -> dict[int, int]:
    """Returns the topic's current end offsets (partition -> offset): follow from there to
    see only what happens after now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await _partitions(consumer, topic)]
        ends = await consumer.end_offsets(partitions)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


class MailboxEvents:
    """The mailbox events of one address (every address when None), read from `start` (the
    offsets of `topic_end`; default: the beginning) in each partition's order.

    Use as `async with MailboxEvents(...) as events:`; `wait_for` returns the next matching
    event within a deadline, and `seen` keeps every event read so far (for assertions such
    as "never reconnect_required").
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        address: str | None = None,
        *,
        start: Mapping[int, int] | None = None,
    ) -> None:
        self.topic = topic
        self.address = address.lower() if address is not None else None
        self.start = dict(start or {})
        self.seen: list[MailboxEvent] = []
        self._unread: list[MailboxEvent] = []
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)

    async def __aenter__(self) -> "MailboxEvents":
        await self._consumer.start()
        try:
            partitions = [
                TopicPartition(self.topic, p) for p in await _partitions(self._consumer, self.topic)
            ]
            self._consumer.assign(partitions)
            for tp in partitions:
                offset = self.start.get(tp.partition)
                if offset is None:
                    await self._consumer.seek_to_beginning(tp)
                else:
                    self._consumer.seek(tp, offset)
        except BaseException:
            await self._consumer.stop()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._consumer.stop()

    async def poll(self, max_wait_ms: int = 500) -> list[MailboxEvent]:
        """Reads what arrived (waiting at most `max_wait_ms`); returns this address's events."""
        found: list[MailboxEvent] = []
        batches = await self._consumer.getmany(timeout_ms=max_wait_ms)
        for records in batches.values():
            for record in records:
                event = read_event(record.value or b"", _HANDLED)
                if not isinstance(event, MailboxLinked | MailboxReconnected | MailboxHealthChanged):
                    continue  # another type, or a record this service cannot read
                if self.address is None or event.data.address.lower() == self.address:
                    found.append(event)
        self.seen += found
        self._unread += found
        return found

    async def wait_for(
        self, matches: Callable[[MailboxEvent], bool], within: float = 30.0
    ) -> MailboxEvent:
        """Returns the next unread event that `matches` (earlier unread ones are passed
        over); TimeoutError after `within` seconds."""
        deadline = time.monotonic() + within
        while True:
            while self._unread:
                event = self._unread.pop(0)
                if matches(event):
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching mailbox event within {within:.0f} s")
            await self.poll(max_wait_ms=max(1, min(500, int(remaining * 1000))))

    def health_changes(self) -> list[MailboxHealthChanged]:
        """Every MailboxHealthChanged seen so far, in order."""
        return [e for e in self.seen if isinstance(e, MailboxHealthChanged)]


def is_linked(event: MailboxEvent) -> bool:
    """MailboxLinked or MailboxReconnected: the mailbox is usable (ask for access)."""
    return isinstance(event, MailboxLinked | MailboxReconnected)


def health_is(health: str) -> Callable[[MailboxEvent], bool]:
    """Matches a MailboxHealthChanged to `health` (active, degraded, reconnect_required)."""

    def matches(event: MailboxEvent) -> bool:
        return isinstance(event, MailboxHealthChanged) and event.data.health == health

    return matches


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    # A topic nobody wrote to yet has no metadata until asked; bounded, like every wait here.
    for _ in range(50):
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return set(partitions)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    raise TimeoutError(f"topic {topic} has no partitions")
