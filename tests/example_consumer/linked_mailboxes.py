"""An example of a service outside mailbox-link: it keeps its own list of linked mailboxes
from the public mailboxes topic alone, the way a CRM's sync service would.

It relies only on the contract: events are keyed by address (so one address's events are in
order), delivery is at least once (duplicates share an event_id), and consumers ignore event
types and fields they do not know.
"""

from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from mailbox_link_contract.events import MailboxLinked, MailboxOwner, MailboxUnlinked
from mailbox_link_contract.reading import read_event

# The types this view needs; any other type on the topic is skipped, as the contract says.
_HANDLED = {"MailboxLinked": MailboxLinked, "MailboxUnlinked": MailboxUnlinked}


@dataclass
class LinkedMailboxesView:
    """Which user each mailbox address is linked to, built by applying events in order."""

    owners: dict[str, MailboxOwner] = field(default_factory=dict)
    mailbox_ids: dict[str, str] = field(default_factory=dict)
    seen_event_ids: set[str] = field(default_factory=set)
    # Each MailboxLinked that arrived while its address was still linked to another mailbox:
    # the one-owner rule broken as seen from outside. Empty when mailbox-link is correct.
    conflicts: list[str] = field(default_factory=list)

    def apply(self, raw: bytes) -> None:
        """Applies one record's value; duplicates and unknown events change nothing."""
        event = read_event(raw, _HANDLED)
        if not isinstance(event, MailboxLinked | MailboxUnlinked):
            return  # a type this view does not need (or a record it cannot read)
        event_id = str(event.event_id)
        if event_id in self.seen_event_ids:
            return
        self.seen_event_ids.add(event_id)
        if isinstance(event, MailboxLinked):
            address = event.data.address
            if address in self.owners:
                self.conflicts.append(address)
            self.owners[address] = event.data.owner
            self.mailbox_ids[address] = event.data.mailbox_id
        elif isinstance(event, MailboxUnlinked):
            address = event.data.address
            if self.mailbox_ids.get(address) == event.data.mailbox_id:
                del self.owners[address]
                del self.mailbox_ids[address]

    def mailboxes_of(self, owner: MailboxOwner) -> set[str]:
        """Returns the addresses linked to this user."""
        return {address for address, o in self.owners.items() if o == owner}


async def build_view(bootstrap: str, topic: str) -> LinkedMailboxesView:
    """Reads the topic from the beginning to its current end and returns the view."""
    view = LinkedMailboxesView()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await _partitions(consumer, topic)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    view.apply(record.value or b"")
        return view
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    partitions = consumer.partitions_for_topic(topic)
    if partitions is None:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic)
    return set(partitions or ())
