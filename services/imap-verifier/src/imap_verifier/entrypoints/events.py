"""Kafka subscriber of the verifier."""

from typing import Any

from faststream.kafka import KafkaBroker

from imap_verifier import handlers
from imap_verifier.handlers import VerifierDeps
from mailbox_link_shared.events import LinkRequested
from mailbox_link_shared.topics import Topics


def register_subscribers(
    broker: KafkaBroker, topics: Topics, deps: VerifierDeps, options: dict[str, Any]
) -> None:
    """Subscribes the verifier to link requests."""

    @broker.subscriber(topics.link_requests, **options)
    async def on_link_requested(event: LinkRequested) -> None:
        await handlers.when_link_requested_verify_mailbox(event, deps)
