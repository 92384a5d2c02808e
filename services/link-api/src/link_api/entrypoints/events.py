"""Kafka subscribers of link-api: keep each link's status in step with the result events."""

from typing import Any

from faststream.kafka import KafkaBroker

from link_api import handlers
from link_api.handlers import LinkApiDeps
from mailbox_link_shared.events import MailboxEvent, MailboxUnlinked, VerificationResult
from mailbox_link_shared.topics import Topics


def register_subscribers(
    broker: KafkaBroker, topics: Topics, deps: LinkApiDeps, options: dict[str, Any]
) -> None:
    """Subscribes link-api to the verification and registry results."""

    @broker.subscriber(topics.verifications, **options)
    async def on_verification_result(event: VerificationResult) -> None:
        await handlers.when_verification_result_update_status(event, deps)

    @broker.subscriber(topics.mailboxes, **options)
    async def on_registry_outcome(event: MailboxEvent) -> None:
        if not isinstance(event, MailboxUnlinked):
            await handlers.when_registry_outcome_update_status(event, deps)
