"""Kafka subscriber of the verifier."""

from faststream.kafka import KafkaBroker

from imap_verifier import handlers
from imap_verifier.config import SERVICE_NAME
from imap_verifier.handlers import VerifierDeps
from mailbox_link_shared.events import LinkRequested
from mailbox_link_shared.kafka import subscribe
from mailbox_link_shared.settings import ServiceSettings
from mailbox_link_shared.topics import Topics


def register_subscribers(
    broker: KafkaBroker, settings: ServiceSettings, topics: Topics, deps: VerifierDeps
) -> None:
    """Subscribes the verifier to link requests."""

    async def on_link_requested(event: LinkRequested) -> None:
        await handlers.when_link_requested_verify_mailbox(event, deps)

    subscribe(
        broker, settings, SERVICE_NAME, (topics.link_requests,), LinkRequested, on_link_requested
    )
