"""Kafka subscriber of link-api: keeps each link's status in step with the result events."""

from faststream.kafka import KafkaBroker

from link_api import handlers
from link_api.config import SERVICE_NAME
from link_api.handlers import LinkApiDeps
from mailbox_link_shared.events import (
    LinkRejected,
    LinkReserved,
    MailboxEvent,
    MailboxLinked,
    MailboxVerified,
    VerificationResult,
)
from mailbox_link_shared.kafka import subscribe
from mailbox_link_shared.settings import ServiceSettings
from mailbox_link_shared.topics import Topics


def register_subscribers(
    broker: KafkaBroker, settings: ServiceSettings, topics: Topics, deps: LinkApiDeps
) -> None:
    """Subscribes link-api to the verifiers' and the registry's results."""

    async def on_result(event: VerificationResult | MailboxEvent) -> None:
        if isinstance(event, MailboxVerified):
            await handlers.when_mailbox_verified_update_status(event, deps)
        elif isinstance(event, LinkReserved | MailboxLinked | LinkRejected):
            await handlers.when_registry_answer_update_status(event, deps)

    results = (topics.verifications, topics.mailboxes)
    subscribe(broker, settings, SERVICE_NAME, results, VerificationResult | MailboxEvent, on_result)
