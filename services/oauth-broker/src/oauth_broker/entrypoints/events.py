"""Kafka subscribers of the broker: OAuth link requests, and the registry's answers."""

from faststream.kafka import KafkaBroker

from mailbox_link_shared.events import (
    LinkRejected,
    LinkRequested,
    LinkReserved,
    MailboxEvent,
    MailboxLinked,
    MailboxUnlinked,
)
from mailbox_link_shared.kafka import subscribe
from mailbox_link_shared.settings import ServiceSettings
from mailbox_link_shared.topics import Topics
from oauth_broker import handlers
from oauth_broker.config import SERVICE_NAME
from oauth_broker.handlers import BrokerDeps


def register_subscribers(
    broker: KafkaBroker, settings: ServiceSettings, topics: Topics, deps: BrokerDeps
) -> None:
    """Subscribes the broker to link requests and to the registry's decisions."""

    async def on_link_event(event: LinkRequested | MailboxEvent) -> None:
        if isinstance(event, LinkRequested):
            await handlers.when_link_requested_open_session(event, deps)
        elif isinstance(event, LinkReserved):
            await handlers.when_link_reserved_offer_sign_in(event, deps)
        elif isinstance(event, MailboxLinked):
            await handlers.when_mailbox_linked_keep_fresh(event, deps)
        elif isinstance(event, LinkRejected):
            await handlers.when_link_rejected_discard(event, deps)
        elif isinstance(event, MailboxUnlinked):
            await handlers.when_mailbox_unlinked_revoke(event, deps)

    inputs = (topics.link_requests, topics.mailboxes)
    subscribe(broker, settings, SERVICE_NAME, inputs, LinkRequested | MailboxEvent, on_link_event)
