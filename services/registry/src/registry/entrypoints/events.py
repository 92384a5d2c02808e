"""Kafka subscribers of the registry."""

from typing import Any

from faststream.kafka import KafkaBroker

from mailbox_link_shared.events import MailboxVerified, VerificationResult
from mailbox_link_shared.topics import Topics
from registry import handlers
from registry.handlers import RegistryDeps


def register_subscribers(
    broker: KafkaBroker, topics: Topics, deps: RegistryDeps, options: dict[str, Any]
) -> None:
    """Subscribes the registry to verification results."""

    @broker.subscriber(topics.verifications, **options)
    async def on_verification_result(event: VerificationResult) -> None:
        if isinstance(event, MailboxVerified):
            await handlers.when_mailbox_verified_link_mailbox(event, deps)
